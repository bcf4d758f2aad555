"""The plugin end to end in pytester runs (in-process: torch is imported once for all of them).

Inner projects audit the catalog's digits CNNs on the first 64 digits test images under
``--robust-profile smoke``: a standard CNN (robust accuracy at eps 0.1 about 75%) and its PGD-trained
twin (about 92%), the weak/strong pair behind the regression tests.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]

#: Options of every inner run: the cheap profile, and the CPU so that figures match on any machine
#: (pytest-benchmark, when installed, would warn in inner runs under an outer xdist run).
FAST = ("--robust-profile", "smoke", "--robust-device", "cpu", "-p", "no:cacheprovider", "-p", "no:benchmark")

GATES = '''
import pytest


@pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.6)
def test_classifier_is_robust(robustness, my_model, my_data):
    robustness.audit(my_model, my_data).assert_robust()


@pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.99)
def test_point_gate_fails(robustness, my_model, my_data):
    robustness.audit(my_model, my_data).assert_robust()


@pytest.mark.robustness(attack="pgd", eps=0.1)
def test_lower_gate_fails_where_the_point_passes(robustness, my_model, my_data):
    result = robustness.audit(my_model, my_data)
    row = result.records.iloc[0]
    threshold = (row["ci_low"] + row["robust_accuracy"]) / 2  # between the lower bound and the estimate
    result.assert_robust(threshold)  # the point estimate passes
    result.assert_robust(threshold, bound="lower")
'''


def test_passing_and_failing_thresholds(project):
    project.makepyfile(test_gates=GATES)
    result = project.runpytest(*FAST, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    # the failure shows the threshold, what was gated, the failing row with its interval
    result.stdout.fnmatch_lines([
        "*RobustnessFailure: robust accuracy below min_accuracy=99.0% in 1 of 1 gated rows",
        "*gated on the point estimate (the measured robust accuracy)*",
        "*model      attack  eps  n   clean  robust  95% CI",
        "*DigitsCNN  pgd     0.1  64  *%  *%   [[]*–*[]]",
        "*settings: profile smoke, n=64, steps=10, restarts=1, seed=0, device=cpu, checks=off",
    ])
    result.stdout.fnmatch_lines(["*lower 95% bound of robust accuracy below min_accuracy=*",
                                 "*gated on the lower 95% Wilson bound (ci_low)*"])
    # the terminal summary: every test's row and its gate verdict
    result.stdout.fnmatch_lines([
        "*= robustness =*",
        "profile smoke (n=64, steps=10, restarts=1, checks=off); assert_robust gates on the point estimate by default*",
        "test * model * attack * eps * n * clean * robust * 95% CI * gate",
        "test_gates.py::test_classifier_is_robust * DigitsCNN * pgd * 0.1 * 64 * min 60.0% point: pass",
        "test_gates.py::test_point_gate_fails * min 99.0% point: FAIL",
        "test_gates.py::test_lower_gate_fails_where_the_point_passes * lower: FAIL",
    ])
    assert "worst-case" not in out  # one attack: its worst-case row is not repeated
    # JUnit XML carries the figures as properties
    props = {p.get("name"): p.get("value") for p in ET.parse(project.path / "junit.xml").iter("property")}
    assert 0.6 <= float(props["robust_accuracy[DigitsCNN/pgd/0.1]"]) <= 1.0
    assert float(props["clean_accuracy[DigitsCNN]"]) > 0.9


def test_bad_marker_is_a_setup_error_naming_the_valid_keys(project):
    project.makepyfile(test_bad='''
        import pytest

        @pytest.mark.robustness(attack="pgd", epsilon=0.1)
        def test_typo(robustness):
            pass

        @pytest.mark.robustness("pgd")
        def test_positional(robustness):
            pass

        @pytest.mark.robustness(min_accuracy=60)
        def test_percent(robustness):
            pass
    ''')
    result = project.runpytest(*FAST)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_typo*",
        ("@pytest.mark.robustness: unknown key 'epsilon' (did you mean 'eps'?); valid keys: attack, attacks, eps, "
         "norm, n, min_accuracy, bound, steps, restarts, seed, device, batch_size, checks, allow_failed_checks, class_map"),
    ])
    result.stdout.fnmatch_lines(["*takes keyword arguments only*",
                                 "*min_accuracy is a fraction in [[]0, 1[]], got 60 (did you mean 0.6?)"])
    assert "During handling" not in result.stdout.str()
    assert "= robustness =" not in result.stdout.str()  # nothing audited, no summary


def test_help_shows_the_robust_options(pytester):
    result = pytester.runpytest("--help", "-p", "no:benchmark")
    result.stdout.fnmatch_lines([
        "robustness audits (robustaudit):",
        "*--robust-profile={smoke,ci,full}*",
        "*--robust-checks={off,basic,full}*",
        "*--robust-device=DEVICE*",
        "*--robust-gate={point,lower}*",
        "*--robust-save=PATH*",
        "*--robust-compare=PATH*",
        "*--robust-compare-fail=EXPR*",
        "*--robust-report=DIR*",
    ])
    for ini in ("robust_profile", "robust_checks", "robust_device", "robust_gate", "robust_save", "robust_compare",
                "robust_compare_fail", "robust_report"):
        result.stdout.fnmatch_lines([f"  {ini} (*"])
    result = pytester.runpytest("--markers", "-p", "no:benchmark")
    result.stdout.fnmatch_lines(["@pytest.mark.robustness(attack=..., eps=..., min_accuracy=...*"])


COMPARED = '''
import pytest


@pytest.mark.robustness(attack="pgd", eps=0.1)
def test_robust(robustness, my_model, my_data):
    robustness.audit(my_model, my_data)
'''


@pytest.fixture
def baseline(project, monkeypatch):
    """A session saved with the PGD-trained CNN (the strong model)."""
    project.makepyfile(test_compared=COMPARED)
    monkeypatch.setenv("RA_TEST_MODEL", "digits-cnn-pgdat")
    project.runpytest(*FAST, "--robust-save", "baseline.json").assert_outcomes(passed=1)
    doc = json.loads((project.path / "baseline.json").read_text())
    (audit,) = doc["tests"]["test_compared.py::test_robust"]["audits"]
    ids = {(r["attack"]): r["ids"] for r in audit["robust_ids"]}
    assert len(ids["pgd"]) == sum(r["n_robust"] for r in audit["records"] if r["attack"] == "pgd")
    return project


@pytest.mark.parametrize("gate", ["robust_accuracy:0.02", "robust_accuracy:5%", "robust_accuracy:significant"])
def test_compare_fail_catches_a_regression(baseline, monkeypatch, gate):
    monkeypatch.setenv("RA_TEST_MODEL", "digits-cnn")  # the standard CNN: much weaker under attack
    result = baseline.runpytest(*FAST, "--robust-compare", "baseline.json", "--robust-compare-fail", gate)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*robustness regression against baseline *baseline.json",
        f"gates: {gate} (*",
        "*model * attack * eps * baseline * now * change * lost/gained * p * verdict",
        f"*DigitsCNN * pgd * 0.1 * -* pts * FAIL {gate}",
    ])
    result.stdout.fnmatch_lines(["compared with *baseline.json (profile smoke); gates: " + gate,
                                 "1 of 1 rows regressed beyond the gates in 1 test(s)"])
    assert result.ret == 1


def test_compare_passes_without_a_regression_and_reports_files(baseline):
    # the same model again: no drop, no lost samples
    result = baseline.runpytest(*FAST, "--robust-compare", "baseline.json", "--robust-compare-fail",
                                "robust_accuracy:significant", "--robust-compare-fail", "robust_accuracy:0",
                                "--robust-report", "report", "--robust-save", "now.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*+0.0 pts * 0/0 * 1 * ok", "0 of 1 rows regressed beyond the gates in 0 test(s)",
                                 "robustness figures saved: *now.json", "robustness report: *report.md"])
    markdown = (baseline.path / "report" / "report.md").read_text()
    assert markdown.startswith("# Robustness tests")
    assert "| `test_compared.py::test_robust` | DigitsCNN | pgd | 0.1 | 64 |" in markdown
    assert "## Compared with the baseline" in markdown
    page = (baseline.path / "report" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "test_compared.py::test_robust" in page
    assert (baseline.path / "report" / "audits" / "test_compared.py_test_robust" / "report.html").is_file()
    saved = json.loads((baseline.path / "now.json").read_text())
    assert saved["compare"]["gates"] == ["robust_accuracy:significant", "robust_accuracy:0"]
    assert saved["tests"]["test_compared.py::test_robust"]["compare"]["rows"][0]["b"] == 0


def test_compare_fail_catches_a_renamed_model(baseline, monkeypatch):
    # the weaker CNN wrapped in nn.Sequential (what adding a normalization layer does): its rows are all
    # named Sequential, so none matches the baseline's DigitsCNN rows; a gate must not pass on that
    monkeypatch.setenv("RA_TEST_MODEL", "digits-cnn")
    monkeypatch.setenv("RA_TEST_WRAP", "1")
    gate = ("--robust-compare", "baseline.json", "--robust-compare-fail", "robust_accuracy:significant")
    result = baseline.runpytest(*FAST, *gate)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "baseline rows missing from this run (baseline *baseline.json)",
        "gates: robust_accuracy:significant (*",
        ("1 baseline row(s) missing from this run (*): model 'DigitsCNN' of the baseline is not in this run, "
         "which has 'Sequential': the model was renamed (*); name it explicitly, "
         "robustness.audit({'DigitsCNN': model}, data), or re-save the baseline (--robust-save)*"),
        "*model * attack * eps * baseline * now * change * lost/gained * p * verdict",
        "*DigitsCNN * pgd * 0.1 *% * - * FAIL missing",
    ])
    result.stdout.fnmatch_lines([
        "test_compared.py::test_robust * Sequential * pgd * 0.1 * - *% * new",
        "test_compared.py::test_robust * DigitsCNN * pgd * 0.1 *% * - * FAIL missing",
        "0 of 1 rows regressed beyond the gates in 0 test(s)",
        "1 baseline row(s) missing from 1 test(s) that ran, failing them (a --robust-compare-fail gate is given)",
    ])
    # the fix the message gives: named explicitly, the rows match again and the regression itself fails
    baseline.makepyfile(test_compared=COMPARED.replace("audit(my_model,", "audit({'DigitsCNN': my_model},"))
    result = baseline.runpytest(*FAST, *gate)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DigitsCNN * pgd * 0.1 * -* pts * FAIL robust_accuracy:significant",
                                 "1 of 1 rows regressed beyond the gates in 1 test(s)"])
    assert not [line for line in result.outlines if "row(s) missing" in line or line.endswith(" missing")]


TWO_TESTS = '''
import os

import pytest


@pytest.mark.robustness(attack="pgd", eps=0.1)
def test_first(robustness, my_model, my_data):
    robustness.audit(my_model, my_data)


@pytest.mark.robustness(attack="pgd", eps=0.05)
def test_second(robustness, my_model, my_data):
    if not os.environ.get("RA_NO_AUDIT"):
        robustness.audit(my_model, my_data)
'''


def test_compare_missing_rows_count_only_tests_that_ran(project, monkeypatch):
    project.makepyfile(test_pair=TWO_TESTS)
    project.runpytest(*FAST, "--robust-save", "baseline.json").assert_outcomes(passed=2)
    gate = ("--robust-compare-fail", "robust_accuracy:significant")
    # no gate: test_first's renamed row is reported, not failed; deselected test_second's row is not missing
    monkeypatch.setenv("RA_TEST_WRAP", "1")
    result = project.runpytest(*FAST, "--robust-compare", "baseline.json", "-k", "test_first")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines([
        "test_pair.py::test_first * DigitsCNN * pgd * 0.1 *% * - * missing",
        "0 of 1 rows regressed beyond the gates in 0 test(s)",
        "1 baseline row(s) missing from 1 test(s) that ran, reported only: no --robust-compare-fail gate",
        "missing: *name it explicitly, robustness.audit({'Net': model}, data)*",
        "1 baseline test(s) not run this time: test_pair.py::test_second",
    ])
    # with a gate, a deselected test fails nothing
    monkeypatch.delenv("RA_TEST_WRAP")
    result = project.runpytest(*FAST, "--robust-compare", "baseline.json", *gate, "-k", "test_first")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["0 of 1 rows regressed beyond the gates in 0 test(s)",
                                 "1 baseline test(s) not run this time: test_pair.py::test_second"])
    assert not [line for line in result.outlines if "row(s) missing" in line or line.endswith(" missing")]
    # but a test that ran without its audit has lost its rows
    monkeypatch.setenv("RA_NO_AUDIT", "1")
    result = project.runpytest(*FAST, "--robust-compare", "baseline.json", *gate, "-k", "test_second")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*model 'DigitsCNN' of the baseline is not in this run: if it was renamed*",
                                 "1 baseline row(s) missing from 1 test(s) that ran, failing them*"])


def test_compare_usage_errors(project):
    project.makepyfile(test_compared=COMPARED)
    result = project.runpytest(*FAST, "--robust-compare", "missing.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--robust-compare: no such file*missing.json*"])
    (project.path / "baseline.json").write_text("{}")
    result = project.runpytest(*FAST, "--robust-compare", "baseline.json", "--robust-compare-fail", "robust_acc:1%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown field 'robust_acc'*"])


def test_fixture_progress_takes_a_bool(project):
    # checks="basic": the sanity-check stage reported to progress=False itself before (AttributeError)
    project.makepyfile(test_fixture_progress='''
        import pytest

        @pytest.mark.robustness(attack="fgsm", eps=0.1)
        def test_progress(robustness, my_model, my_data, capsys):
            robustness.audit(my_model, my_data, checks="basic", progress=False)
            assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
            robustness.audit(my_model, my_data, progress=True)
            err = capsys.readouterr().err
            assert "DigitsCNN: fgsm: " in err and "done in" in err, err
            with pytest.raises(ValueError, match="progress must be True, False, None or an object"):
                robustness.audit(my_model, my_data, progress="yes")
    ''')
    project.runpytest(*FAST).assert_outcomes(passed=1)


def test_marker_threshold_is_enforced_when_the_test_never_asserts(project):
    project.makepyfile(test_implicit='''
        import pytest

        @pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.99)
        def test_forgot_to_assert(robustness, my_model, my_data):
            robustness.audit(my_model, my_data)
    ''')
    result = project.runpytest(*FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*checked after the test (it did not call assert_robust)*",
                                 "robust accuracy below min_accuracy=99.0% in 1 of 1 gated rows"])


def test_ini_keys_and_options_override_them(project):
    project.makeini("""
        [pytest]
        robust_profile = full
        robust_gate = lower
        robust_device = cpu
        robust_save = from-ini.json
    """)
    project.makepyfile(test_ini='''
        import pytest

        @pytest.mark.robustness(attacks=["fgsm", "pgd"], eps=[0.05, 0.1], n=16)
        def test_settings(robustness, my_model, my_data):
            s = robustness.settings
            assert (s.profile, s.steps, s.restarts, s.bound, s.device, s.n) == ("smoke", 10, 1, "lower", "cpu", 16)
            result = robustness.audit(my_model, my_data, eps=0.1, steps=3)
            assert result.settings["steps"] == 3 and result.settings["n"] == 16
            assert result.attacks == ["fgsm", "pgd"]  # bare names keep bare labels
            assert list(result.records["n"].unique()) == [16]
            robustness.assert_robust(0.0, attack="worst-case")
            with pytest.raises(AssertionError, match="lower 95% bound"):
                robustness.assert_robust(1.0, eps=0.1)
            with pytest.raises(ValueError, match="no row matches"):
                result.assert_robust(0.5, attack="cw")
    ''')
    result = project.runpytest("--robust-profile", "smoke", "-p", "no:cacheprovider", "-p", "no:benchmark")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["profile smoke (*); assert_robust gates on the lower 95% bound by default*",
                                 "*DigitsCNN * worst-case * 0.1 * 16 *"])
    saved = json.loads((project.path / "from-ini.json").read_text())
    assert saved["profile"] == "smoke" and saved["gate"] == "lower"
