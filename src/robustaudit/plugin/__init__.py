"""The heavy parts of the pytest plugin (``robustaudit.pytest_plugin`` stays light and imports these
when they are needed): settings and marker validation (:mod:`.settings`), the ``robustness`` fixture and
its gates (:mod:`.fixture`), baseline comparison (:mod:`.compare`), the summary and session files
(:mod:`.session`). Importing this package imports nothing.
"""
