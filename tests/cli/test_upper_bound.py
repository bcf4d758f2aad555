"""The CLI's exit code with a planted flaw (issues 16.3 and 17.4): a failing sanity check that nothing
answered makes ``--fail-under`` fail, whatever the rows say, unless ``--allow-unreliable``; the terminal,
results.json and report.md mark the figure as an upper bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustaudit.cli import main
from robustaudit.reports.view.checkdocs import CHECKS_MD

FLAWED = str(Path(__file__).resolve().parents[1] / "golden" / "flawed.py") + ":make_quantized"
PROBABILITIES = '''
import torch.nn as nn

from robustaudit.models.catalog import create_model


def make():
    """The digits CNN followed by a softmax: probabilities, not logits (logits-output fails)."""
    return nn.Sequential(create_model("digits-cnn"), nn.Softmax(1))
'''
#: --fail-under 0: every row passes, so only the checks can fail the gate
SMALL = ["--attack", "fgsm", "--eps", "0.1", "--n", "32", "--device", "cpu", "--fail-under", "0"]


def _gate_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith(("FAIL", "PASS"))]
    return line


@pytest.mark.slow  # two audits with basic checks (tests/unit/test_reliability.py has the fast gate tests)
def test_probabilities_model_fails_the_gate_unless_allowed(tmp_path, capsys):
    (tmp_path / "prob.py").write_text(PROBABILITIES)
    model = f"{tmp_path / 'prob.py'}:make"
    out = tmp_path / "run"
    assert main(["audit", "--model", model, *SMALL, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert _gate_line(captured.err) == ("FAIL: upper bounds, not figures to gate on: prob:make (logits-output failed); "
                                        f"see {CHECKS_MD}#upper-bounds (--allow-unreliable accepts them)")
    doc = json.loads((out / "results.json").read_text())
    assert doc["reliability"] == {"prob:make": {"reliable": False, "reasons": ["logits-output failed"]}}
    worst = next(r for r in doc["records"] if r["attack"] == "worst-case")
    figure = f"{100 * worst['robust_accuracy']:.1f}"
    assert f"prob:make at ε=0.1: ≤ {figure} (upper bound: logits-output failed)" in captured.out
    assert f"prob:make at ε=0.1: ≤ {figure} (upper bound: logits-output failed)" in (out / "report.md").read_text()
    # the explicit override: the same audit passes, and says what it accepted
    assert main(["audit", "--model", model, *SMALL, "--out", str(out), "--allow-unreliable"]) == 0
    assert _gate_line(capsys.readouterr().err) == (
        "PASS: every robust accuracy (lower bound) >= 0; upper bounds accepted by --allow-unreliable: "
        "prob:make (logits-output failed)")


@pytest.mark.slow
def test_quantized_model_fails_the_gate(tmp_path, capsys):
    """The 2-bit quantizer of the golden d_checks_full: dead gradients, several checks fail under basic."""
    out = tmp_path / "run"
    assert main(["audit", "--model", FLAWED, *SMALL, "--out", str(out)]) == 1
    line = _gate_line(capsys.readouterr().err)
    assert line.startswith("FAIL: upper bounds, not figures to gate on: flawed:make_quantized (")
    assert "input-gradients failed" in line
    doc = json.loads((out / "results.json").read_text())
    assert doc["reliability"]["flawed:make_quantized"]["reliable"] is False


def test_allow_unreliable_from_the_config_file(tmp_path):
    from robustaudit.cli import build_parser
    from robustaudit.cli_audit import gate_from, options_from_args

    cfg = tmp_path / "audit.toml"
    cfg.write_text("fail_under = 0.5\nallow_unreliable = true\n")
    given = options_from_args(build_parser().parse_args(["audit", "--config", str(cfg)]))
    assert gate_from(given) == (0.5, "lower", True) and "allow_unreliable" not in given
