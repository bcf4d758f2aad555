"""``python -m robustaudit ...``: the same command as ``robustaudit ...``."""

from robustaudit.cli import entrypoint

if __name__ == "__main__":  # pragma: no cover
    entrypoint()
