"""Finishing a test's report where the test ran (an xdist worker or the only process): its figures as
plain data, the marker's implicit gate, and the ``--robust-compare-fail`` gates.

:func:`finish_report` runs for a test that used the ``robustness`` fixture, which has already imported the
engine (pandas, torch); :func:`finish_unaudited` for a baseline test that ran without an audit, which need
not have: so the gates (pandas) are imported only where a marker's gate is enforced, and the controller's
summary (:mod:`.session`) stays free of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from robustaudit.core.errors import UserError
from robustaudit.plugin.compare import compare_test, regression_message
from robustaudit.plugin.session import SessionState, plain

if TYPE_CHECKING:
    import pytest

    from robustaudit.plugin.fixture import ItemRecord

__all__ = ["finish_report", "finish_unaudited"]


def finish_report(session: SessionState, record: ItemRecord, report: pytest.TestReport) -> None:
    """Attach the test's figures to its call report, enforce a marker's ``min_accuracy`` (and with it the
    failing-check gate) that the test never checked, and apply the ``--robust-compare-fail`` gates.

    A gate or compare failure turns a passed report into a failed one with the message as its
    ``longrepr``; on an already failed report it is added as a report section.
    """
    failures = _marker_gate(record, report)
    payload = record.payload()
    failures += _compare(session, payload, report)
    _attach(report, payload, failures)


def finish_unaudited(session: SessionState, report: pytest.TestReport) -> None:
    """The call report of a test that ran without an audit although the baseline has its audits: every
    baseline row is missing (reported, and a failure under a ``--robust-compare-fail`` gate)."""
    payload: dict[str, Any] = {"audits": [], "gates": []}
    _attach(report, payload, _compare(session, payload, report))


def _marker_gate(record: ItemRecord, report: pytest.TestReport) -> list[tuple[str, str]]:
    """The failures of a marker's ``min_accuracy`` that the test never checked with assert_robust()."""
    marker_min = record.marker.get("min_accuracy")
    if marker_min is None or record.gates or report.outcome == "skipped":
        return []
    from robustaudit.plugin.gates import evaluate_gate, gate_checks_failed, gate_message  # pandas: only now

    failures: list[tuple[str, str]] = []
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
    return failures


def _compare(session: SessionState, payload: dict[str, Any], report: pytest.TestReport) -> list[tuple[str, str]]:
    """Compare the payload's audits with the baseline (the result goes into ``payload["compare"]``)."""
    if session.baseline is None:
        return []
    result = compare_test(session.baseline.get("tests", {}).get(report.nodeid), payload["audits"],
                          session.compare_gates)
    payload["compare"] = result
    if not result["failed"]:
        return []
    return [("robustaudit compare", regression_message(result, session.compare_path or "", session.compare_gates))]


def _attach(report: pytest.TestReport, payload: dict[str, Any], failures: Sequence[tuple[str, str]]) -> None:
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
