"""The session's tables, built from the plain payloads the test reports carried (no torch): the matrix
with each row's gate verdict, the sanity-check tallies, the comparison with a baseline. The terminal
summary (:mod:`.session`) and the session report (:mod:`.session_report`) only lay them out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustaudit.plugin.compare import COMPARISON_HEADERS, MISSING, comparison_rows
from robustaudit.plugin.tables import MATRIX_HEADERS, attention, checks_tally, matrix_rows, pct, row_key, useful_records

__all__ = ["CHECK_HEADERS", "FAIL", "PASS", "SESSION_HEADERS", "audit_name", "checks_summary", "compare_rows",
           "compare_verdict", "session_rows", "tally"]

PASS, FAIL = "pass", "FAIL"


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
            verdict = FAIL if key in failing else PASS
            cell = f"min {pct(gate['min_accuracy'])} {gate['bound']}: {verdict}"
            if any(c.get("model") in (None, key[0]) for c in gate.get("failed_checks", [])):
                cell += "; checks: allowed" if gate.get("allow_failed_checks") else f"; checks: {FAIL}"
            return cell
    return "-"


def session_rows(tests: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per shown record of every audit: test, the matrix columns, the gate verdict."""
    rows = []
    for nodeid, payload in tests.items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            test = audit_name(nodeid, i, len(audits))
            records = useful_records(audit.get("records", []))
            for rec, cells in zip(records, matrix_rows(records)):
                rows.append([test, *cells, _gate_cell(payload, i, row_key(rec))])
    return rows


SESSION_HEADERS: tuple[str, ...] = ("test", *MATRIX_HEADERS, "gate")
CHECK_HEADERS: tuple[str, ...] = ("test", "status", "check", "model", "message", "doc")


def audit_name(nodeid: str, index: int, count: int) -> str:
    return nodeid if count == 1 else f"{nodeid} [audit {index + 1}]"


def _audit_level(audit: Mapping[str, Any]) -> str:
    """The sanity-check level an audit ran: the plugin's setting, else the engine's provenance."""
    level = (audit.get("settings") or {}).get("checks")
    if level is None:
        level = ((audit.get("provenance") or {}).get("checks") or {}).get("level")
    return str(level) if level is not None else "-"


def tally(audit: Mapping[str, Any]) -> str:
    """``'checks basic: 11 pass, 1 warn, 0 fail'`` (``'checks off: none run'``)."""
    checks = audit.get("checks") or []
    return f"checks {_audit_level(audit)}: " + (checks_tally(checks) if checks else "none run")


def checks_summary(tests: Mapping[str, Mapping[str, Any]]) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Per audit ``(name, tally)`` (:func:`tally`), and one row per verdict that did not pass
    (``CHECK_HEADERS``), failures first."""
    tallies: list[tuple[str, str]] = []
    rows: list[list[str]] = []
    for nodeid, payload in tests.items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            name = audit_name(nodeid, i, len(audits))
            tallies.append((name, tally(audit)))
            for c in attention(audit.get("checks") or []):
                model = c.get("model")
                rows.append([name, str(c.get("status")), str(c.get("id")), "-" if model is None else str(model),
                             str(c.get("message")), str(c.get("doc") or "-")])
    return tallies, rows


def compare_rows(tests: Mapping[str, Mapping[str, Any]]) -> tuple[list[list[str]], dict[str, int]]:
    """One row per comparison row of every compared test (``("test", *COMPARISON_HEADERS)``) and the
    counts :func:`compare_verdict` reads: tests, new tests, rows of this run, rows that regressed beyond a
    gate, tests with such rows, baseline rows missing from a test that ran, tests with missing rows."""
    rows: list[list[str]] = []
    counts = dict.fromkeys(("tests", "new", "rows", "failed_rows", "failed_tests", "missing", "missing_tests"), 0)
    for nodeid, payload in tests.items():
        result = payload.get("compare")
        if not result:
            continue
        counts["tests"] += 1
        if result["status"] == "new":
            counts["new"] += 1
            rows.append([nodeid, *(["-"] * (len(COMPARISON_HEADERS) - 1)), "new (not in baseline)"])
            continue
        present = [r for r in result["rows"] if r.get("status") != MISSING]
        missing = len(result["rows"]) - len(present)
        counts["rows"] += len(present)
        counts["failed_rows"] += sum(1 for r in present if r["failed"])
        counts["failed_tests"] += any(r["failed"] for r in present)
        counts["missing"] += missing
        counts["missing_tests"] += bool(missing)
        rows.extend([nodeid, *cells] for cells in comparison_rows(result["rows"]))
    return rows, counts


def compare_verdict(counts: Mapping[str, int], gated: bool) -> list[str]:
    """The comparison's verdict lines: rows that regressed, then (when there are any) the missing baseline
    rows, whether they failed their tests, and how to fix a renamed model."""
    lines = [f"{counts['failed_rows']} of {counts['rows']} rows regressed beyond the gates in "
             f"{counts['failed_tests']} test(s)"]
    if counts.get("missing"):
        outcome = ("failing them (a --robust-compare-fail gate is given)" if gated
                   else "reported only: no --robust-compare-fail gate")
        lines += [f"{counts['missing']} baseline row(s) missing from {counts['missing_tests']} test(s) that ran, "
                  f"{outcome}", MISSING_HINT]
    return lines


#: Why a row goes missing and the fix, under the verdict (each failing test's message names its models).
MISSING_HINT = ("missing: a baseline (model, attack, eps) row that its test, which ran, no longer produced; a "
                "module is named after its class, so wrapping a model (nn.Sequential, a normalization layer) "
                "renames it: name it explicitly, robustness.audit({'Net': model}, data), or re-save the baseline "
                "(--robust-save) to accept the change")
