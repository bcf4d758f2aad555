"""The session side of the pytest plugin: finishing a test's report, the terminal summary, the
``--robust-save`` JSON and the ``--robust-report`` Markdown / HTML.

``finish_report`` runs where the test ran (an xdist worker or the only process); everything else runs
on the controller and reads the plain payloads the reports carried, without torch.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustaudit.plugin.compare import (
    COMPARISON_HEADERS,
    SESSION_FORMAT,
    SESSION_VERSION,
    compare_test,
    comparison_rows,
    regression_message,
)
from robustaudit.plugin.settings import PROFILES
from robustaudit.plugin.tables import (
    MATRIX_HEADERS,
    attention,
    check_line,
    checks_tally,
    matrix_rows,
    pct,
    row_key,
    text_table,
    useful_records,
)

if TYPE_CHECKING:
    import pytest

    from robustaudit.plugin.fixture import ItemRecord
    from robustaudit.pytest_plugin import RobustSession

SUMMARY_TITLE = "robustness"
_PASS, _FAIL = "pass", "FAIL"


# --------------------------------------------------------------------------- on the test's process
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


def finish_report(session: RobustSession, record: ItemRecord, report: pytest.TestReport) -> None:
    """Attach the test's figures to its call report, enforce a marker's ``min_accuracy`` (and with it the
    failing-check gate) that the test never checked, and apply the ``--robust-compare-fail`` gates.

    A gate or compare failure turns a passed report into a failed one with the message as its
    ``longrepr``; on an already failed report it is added as a report section.
    """
    from robustaudit.core.errors import UserError
    from robustaudit.plugin.fixture import (
        evaluate_gate,
        gate_checks_failed,
        gate_message,
    )

    failures: list[tuple[str, str]] = []
    marker_min = record.marker.get("min_accuracy")
    if marker_min is not None and not record.gates and report.outcome != "skipped":
        # the marker asked for a threshold and the test never called assert_robust(): enforce it here,
        # so a min_accuracy on a marker can never be silently ignored. The gate is the whole of
        # assert_robust(): a failing sanity check (unless the marker allows it) fails the test too, or a
        # forgotten call would let a figure through that the checks call too high
        for i, result in enumerate(record.audits):
            try:
                gate = evaluate_gate(result, marker_min)
            except UserError as exc:
                failures.append(("robustaudit gate", f"min_accuracy of @pytest.mark.robustness: {exc}"))
                continue
            record.gates.append({"audit": i, "implicit": True, **gate})
            if not gate["passed"]:
                what = "min_accuracy" + (" and sanity checks" if gate_checks_failed(gate) else "")
                failures.append(("robustaudit gate", f"{what} of @pytest.mark.robustness, checked after the "
                                 "test (it did not call assert_robust):\n" + gate_message(result, gate)))
    payload = record.payload()
    if session.baseline is not None:
        result = compare_test(session.baseline.get("tests", {}).get(report.nodeid), payload["audits"],
                              session.compare_gates)
        payload["compare"] = result
        if result["failed"]:
            failures.append(("robustaudit compare",
                             regression_message(result, session.compare_path or "", session.compare_gates)))
    # plain data only: it crosses the xdist channel and lands in JSON files
    report.robustaudit = plain(payload)  # type: ignore[attr-defined]
    if not failures or hasattr(report, "wasxfail"):
        return
    if report.passed:
        report.outcome = "failed"
        report.longrepr = "\n\n".join(text for _, text in failures)
    elif report.failed:
        for title, text in failures:
            report.sections.append((title, text))


# --------------------------------------------------------------------------- on the controller
def _gate_cell(payload: Mapping[str, Any], audit: int, key: tuple[str, str, float]) -> str:
    """The verdict of the last gate of ``audit`` that covered row ``key``: ``'min 60.0% point: pass'``,
    with ``'; checks: FAIL'`` when a failing sanity check of the row's model failed that gate (``'; checks:
    allowed'`` when ``allow_failed_checks`` let it pass)."""
    for gate in reversed(payload.get("gates", [])):
        if gate.get("audit") != audit:
            continue
        keys = {row_key({"model": k[0], "attack": k[1], "eps": k[2]}) for k in gate.get("checked", [])}
        if key in keys:
            failing = {row_key({"model": k[0], "attack": k[1], "eps": k[2]}) for k in gate.get("failing", [])}
            verdict = _FAIL if key in failing else _PASS
            cell = f"min {pct(gate['min_accuracy'])} {gate['bound']}: {verdict}"
            if any(c.get("model") in (None, key[0]) for c in gate.get("failed_checks", [])):
                cell += "; checks: allowed" if gate.get("allow_failed_checks") else f"; checks: {_FAIL}"
            return cell
    return "-"


def session_rows(tests: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per shown record of every audit: test, the matrix columns, the gate verdict."""
    rows = []
    for nodeid, payload in tests.items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            test = _audit_name(nodeid, i, len(audits))
            records = useful_records(audit.get("records", []))
            for rec, cells in zip(records, matrix_rows(records)):
                rows.append([test, *cells, _gate_cell(payload, i, row_key(rec))])
    return rows


SESSION_HEADERS: tuple[str, ...] = ("test", *MATRIX_HEADERS, "gate")
CHECK_HEADERS: tuple[str, ...] = ("test", "status", "check", "model", "message", "doc")


def _audit_name(nodeid: str, index: int, count: int) -> str:
    return nodeid if count == 1 else f"{nodeid} [audit {index + 1}]"


def _audit_level(audit: Mapping[str, Any]) -> str:
    """The sanity-check level an audit ran: the plugin's setting, else the engine's provenance."""
    level = (audit.get("settings") or {}).get("checks")
    if level is None:
        level = ((audit.get("provenance") or {}).get("checks") or {}).get("level")
    return str(level) if level is not None else "-"


def _tally(audit: Mapping[str, Any]) -> str:
    """``'checks basic: 11 pass, 1 warn, 0 fail'`` (``'checks off: none run'``)."""
    checks = audit.get("checks") or []
    return f"checks {_audit_level(audit)}: " + (checks_tally(checks) if checks else "none run")


def checks_summary(tests: Mapping[str, Mapping[str, Any]]) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Per audit ``(name, tally)`` (:func:`_tally`), and one row per verdict that did not pass
    (``CHECK_HEADERS``), failures first."""
    tallies: list[tuple[str, str]] = []
    rows: list[list[str]] = []
    for nodeid, payload in tests.items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            name = _audit_name(nodeid, i, len(audits))
            tallies.append((name, _tally(audit)))
            for c in attention(audit.get("checks") or []):
                model = c.get("model")
                rows.append([name, str(c.get("status")), str(c.get("id")), "-" if model is None else str(model),
                             str(c.get("message")), str(c.get("doc") or "-")])
    return tallies, rows


def _session_checks(session: RobustSession) -> str:
    return session.checks or PROFILES[session.profile].checks


def _headline(session: RobustSession) -> str:
    profile = PROFILES[session.profile]
    return (f"profile {profile.describe(session.checks)}; assert_robust gates on the "
            f"{'point estimate' if session.gate == 'point' else 'lower 95% bound'} by default (--robust-gate) "
            "and fails on a failing sanity check (--robust-checks)")


def _compare_rows(tests: Mapping[str, Mapping[str, Any]]) -> tuple[list[list[str]], dict[str, int]]:
    rows: list[list[str]] = []
    counts = {"tests": 0, "new": 0, "rows": 0, "failed_rows": 0, "failed_tests": 0}
    for nodeid, payload in tests.items():
        result = payload.get("compare")
        if not result:
            continue
        counts["tests"] += 1
        if result["status"] == "new":
            counts["new"] += 1
            rows.append([nodeid, *(["-"] * (len(COMPARISON_HEADERS) - 1)), "new (not in baseline)"])
            continue
        compared = [r for r in result["rows"]]
        counts["rows"] += len(compared)
        counts["failed_rows"] += sum(1 for r in compared if r["failed"])
        counts["failed_tests"] += bool(result["failed"])
        rows.extend([nodeid, *cells] for cells in comparison_rows(compared))
    return rows, counts


def _missing_from_run(session: RobustSession) -> list[str]:
    base = (session.baseline or {}).get("tests", {})
    return [nodeid for nodeid in base if nodeid not in session.tests]


def terminal_summary(session: RobustSession, tr: Any) -> None:
    """The ``robustness`` section: the session's matrix with gate verdicts, then the comparison."""
    tr.write_sep("=", SUMMARY_TITLE)
    tr.write_line(_headline(session))
    if session.tests:
        tr.write_line(text_table(SESSION_HEADERS, session_rows(session.tests), indent=""))
        _terminal_checks(session, tr)
    else:
        tr.write_line("no test ran a robustness audit")
    if session.baseline is not None:
        rows, counts = _compare_rows(session.tests)
        gates = ", ".join(g.text for g in session.compare_gates) or "none (--robust-compare-fail)"
        tr.write_line("")
        tr.write_line(f"compared with {session.compare_path} (profile {session.baseline.get('profile')}); "
                      f"gates: {gates}")
        if session.baseline.get("profile") != session.profile:
            tr.write_line(f"note: the baseline ran profile {session.baseline.get('profile')}, this run "
                          f"{session.profile}: figures differ by budget as well as by model", yellow=True)
        if rows:
            tr.write_line(text_table(("test", *COMPARISON_HEADERS), rows, indent=""))
        verdict = (f"{counts['failed_rows']} of {counts['rows']} rows regressed beyond the gates in "
                   f"{counts['failed_tests']} test(s)")
        tr.write_line(verdict, red=bool(counts["failed_rows"]), green=not counts["failed_rows"])
        missing = _missing_from_run(session)
        if missing:
            tr.write_line(f"{len(missing)} baseline test(s) not run this time: {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else ""))
    for what, path in getattr(session, "written", {}).items():
        tr.write_line(f"{what}: {path}")


def _terminal_checks(session: RobustSession, tr: Any) -> None:
    """Sanity checks: one tally line per audit, then each verdict that did not pass with its doc link.
    A failing one is red (it failed its test's gate unless allowed), a warning yellow."""
    tr.write_line("")
    tr.write_line("sanity checks (a fail fails assert_robust unless allow_failed_checks=True; see docs/checks.md):")
    for nodeid, payload in session.tests.items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            tr.write_line(f"  {_audit_name(nodeid, i, len(audits))}: {_tally(audit)}")
            for c in attention(audit.get("checks") or []):
                failed = c.get("status") == "fail"
                tr.write_line("    " + check_line(c), red=failed, yellow=not failed)


def session_doc(session: RobustSession, exitstatus: int | None = None) -> dict[str, Any]:
    """The ``--robust-save`` document (plain JSON). ``tests`` maps each nodeid to its outcome, its audits
    (``ResultMatrix.to_dict()`` each: records, robust_ids, sanity-check verdicts ``checks``, provenance,
    plus the plugin's settings), the gates it evaluated and, with ``--robust-compare``, the comparison.
    ``checks`` at the top is the session's default level (``--robust-checks``, else the profile's)."""
    from robustaudit import __version__

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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def write_files(session: RobustSession, pytest_session: pytest.Session) -> None:
    """Write ``--robust-save`` and ``--robust-report`` (called on the controller only)."""
    doc = session_doc(session, getattr(pytest_session, "exitstatus", None))
    written: dict[str, str] = {}
    try:
        if session.save_path is not None:
            _write_atomic(Path(session.save_path), dumps_session(doc))
            written["robustness figures saved"] = session.save_path
        if session.report_dir is not None:
            paths = write_report(doc, Path(session.report_dir), headline=_headline(session))
            written["robustness report"] = str(paths["markdown"])
    except OSError as exc:
        import warnings

        warnings.warn(f"robustaudit: cannot write the session files: {exc}", stacklevel=1)
    session.written = written  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Markdown / HTML
def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:120] or "test"


def _md(text: Any) -> str:
    """Text safe in a GFM table cell: what formats, tags, links or splits cells is escaped."""
    escaped = re.sub(r"([\\`*|<>&])", r"\\\1", str(text)).replace("](", "]\\(")
    return escaped.replace("\r", " ").replace("\n", " ")


def _md_code(text: Any) -> str:
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, code_first: bool = False) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        cells = [_md_code(c) if i == 0 and code_first else _md(c) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(cell: str) -> str:
    css = ("fail" if _FAIL in cell or cell in ("failed", "fail")
           else "warn" if cell == "warn"
           else "pass" if cell.endswith(_PASS) or cell in ("ok", "passed") else "")
    return f'<td class="{css}">{html.escape(cell)}</td>' if css else f"<td>{html.escape(cell)}</td>"


def _outcome_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    return [[nodeid, str(p.get("outcome", "-")), str(len(p.get("audits", [])))] for nodeid, p in doc["tests"].items()]


def render_session_markdown(doc: Mapping[str, Any], *, headline: str = "", links: Mapping[str, str] | None = None) -> str:
    """The session report in GitHub-flavoured Markdown (fits ``$GITHUB_STEP_SUMMARY``)."""
    tests = doc["tests"]
    failed = sum(1 for p in tests.values() if p.get("outcome") == "failed")
    parts = ["# Robustness tests",
             f"{len(tests)} test(s) ran robustness audits, {failed} failed. {_md(headline)}"]
    if failed:
        parts.append("Failed: " + ", ".join(_md_code(n) for n, p in tests.items() if p.get("outcome") == "failed"))
    if tests:
        parts.append("## Results\n\nRobust accuracy in % with its 95% Wilson interval; gate: the threshold, "
                     "what was gated (point estimate or lower bound) and the verdict.\n\n"
                     + _md_table(SESSION_HEADERS, session_rows(tests), code_first=True))
    if tests:
        tallies, rows = checks_summary(tests)
        text = ("## Sanity checks\n\nA `fail` means the figure is probably too high and fails the test's "
                "gate (unless `allow_failed_checks=True`); a `warn` asks to read it with care. See "
                "robustaudit's `docs/checks.md`.\n\n" + "\n".join(f"- {_md_code(n)}: {_md(t)}" for n, t in tallies))
        if rows:
            text += "\n\n" + _md_table(CHECK_HEADERS, rows, code_first=True)
        parts.append(text)
    if doc.get("compare"):
        rows, counts = _compare_rows(tests)
        gates = ", ".join(doc["compare"]["gates"]) or "none"
        parts.append(f"## Compared with the baseline\n\nbaseline `{Path(doc['compare']['baseline']).name}`; "
                     f"gates: {_md(gates)}. {counts['failed_rows']} of {counts['rows']} rows regressed beyond "
                     "the gates. lost/gained: samples robust in the baseline and broken now / the reverse; "
                     "p: one-sided exact binomial test of lost vs gained.\n\n"
                     + _md_table(("test", *COMPARISON_HEADERS), rows, code_first=True))
    if links:
        parts.append("## Full reports\n\n" + "\n".join(f"- [{_md_code(k)}]({v})" for k, v in links.items()))
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2rem auto;padding:0 1rem;color:#1f2328}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}th,td{border:1px solid #d1d9e0;padding:.3rem .6rem;
text-align:left}th{background:#f6f8fa}td.fail{color:#d1242f;font-weight:600}td.pass{color:#1a7f37}
td.warn{color:#9a6700;font-weight:600}
.note{color:#59636e}"""


def render_session_html(doc: Mapping[str, Any], *, headline: str = "", links: Mapping[str, str] | None = None) -> str:
    """The session report as one self-contained HTML page."""
    tests = doc["tests"]
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Robustness tests</title>",
             f"<style>{_CSS}</style></head><body><h1>Robustness tests</h1>",
             f'<p class="note">{html.escape(headline)}</p>',
             "<h2>Tests</h2>", _html_table(("test", "outcome", "audits"), _outcome_rows(doc))]
    if tests:
        parts += ["<h2>Results</h2>",
                  '<p class="note">Robust accuracy in % with its 95% Wilson interval.</p>',
                  _html_table(SESSION_HEADERS, session_rows(tests))]
        tallies, rows = checks_summary(tests)
        parts += ["<h2>Sanity checks</h2>",
                  ('<p class="note">A fail means the figure is probably too high and fails the test\'s gate '
                   "(unless allow_failed_checks=True); a warn asks to read it with care. See robustaudit's "
                   "docs/checks.md.</p>"),
                  "<ul>" + "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(t)}</li>" for n, t in tallies)
                  + "</ul>"]
        if rows:
            parts.append(_html_table(CHECK_HEADERS, rows))
    if doc.get("compare"):
        rows, _ = _compare_rows(tests)
        parts += ["<h2>Compared with the baseline</h2>",
                  (f'<p class="note">baseline {html.escape(str(doc["compare"]["baseline"]))}; gates: '
                   f'{html.escape(", ".join(doc["compare"]["gates"]) or "none")}</p>'),
                  _html_table(("test", *COMPARISON_HEADERS), rows)]
    if links:
        items = "".join(f'<li><a href="{html.escape(v)}">{html.escape(k)}</a></li>' for k, v in links.items())
        parts += ["<h2>Full reports</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(doc: Mapping[str, Any], out: Path, *, headline: str = "") -> dict[str, Path]:
    """``out/report.md`` and ``out/report.html`` for the session, and the full single-audit reports of
    every test under ``out/audits/<test>/`` (rendered by :mod:`robustaudit.reports`)."""
    import shutil

    from robustaudit.evaluate.result import ResultMatrix
    from robustaudit.reports import write_reports

    if (out / "audits").is_dir():  # ours: rewritten each run, so no stale report of a removed test stays
        shutil.rmtree(out / "audits")
    links_md: dict[str, str] = {}
    links_html: dict[str, str] = {}
    for nodeid, payload in doc["tests"].items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            name = nodeid if len(audits) == 1 else f"{nodeid} [audit {i + 1}]"
            folder = Path("audits") / (_slug(nodeid) + ("" if len(audits) == 1 else f"-{i + 1}"))
            write_reports(ResultMatrix.from_dict(audit), out / folder)
            links_md[name] = (folder / "report.md").as_posix()
            links_html[name] = (folder / "report.html").as_posix()
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    _write_atomic(paths["markdown"], render_session_markdown(doc, headline=headline, links=links_md))
    _write_atomic(paths["html"], render_session_html(doc, headline=headline, links=links_html))
    return paths
