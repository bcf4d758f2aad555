"""The session side of the pytest plugin, on the controller: the terminal summary and the
``--robust-save`` JSON; the ``--robust-report`` files are :mod:`.session_report`'s.

It reads the plain payloads the test reports carried (:mod:`.finish` made them where the test ran, an
xdist worker or the only process), without torch or pandas.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from robustaudit import __version__
from robustaudit.plugin.compare import COMPARISON_HEADERS, SESSION_FORMAT, SESSION_VERSION
from robustaudit.plugin.session_report import write_atomic, write_report
from robustaudit.plugin.settings import PROFILES
from robustaudit.plugin.summary import (
    SESSION_HEADERS,
    audit_name,
    compare_rows,
    compare_verdict,
    session_rows,
    tally,
)
from robustaudit.plugin.tables import attention, check_line, text_table

if TYPE_CHECKING:
    import pytest


SUMMARY_TITLE = "robustness"


class SessionState(Protocol):
    """What these functions read of the plugin's session object: ``RobustSession`` of
    :mod:`robustaudit.pytest_plugin`, which imports this module when it needs it (so this one must not
    import it back)."""

    tests: dict[str, dict[str, Any]]  # nodeid -> the payload its report carried
    profile: str
    gate: str
    checks: str | None
    baseline: dict[str, Any] | None
    compare_path: str | None
    compare_gates: list[Any]
    save_path: str | None
    report_dir: str | None


def plain(obj: Any) -> Any:
    """``obj`` as JSON data: dicts (string keys), lists, str, int, finite float, bool, None. Non-finite
    floats become None (JSON has no NaN), numpy scalars Python numbers, anything else its ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    # exact built-in types: execnet (xdist's channel) refuses subclasses such as torch's TorchVersion (a
    # str) or numpy.float64 (a float)
    if obj is None or isinstance(obj, bool):
        return None if obj is None else bool(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        try:
            return plain(item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _session_checks(session: SessionState) -> str:
    return session.checks or PROFILES[session.profile].checks


def _headline(session: SessionState) -> str:
    profile = PROFILES[session.profile]
    return (f"profile {profile.describe(session.checks)}; assert_robust gates on the "
            f"{'point estimate' if session.gate == 'point' else 'lower 95% bound'} by default (--robust-gate) "
            "and fails on a failing sanity check (--robust-checks)")


def _missing_from_run(session: SessionState) -> list[str]:
    base = (session.baseline or {}).get("tests", {})
    return [nodeid for nodeid in base if nodeid not in session.tests]


def terminal_summary(session: SessionState, tr: Any) -> None:
    """The ``robustness`` section: the session's matrix with gate verdicts, then the comparison."""
    tr.write_sep("=", SUMMARY_TITLE)
    tr.write_line(_headline(session))
    if session.tests:
        tr.write_line(text_table(SESSION_HEADERS, session_rows(session.tests), indent=""))
        _terminal_checks(session, tr)
    else:
        tr.write_line("no test ran a robustness audit")
    if session.baseline is not None:
        rows, counts = compare_rows(session.tests)
        gates = ", ".join(g.text for g in session.compare_gates) or "none (--robust-compare-fail)"
        tr.write_line("")
        tr.write_line(f"compared with {session.compare_path} (profile {session.baseline.get('profile')}); "
                      f"gates: {gates}")
        if session.baseline.get("profile") != session.profile:
            tr.write_line(f"note: the baseline ran profile {session.baseline.get('profile')}, this run "
                          f"{session.profile}: figures differ by budget as well as by model", yellow=True)
        if rows:
            tr.write_line(text_table(("test", *COMPARISON_HEADERS), rows, indent=""))
        verdict, *more = compare_verdict(counts, bool(session.compare_gates))
        tr.write_line(verdict, red=bool(counts["failed_rows"]), green=not counts["failed_rows"])
        for line in more:  # missing rows: red when they fail their tests, yellow when only reported
            tr.write_line(line, red=bool(session.compare_gates), yellow=not session.compare_gates)
        missing = _missing_from_run(session)
        if missing:
            tr.write_line(f"{len(missing)} baseline test(s) not run this time: {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else ""))
    for what, path in getattr(session, "written", {}).items():
        tr.write_line(f"{what}: {path}")


def _terminal_checks(session: SessionState, tr: Any) -> None:
    """Sanity checks: one tally line per audit, then each verdict that did not pass with its doc link.
    A failing one is red (it failed its test's gate unless allowed), a warning yellow."""
    tr.write_line("")
    tr.write_line("sanity checks (a fail fails assert_robust unless allow_failed_checks=True; see docs/checks.md):")
    for nodeid, payload in session.tests.items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            tr.write_line(f"  {audit_name(nodeid, i, len(audits))}: {tally(audit)}")
            for c in attention(audit.get("checks") or []):
                failed = c.get("status") == "fail"
                tr.write_line("    " + check_line(c), red=failed, yellow=not failed)


def session_doc(session: SessionState, exitstatus: int | None = None) -> dict[str, Any]:
    """The ``--robust-save`` document (plain JSON). ``tests`` maps each nodeid to its outcome, its audits
    (``ResultMatrix.to_dict()`` each: records, robust_ids, sanity-check verdicts ``checks``, provenance,
    plus the plugin's settings), the gates it evaluated and, with ``--robust-compare``, the comparison.
    ``checks`` at the top is the session's default level (``--robust-checks``, else the profile's)."""
    return {
        "format": SESSION_FORMAT,
        "version": SESSION_VERSION,
        "robustaudit": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "profile": session.profile,
        "gate": session.gate,
        "checks": _session_checks(session),
        "exitstatus": None if exitstatus is None else int(exitstatus),
        "compare": None if session.baseline is None else {
            "baseline": session.compare_path, "gates": [g.text for g in session.compare_gates]},
        "tests": dict(session.tests),
    }


def dumps_session(doc: Mapping[str, Any]) -> str:
    """JSON with one key per line (a committed baseline diffs well) but each list of sample ids on a
    single line (hundreds of ids would otherwise take hundreds of lines)."""
    compact: list[str] = []

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            if o and all(isinstance(i, int) and not isinstance(i, bool) for i in o):
                compact.append(json.dumps(o))
                return f"\x00{len(compact) - 1}\x00"
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(doc), indent=1, allow_nan=False)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: compact[int(m.group(1))], text) + "\n"


def write_files(session: SessionState, pytest_session: pytest.Session) -> None:
    """Write ``--robust-save`` and ``--robust-report`` (called on the controller only)."""
    doc = session_doc(session, getattr(pytest_session, "exitstatus", None))
    written: dict[str, str] = {}
    try:
        if session.save_path is not None:
            write_atomic(Path(session.save_path), dumps_session(doc))
            written["robustness figures saved"] = session.save_path
        if session.report_dir is not None:
            paths = write_report(doc, Path(session.report_dir), headline=_headline(session))
            written["robustness report"] = str(paths["markdown"])
    except OSError as exc:
        warnings.warn(f"robustaudit: cannot write the session files: {exc}", stacklevel=1)
    session.written = written  # type: ignore[attr-defined]
