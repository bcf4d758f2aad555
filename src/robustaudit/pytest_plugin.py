"""pytest plugin (``pytest11`` entry point ``robustaudit``): robustness gates as ordinary tests.

Example::

    @pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.6)
    def test_classifier_is_robust(robustness, my_model, my_data):
        robustness.audit(my_model, my_data).assert_robust()

This module is loaded by every pytest run in an environment where robustaudit is installed, so it
stays light: the standard library and pytest only. Torch, pandas and the engine are imported by the
``robustness`` fixture when a test uses it (``robustaudit.plugin.fixture``), the summary and files by
``robustaudit.plugin.session`` when there is something to show. A test checks this with
``python -X importtime``.

State lives in ``config.stash`` and ``item.stash``; per-test figures travel on the test report
(``report.robustaudit``, plain JSON-able data, and ``user_properties`` for JUnit XML), so the summary
and the files work under pytest-xdist, where only the controller writes files. Usage:
``docs/pytest-plugin.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from robustaudit.evaluate.options import CHECK_LEVELS  # torch-free: the one definition of the levels

if TYPE_CHECKING:
    from robustaudit.plugin.fixture import ItemRecord, Robustness
    from robustaudit.plugin.settings import SessionOptions

PROFILE_NAMES = ("smoke", "ci", "full")  # robustaudit.plugin.settings.PROFILES, checked by a test
GATE_NAMES = ("point", "lower")
MARKER = "robustness"
MARKER_HELP = (
    "robustness(attack=..., eps=..., min_accuracy=..., bound=..., norm=..., n=..., steps=..., restarts=..., "
    "seed=..., device=..., batch_size=..., checks=..., allow_failed_checks=..., class_map=...): defaults of the robustness "
    "fixture's audit() and assert_robust()"
)

#: (option, ini key, metavar / choices, help). Options override the ini keys of [tool.pytest.ini_options].
_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--robust-profile", "robust_profile", PROFILE_NAMES,
     ("cost of every audit: smoke (n=64, pgd steps=10, 1 restart, no sanity checks), ci (n=256, steps=50, "
      "1 restart, basic checks; the default), full (all samples, steps=100, 5 restarts, full checks). Steps "
      "and restarts apply to attacks given by bare name.")),
    ("--robust-checks", "robust_checks", CHECK_LEVELS,
     ("sanity checks after every audit: off, basic or full (default: the profile's). A failing check "
      "fails assert_robust() unless allow_failed_checks=True; see docs/checks.md. A marker's checks= wins.")),
    ("--robust-device", "robust_device", "DEVICE",
     ("device of the audits: auto (the default: CUDA when available), cpu, cuda, cuda:N. A marker's "
      "device= wins.")),
    ("--robust-gate", "robust_gate", GATE_NAMES,
     ("what assert_robust() compares with min_accuracy: point (the default: the measured robust "
      "accuracy) or lower (its lower 95%% Wilson bound, the statistically honest gate).")),
    ("--robust-save", "robust_save", "PATH",
     "write the session's figures (per test: records and robust sample ids) to this JSON file."),
    ("--robust-compare", "robust_compare", "PATH",
     "compare this run with a file written by --robust-save and show the changes in the summary."),
    ("--robust-compare-fail", "robust_compare_fail", "EXPR",
     ("fail a test whose figures dropped against --robust-compare: robust_accuracy:0.02 (absolute), "
      "robust_accuracy:5%% (relative) or robust_accuracy:significant (paired exact test, p < 0.05). "
      "Repeatable.")),
    ("--robust-report", "robust_report", "DIR",
     "write report.md (fits a CI job summary) and report.html for the session into DIR."),
)

RECORD_KEY: pytest.StashKey[ItemRecord] = pytest.StashKey()
SESSION_KEY: pytest.StashKey[RobustSession] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("robustaudit", "robustness audits (robustaudit)")
    for option, ini, meta, help_text in _OPTIONS:
        kwargs: dict[str, Any] = {"dest": ini, "default": None, "help": help_text}
        if isinstance(meta, tuple):
            kwargs["choices"] = meta
        else:
            kwargs["metavar"] = meta
        if option == "--robust-compare-fail":
            kwargs["action"] = "append"
        group.addoption(option, **kwargs)
        ini_help = help_text.replace("%%", "%")
        if option == "--robust-compare-fail":
            parser.addini(ini, f"default of {option} (one expression a line): {ini_help}", type="linelist")
        else:
            parser.addini(ini, f"default of {option}: {ini_help}", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    session = RobustSession(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "robustaudit-session")


@pytest.fixture
def robustness(request: pytest.FixtureRequest) -> Robustness:
    """Audit models from a test and gate their robust accuracy (see ``docs/pytest-plugin.md``).

    ``robustness.audit(model, data, attacks=..., eps=..., n=..., checks=...)`` returns the ResultMatrix
    with an ``assert_robust(min_accuracy=..., bound=..., allow_failed_checks=...)`` method, which also fails
    on a failing sanity check; defaults come from the ``@pytest.mark.robustness(...)`` marker, then the
    ``--robust-*`` options and their ini keys.
    """
    from robustaudit.plugin.fixture import ItemRecord, Robustness

    session: RobustSession = request.config.stash[SESSION_KEY]
    item = request.node
    record = item.stash.get(RECORD_KEY, None)
    if record is None:
        record = item.stash[RECORD_KEY] = ItemRecord(marker=session.marker_of(item))

    def add_property(name: str, value: object) -> None:  # what record_property does
        item.user_properties.append((name, value))

    return Robustness(session.options, record, add_property)


def _path_option(config: pytest.Config, name: str) -> str | None:
    """An option's path made absolute: relative to the invocation directory when given on the command
    line, to the ini file's directory when it comes from the ini."""
    value = getattr(config.option, name, None)
    base = config.invocation_params.dir
    if value is None:
        value = config.getini(name) or None
        base = config.inipath.parent if config.inipath is not None else config.rootpath
    if value is None:
        return None
    return str(Path(base, os.path.expanduser(str(value))).resolve())


class RobustSession:
    """The session half of the plugin: options, marker checks, report payloads, summary and files."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self.tests: dict[str, dict[str, Any]] = {}  # nodeid -> payload (controller / single process)
        profile = config.option.robust_profile or config.getini("robust_profile") or "ci"
        gate = config.option.robust_gate or config.getini("robust_gate") or "point"
        # None: each audit runs its profile's level; argparse checked the option, the ini is checked here
        checks = config.option.robust_checks or config.getini("robust_checks") or None
        if profile not in PROFILE_NAMES:
            raise pytest.UsageError(f"robust_profile: unknown profile {profile!r}; known: {', '.join(PROFILE_NAMES)}")
        if gate not in GATE_NAMES:
            raise pytest.UsageError(f"robust_gate must be 'point' or 'lower', got {gate!r}")
        if checks is not None and checks not in CHECK_LEVELS:
            raise pytest.UsageError(f"robust_checks must be one of {', '.join(CHECK_LEVELS)}, got {checks!r}")
        self.profile = profile
        self.gate = gate
        self.checks: str | None = checks
        self.device = config.option.robust_device or config.getini("robust_device") or None
        self.save_path = _path_option(config, "robust_save")
        self.report_dir = _path_option(config, "robust_report")
        self.compare_path = _path_option(config, "robust_compare")
        if self.is_worker and "robustaudit_compare" in config.workerinput:  # type: ignore[attr-defined]
            self.compare_path = config.workerinput["robustaudit_compare"]  # the controller's reading
        self.compare_exprs = list(config.option.robust_compare_fail or config.getini("robust_compare_fail") or [])
        self.compare_gates: list[Any] = []
        self.baseline: dict[str, Any] | None = None
        if self.compare_path is not None or self.compare_exprs:
            # gates are checked even without a baseline (a typo in the ini shows up on every run), but
            # only used with one
            from robustaudit.core.errors import UserError
            from robustaudit.plugin.compare import load_session, parse_gate

            try:
                self.compare_gates = [parse_gate(e) for e in self.compare_exprs]
                if self.compare_path is not None:
                    self.baseline = load_session(self.compare_path)
            except UserError as exc:
                raise pytest.UsageError(str(exc)) from None
        self._options: SessionOptions | None = None

    @property
    def options(self) -> SessionOptions:
        if self._options is None:
            from robustaudit.plugin.settings import SessionOptions

            self._options = SessionOptions(profile=self.profile, device=self.device, gate=self.gate,
                                           checks=self.checks)
        return self._options

    def marker_of(self, item: pytest.Item) -> dict[str, Any]:
        """The item's robustness markers, validated and merged (closest wins); a UserError if invalid."""
        from robustaudit.plugin.settings import merge_markers

        marks = list(item.iter_markers(MARKER))[::-1]  # farthest (module) first, closest last
        return merge_markers([(m.args, m.kwargs) for m in marks], where=f"@pytest.mark.{MARKER}")

    # ------------------------------------------------------------------ hooks
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist (controller): hand each worker the baseline path as the controller resolved it."""
        node.workerinput["robustaudit_compare"] = self.compare_path

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.get_closest_marker(MARKER) is None:
            return
        from robustaudit.core.errors import UserError

        try:
            self.marker_of(item)
            return
        except UserError as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside the except: no "during handling" chain

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.when == "call":
            record = item.stash.get(RECORD_KEY, None)
            if record is not None and record.audits:
                from robustaudit.plugin.finish import finish_report

                finish_report(self, record, report)
            elif self._in_baseline(report):
                # it ran but audited nothing: its baseline rows must not vanish unnoticed (a deselected
                # or skipped test did not run and is only counted in the summary)
                from robustaudit.plugin.finish import finish_unaudited

                finish_unaudited(self, report)
        return report

    def _in_baseline(self, report: pytest.TestReport) -> bool:
        return (self.baseline is not None and not report.skipped
                and bool(self.baseline.get("tests", {}).get(report.nodeid, {}).get("audits")))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or report.when != "call":
            return
        payload = getattr(report, "robustaudit", None)
        if isinstance(payload, dict):
            self.tests[report.nodeid] = {"outcome": report.outcome, **payload}

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or self.config.option.collectonly:
            return
        if self.save_path is None and self.report_dir is None:
            return
        from robustaudit.plugin.session import write_files

        write_files(self, session)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not (self.tests or self.baseline is not None):
            return
        from robustaudit.plugin.session import terminal_summary

        terminal_summary(self, terminalreporter)
