"""The heavy parts of the pytest plugin (``robustaudit.pytest_plugin`` stays light and imports these
when they are needed): settings and marker validation (:mod:`.settings`), the ``robustness`` fixture
(:mod:`.fixture`) and its gates (:mod:`.gates`), baseline comparison (:mod:`.compare`), finishing a
test's report (:mod:`.finish`), the session's tables (:mod:`.summary`), the summary and ``--robust-save``
file (:mod:`.session`) and the ``--robust-report`` files (:mod:`.session_report`). Importing this
package imports nothing.
"""
