"""Sanity checks in the pytest plugin: levels, the failing-check gate and its escape hatch, payloads.

The planted flaw is the digits CNN followed by a softmax: its outputs are probabilities, so the
``logits-output`` check fails, while its FGSM robust accuracy (about 72% on 32 samples at eps 0.1) clears
a 50% threshold. Its honest twin is the PGD-trained CNN of the inner conftest. Every inner audit is
small (32 samples, FGSM, one eps: a fraction of a second with basic checks).
"""

from __future__ import annotations

import json

import pytest

from robustaudit.core.errors import UserError

pytest_plugins = ["pytester"]

#: As in test_pytester.py: the smoke profile (checks off unless a test says otherwise) on the CPU.
FAST = ("--robust-profile", "smoke", "--robust-device", "cpu", "-p", "no:cacheprovider", "-p", "no:benchmark")

FLAWED = '''
import pytest
import torch.nn as nn

from robustaudit.models.catalog import create_model

SMALL = dict(attack="fgsm", eps=0.1, n=32, min_accuracy=0.5, checks="basic")


@pytest.fixture(scope="module")
def flawed():
    """Probabilities instead of logits: the logits-output check fails."""
    return nn.Sequential(create_model("digits-cnn"), nn.Softmax(1))


@pytest.mark.robustness(**SMALL)
def test_flawed(robustness, flawed, my_data):
    robustness.audit(flawed, my_data).assert_robust()


@pytest.mark.robustness(**SMALL)
def test_flawed_allowed(robustness, flawed, my_data):
    robustness.audit(flawed, my_data).assert_robust(allow_failed_checks=True)


@pytest.mark.robustness(**SMALL, allow_failed_checks=True)
def test_flawed_allowed_by_marker(robustness, flawed, my_data):
    robustness.audit(flawed, my_data)
    robustness.assert_robust()


@pytest.mark.robustness(**SMALL)
def test_flawed_never_asserts(robustness, flawed, my_data):
    robustness.audit(flawed, my_data)


@pytest.mark.robustness(**SMALL)
def test_honest_twin(robustness, my_model, my_data):
    result = robustness.audit(my_model, my_data).assert_robust()
    assert result.checks and not [c for c in result.checks if c["status"] == "fail"]
'''


def test_failing_check_fails_the_gate_unless_allowed(project):
    project.makepyfile(test_flawed=FLAWED)
    result = project.runpytest(*FAST, "--robust-save", "saved.json", "--robust-report", "report")
    outcomes = {r.nodeid.split("::")[1]: r.outcome for r in result.reprec.getreports("pytest_runtest_logreport")
                if r.when == "call"}
    assert outcomes == {"test_flawed": "failed", "test_flawed_allowed": "passed",
                        "test_flawed_allowed_by_marker": "passed", "test_flawed_never_asserts": "failed",
                        "test_honest_twin": "passed"}
    # the failure lists each failing check: model, id, message, doc link, and the escape hatch
    result.stdout.fnmatch_lines([
        ("*RobustnessFailure: sanity checks failed (checks=basic): the robust accuracy of Sequential is "
        "an upper bound (logits-output failed)"),
        "*  fail  logits-output  [[]Sequential[]]  outputs are probabilities * (docs/checks.md#logits-output)",
        "*allow_failed_checks=True (on assert_robust() or the marker) accepts the figures anyway",
        "*settings: profile smoke, n=32, steps=10, restarts=1, seed=0, device=cpu, checks=basic",
    ])
    # a marker's gate runs after a test that forgot assert_robust(), failing checks included
    result.stdout.fnmatch_lines([("*min_accuracy and sanity checks of @pytest.mark.robustness, checked after the "
                                 "test (it did not call assert_robust):"),
                                 "sanity checks failed (checks=basic)*"])
    # the summary: the gate cell, a tally per audit, the verdicts that did not pass
    result.stdout.fnmatch_lines([
        "*= robustness =*",
        "test_flawed.py::test_flawed * Sequential * fgsm * 0.1 * 32 * min 50.0% point: pass; checks: FAIL",
        "test_flawed.py::test_flawed_allowed * min 50.0% point: pass; checks: allowed",
    ])
    result.stdout.fnmatch_lines([
        "sanity checks (a fail fails assert_robust unless allow_failed_checks=True; see docs/checks.md):",
        "  test_flawed.py::test_flawed: checks basic: * pass, * warn, 1 fail",
        "    fail  logits-output  [[]Sequential[]]  outputs are probabilities*",
    ])
    result.stdout.fnmatch_lines(["  test_flawed.py::test_honest_twin: checks basic: 12 pass, 0 warn, 0 fail"])
    # the session file carries every verdict and each gate's failing checks
    saved = json.loads((project.path / "saved.json").read_text())
    assert saved["checks"] == "off"  # the session default (smoke); the markers asked for basic
    test = saved["tests"]["test_flawed.py::test_flawed"]
    (audit,) = test["audits"]
    assert audit["settings"]["checks"] == "basic"
    assert {c["id"]: c["status"] for c in audit["checks"]}["logits-output"] == "fail"
    (gate,) = test["gates"]
    assert gate["rows_passed"] and not gate["passed"] and not gate["allow_failed_checks"]
    assert [(c["id"], c["model"], c["doc"]) for c in gate["failed_checks"]] == [
        ("logits-output", "Sequential", "docs/checks.md#logits-output")]
    assert saved["tests"]["test_flawed.py::test_flawed_allowed"]["gates"][0]["passed"] is True
    # the Markdown and HTML reports show the tallies and the non-pass verdicts
    markdown = (project.path / "report" / "report.md").read_text()
    assert "## Sanity checks" in markdown
    assert "- `test_flawed.py::test_honest_twin`: checks basic: 12 pass, 0 warn, 0 fail" in markdown
    assert "| `test_flawed.py::test_flawed` | fail | logits-output | Sequential |" in markdown
    page = (project.path / "report" / "report.html").read_text()
    assert "<h2>Sanity checks</h2>" in page and '<td class="fail">fail</td><td>logits-output</td>' in page


LEVELS = '''
import pytest

from robustaudit.core.errors import UserError

SMALL = dict(attack="fgsm", eps=0.1, n=32, min_accuracy=0.5)


@pytest.mark.robustness(**SMALL)
def test_session_level(robustness, my_model, my_data, request):
    result = robustness.audit(my_model, my_data).assert_robust()
    expected = request.config.getoption("--robust-checks") or "off"  # smoke runs none
    assert robustness.settings.checks == result.settings["checks"] == expected
    assert (result.checks == []) == (expected == "off")
    with pytest.raises(UserError, match="checks must be one of off, basic, full, got 'ful'"):
        robustness.audit(my_model, my_data, checks="ful")


@pytest.mark.robustness(**SMALL, checks="off")
def test_marker_off_beats_the_option(robustness, my_model, my_data):
    assert robustness.audit(my_model, my_data).checks == []
'''


@pytest.mark.parametrize("option", [None, "off", "basic"])
def test_levels_from_profile_option_and_marker(project, option):
    project.makepyfile(test_levels=LEVELS)
    args = FAST if option is None else (*FAST, "--robust-checks", option)
    result = project.runpytest(*args)
    result.assert_outcomes(passed=2)
    if option != "basic":
        result.stdout.fnmatch_lines(["  test_levels.py::test_session_level: checks off: none run"])
    else:
        result.stdout.fnmatch_lines(["profile smoke (n=64, steps=10, restarts=1, checks=basic); *",
                                     "  test_levels.py::test_session_level: checks basic: 12 pass, 0 warn, 0 fail"])
    result.stdout.fnmatch_lines(["  test_levels.py::test_marker_off_beats_the_option: checks off: none run"])


def test_bad_levels_are_usage_errors(project):
    project.makepyfile(test_bad='''
        import pytest

        @pytest.mark.robustness(checks="fulll")
        def test_typo(robustness):
            pass
    ''')
    result = project.runpytest(*FAST, "--robust-checks", "bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--robust-checks: invalid choice: 'bogus' (choose from *off*basic*full*)"])
    ini = project.makeini("[pytest]\nrobust_checks = everything\n")
    result = project.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*robust_checks must be one of off, basic, full, got 'everything'"])
    ini.unlink()
    result = project.runpytest(*FAST)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([("@pytest.mark.robustness: checks must be one of off, basic, full, got 'fulll' "
                                 "(did you mean 'full'?)")])


# ------------------------------------------------------------------------------ the gate, without pytester
def _result(checks: list[dict], robust: float = 0.9, settings: dict | None = None):
    from robustaudit.evaluate.result import SCHEMA_VERSION, ResultMatrix
    from robustaudit.plugin.fixture import RobustResult

    rec = {"model": "Net", "attack": "pgd", "eps": 0.1, "norm": "linf", "n": 100, "n_clean_correct": 100,
           "n_robust": int(robust * 100), "clean_accuracy": 1.0, "robust_accuracy": robust,
           "ci_low": robust - 0.06, "ci_high": robust + 0.05, "seconds": 0.1}
    doc = {"schema_version": SCHEMA_VERSION, "records": [rec, {**rec, "attack": "worst-case"}], "checks": checks,
           "provenance": {"checks": {"level": "basic"}}}
    return RobustResult.wrap(ResultMatrix.from_dict(doc), settings=settings or {})


def _verdict(status: str, model: str | None = "Net", check: str = "unbounded") -> dict:
    return {"id": check, "model": model, "status": status, "message": f"{check} {status}",
            "doc": f"docs/checks.md#{check}", "evidence": {}}


def test_gate_fails_on_fail_verdicts_only():
    from robustaudit.plugin.fixture import RobustnessFailure, evaluate_gate

    ok = _result([_verdict("pass"), _verdict("warn", check="loss-gap")])
    assert ok.assert_robust(0.8) is ok  # a warning never fails
    bad = _result([_verdict("fail"), _verdict("fail", model=None, check="eps-zero"), _verdict("fail", "Other")])
    with pytest.raises(RobustnessFailure) as info:
        bad.assert_robust(0.8)
    lines = str(info.value).splitlines()
    assert lines[0] == ("sanity checks failed (checks=basic): the robust accuracy of Net, Other is an upper "
                        "bound (unbounded failed, eps-zero failed)")
    assert lines[1] == "  fail  unbounded  [Net]  unbounded fail (docs/checks.md#unbounded)"
    assert lines[2] == "  fail  eps-zero  [audit]  eps-zero fail (docs/checks.md#eps-zero)"
    # a model filter keeps that model's verdicts and the audit-wide ones
    gate = evaluate_gate(bad, 0.8, model="Net")
    assert [c["id"] for c in gate["failed_checks"]] == ["unbounded", "eps-zero"]
    assert bad.assert_robust(0.8, allow_failed_checks=True) is bad
    assert _result([_verdict("fail")], settings={"allow_failed_checks": True}).assert_robust(0.8)
    # below the threshold and failing checks: one message with both
    with pytest.raises(RobustnessFailure, match=r"(?s)robust accuracy below min_accuracy=95.0%.*sanity checks failed"):
        bad.assert_robust(0.95)
    with pytest.raises(UserError, match="allow_failed_checks must be True or False"):
        bad.assert_robust(0.8, allow_failed_checks="yes")  # type: ignore[arg-type]


def test_an_answered_failure_no_longer_fails_the_gate():
    """A fail that --checks full answered (answered_by: its adaptive columns joined the worst case) is no
    upper bound; an unanswered one (missing or empty answered_by) still fails, unless allowed."""
    from robustaudit.plugin.fixture import RobustnessFailure

    answered = _result([{**_verdict("fail", check="loss-gap"), "answered_by": ["apgd-dlr"]}])
    assert answered.reliability == {"Net": {"reliable": True, "reasons": []}}
    assert answered.assert_robust(0.8) is answered
    open_ = _result([{**_verdict("fail", check="loss-gap"), "answered_by": []}, _verdict("fail", check="random-noise")])
    assert open_.reliability == {"Net": {"reliable": False, "reasons": ["loss-gap failed", "random-noise failed"]}}
    with pytest.raises(RobustnessFailure) as info:
        open_.assert_robust(0.8)
    assert str(info.value).splitlines()[0] == ("sanity checks failed (checks=basic): the robust accuracy of Net is "
                                               "an upper bound (loss-gap failed, random-noise failed)")
    assert open_.assert_robust(0.8, allow_failed_checks=True) is open_
