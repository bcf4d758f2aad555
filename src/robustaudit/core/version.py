"""The package version, at the bottom of the layers so provenance and fingerprints can read it without
importing the package's entry point (which would close an import cycle through ``robustaudit``)."""

__version__ = "0.1.0"
