"""Upper bounds (issue 16.3): an unanswered failing sanity check makes a model's figures unreliable, in
results.json, the terminal, Markdown and HTML, and in the CLI's ``--fail-under`` gate."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from rich.console import Console

from robustaudit.evaluate.aggregate import COLUMNS, WORST_CASE
from robustaudit.evaluate.reliability import reliability_of, unanswered
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports import render_html, render_markdown, render_terminal
from robustaudit.reports.view.checkdocs import CHECKS_MD


def _verdict(check: str, model: str | None, status: str = "fail", **extra) -> dict:
    return {"id": check, "model": model, "status": status, "message": f"{check} {status}",
            "doc": f"docs/checks.md#{check}", "evidence": {}, **extra}


def test_reliability_from_verdicts():
    checks = [_verdict("loss-gap", "a"), _verdict("loss-gap", "a"), _verdict("random-noise", "a"),
              _verdict("monotone-eps", "b", "warn"), _verdict("eps-zero", "c", answered_by=["bpda(pgd)"]),
              _verdict("input-gradients", "d", answered_by=[])]
    rel = reliability_of(checks, ["a", "b", "c", "d", "e"])
    assert rel == {"a": {"reliable": False, "reasons": ["loss-gap failed", "random-noise failed"]},
                   "b": {"reliable": True, "reasons": []},  # a warning never makes a figure unreliable
                   "c": {"reliable": True, "reasons": []},  # answered: the worst case holds the adaptive figure
                   "d": {"reliable": False, "reasons": ["input-gradients failed"]},  # empty answered_by: unanswered
                   "e": {"reliable": True, "reasons": []}}  # no verdicts: not checked, not failed
    # an audit-wide failure (model None) makes every model unreliable
    wide = reliability_of([_verdict("eps-zero", None)], ["a", "b"])
    assert wide == {m: {"reliable": False, "reasons": ["eps-zero failed"]} for m in ("a", "b")}
    # a detector row inherits its model's verdicts
    assert reliability_of(checks, ["a+squeeze"], {"a+squeeze": "a"})["a+squeeze"]["reliable"] is False
    assert [c["id"] for c in unanswered(checks, "d")] == ["input-gradients"]


def _result(checks: list[dict], level: str | None = "basic", acc: float = 0.89) -> ResultMatrix:
    rows = [dict(model="digits-cnn", attack=attack, eps=0.1, norm="linf", n=200, n_clean_correct=196,
                 n_robust=int(acc * 200), clean_accuracy=0.98, robust_accuracy=acc, ci_low=acc - 0.05,
                 ci_high=acc + 0.04, seconds=1.0) for attack in ("pgd", WORST_CASE)]
    provenance = {"checks": {"level": level}} if level is not None else {}
    return ResultMatrix(pd.DataFrame(rows, columns=list(COLUMNS)), provenance, [], checks)


def test_results_json_round_trip(tmp_path):
    result = _result([_verdict("loss-gap", "digits-cnn")])
    result.save(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["reliability"] == {"digits-cnn": {"reliable": False, "reasons": ["loss-gap failed"]}}
    assert ResultMatrix.load(tmp_path).reliability == doc["reliability"]
    # a file written before the key existed: computed from its checks; without checks, reliable
    del doc["reliability"]
    assert ResultMatrix.from_dict(doc).reliability == {"digits-cnn": {"reliable": False, "reasons": ["loss-gap failed"]}}
    doc["checks"] = []
    assert ResultMatrix.from_dict(doc).reliability == {"digits-cnn": {"reliable": True, "reasons": []}}


def _terminal(result: ResultMatrix) -> str:
    console = Console(width=200, file=io.StringIO())
    render_terminal(result, console)
    return console.file.getvalue()


def test_upper_bound_in_terminal_markdown_and_html():
    result = _result([_verdict("loss-gap", "digits-cnn")])
    text = _terminal(result)
    assert "digits-cnn at ε=0.1: ≤ 89.0 (upper bound: loss-gap failed)" in text
    assert "≤ 89.0 [84.0–93.0]" in text  # the worst-case cell of the matrix and the summary
    # what that means, and where to read more: the checkout's file by a path that opens from any directory
    assert f"so their worst case is only an upper bound (see {CHECKS_MD}#upper-bounds)." in " ".join(text.split())
    markdown = render_markdown(result)
    assert "- **digits-cnn at ε=0.1: ≤ 89.0 (upper bound: loss-gap failed)**" in markdown
    assert "| **≤ 89.0 [84.0–93.0]** |" in markdown and "| 89.0 [84.0–93.0] |" in markdown  # pgd's own row
    page = render_html(result, images=False)
    # the verdict, the matrix's worst case and the summary, never coloured as a pass
    assert page.count('<td class="num upper"') == 3
    assert "≤ 89.0 [84.0–93.0]</td>" in page and "hsl(107" not in page.split("<h2>Clean vs")[1].split("</table>")[0]
    assert "≤ 89.0 (upper bound: loss-gap failed)" in page  # the verdict on the first screen
    # answered: no mark anywhere
    answered = _result([_verdict("loss-gap", "digits-cnn", answered_by=["apgd-dlr"])])
    assert "≤" not in _terminal(answered) and "≤" not in render_markdown(answered)
    assert "answered by apgd-dlr in the worst case" in render_markdown(answered)


def test_checks_off_says_the_figures_were_not_checked():
    off = _result([], level="off")
    assert off.reliability == {"digits-cnn": {"reliable": True, "reasons": []}}
    for text in (_terminal(off), render_markdown(off)):
        assert "The figures were not checked (--checks off)" in text and "≤" not in text
    page = render_html(off, images=False)
    assert "No sanity check ran: the figures are not checked" in page and "≤" not in page
    assert "not checked" not in _terminal(_result([_verdict("loss-gap", "digits-cnn", "pass")]))


@pytest.mark.parametrize(("allow", "code"), [(False, 1), (True, 0)])
def test_cli_gate_fails_on_an_upper_bound_unless_allowed(allow, code):
    from robustaudit.cli_audit import _gate

    err = Console(width=300, file=io.StringIO())
    result = _result([_verdict("loss-gap", "digits-cnn"), _verdict("random-noise", "digits-cnn")])
    assert _gate(result, 0.5, "lower", allow, err) == code
    lines = err.file.getvalue().strip().splitlines()
    assert len(lines) == 1  # one line naming the failed checks
    if allow:
        assert lines[0].startswith("PASS: every robust accuracy (lower bound) >= 0.5; upper bounds accepted")
    else:
        assert lines[0] == ("FAIL: upper bounds, not figures to gate on: digits-cnn (loss-gap failed, random-noise "
                            f"failed); see {CHECKS_MD}#upper-bounds (--allow-unreliable accepts them)")
        assert CHECKS_MD.is_absolute() and CHECKS_MD.is_file()  # a path the reader can open from anywhere
    assert _gate(_result([]), 0.5, "lower", False, err) == 0  # nothing failed: the rows decide
    assert _gate(result, None, "lower", False, err) == 0  # no --fail-under: no gate


def test_fail_on_lower_is_the_stricter_gate():
    """0.680 [0.542-0.792] against X = 0.6: ``lower`` fails, ``point`` passes (what --help says)."""
    from robustaudit.cli_audit import _gate

    err = Console(width=300, file=io.StringIO())
    result = _result([], acc=0.68)
    result.records["ci_low"], result.records["ci_high"] = 0.542, 0.792
    assert _gate(result, 0.6, "lower", False, err) == 1
    assert _gate(result, 0.6, "point", False, err) == 0
