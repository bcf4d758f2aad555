"""Unit tests of the plugin's pure parts: compare gates, the exact binomial tail, marker validation and
the precedence of settings. No pytester, no torch."""

from __future__ import annotations

import math

import pytest

from robustaudit import pytest_plugin
from robustaudit.core.errors import UserError
from robustaudit.plugin.compare import (
    ALPHA,
    binomial_tail,
    compare_test,
    comparison_rows,
    missing_reason,
    parse_gate,
    regression_message,
)
from robustaudit.plugin.settings import (
    CHECK_LEVELS,
    MARKER_KEYS,
    PROFILES,
    SessionOptions,
    merge_markers,
    resolve,
    validate,
)
from robustaudit.plugin.summary import compare_rows, compare_verdict
from robustaudit.plugin.tables import useful_records


# ------------------------------------------------------------------------------ binomial tail
def test_binomial_tail_exact_values():
    assert binomial_tail(0, 0) == 1.0
    assert binomial_tail(0, 7) == 1.0  # P(X >= 0)
    assert binomial_tail(5, 0) == 1 / 32  # all five discordant samples are regressions
    assert binomial_tail(12, 1) == 14 / 8192  # C(13,12) + C(13,13) = 14 of 2^13
    assert binomial_tail(3, 3) == 42 / 64  # P(X >= 3), X ~ Bin(6, 1/2)


def test_binomial_tail_matches_a_float_sum_and_is_monotone():
    for b in range(30):
        for c in range(30):
            m = b + c
            direct = sum(math.comb(m, k) * 0.5**m for k in range(b, m + 1)) if m else 1.0
            assert binomial_tail(b, c) == pytest.approx(direct, rel=1e-12, abs=1e-300)
    # more regressions against the same improvements: a smaller p
    assert all(binomial_tail(b + 1, 4) < binomial_tail(b, 4) for b in range(20))


def test_binomial_tail_large_counts_stay_finite():
    p = binomial_tail(2600, 2400)  # 5000 discordant samples: exact integers, one division
    assert p == sum(math.comb(5000, k) for k in range(2600, 5001)) / 2**5000  # the definition, term by term
    assert 0.0 < p < 0.003
    assert binomial_tail(2500, 2500) == pytest.approx(0.5056, abs=1e-3)
    with pytest.raises(ValueError):
        binomial_tail(-1, 3)


# ------------------------------------------------------------------------------ gate parsing
@pytest.mark.parametrize(
    "text, kind, threshold",
    [
        ("robust_accuracy:0.02", "absolute", 0.02),
        ("robust_accuracy:5%", "relative", 0.05),
        ("robust_accuracy:significant", "significant", ALPHA),
        ("clean_accuracy:0", "absolute", 0.0),
        (" ci_low : 10% ", "relative", 0.10),
    ],
)
def test_parse_gate(text, kind, threshold):
    gate = parse_gate(text)
    assert (gate.kind, gate.threshold) == (kind, pytest.approx(threshold))


@pytest.mark.parametrize(
    "text, message",
    [
        ("robust_accuracy", "expected FIELD:DROP"),
        ("robust_acuracy:0.02", "did you mean 'robust_accuracy'"),
        ("robust_accuracy:2", "in [0, 1]"),
        ("robust_accuracy:-1%", "in [0, 1]"),
        ("robust_accuracy:lots", "in [0, 1]"),
        ("clean_accuracy:significant", "only robust_accuracy"),
    ],
)
def test_parse_gate_errors(text, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_gate(text)


# ------------------------------------------------------------------------------ compare_test
def _audit(robust_ids: list[int], n: int = 100, attack: str = "pgd", model: str = "Net") -> dict:
    acc = len(robust_ids) / n
    rec = {"model": model, "attack": attack, "eps": 0.1, "norm": "linf", "n": n, "n_clean_correct": n,
           "n_robust": len(robust_ids), "clean_accuracy": 1.0, "robust_accuracy": acc, "ci_low": acc - 0.05,
           "ci_high": acc + 0.05, "seconds": 0.1}
    worst = {**rec, "attack": "worst-case"}
    ids = [{"model": model, "attack": a, "eps": 0.1, "ids": robust_ids} for a in (attack, "worst-case")]
    return {"records": [rec, worst], "robust_ids": ids}


def _compare(base_ids, now_ids, gates, n=100):
    base = {"audits": [_audit(base_ids, n)]}
    return compare_test(base, [_audit(now_ids, n)], [parse_gate(g) for g in gates])


def test_compare_absolute_relative_and_significant():
    base = list(range(60))  # 60%
    now = list(range(3, 60))  # 57%: 3 samples lost, none gained
    result = _compare(base, now, ["robust_accuracy:0.02", "robust_accuracy:0.05", "robust_accuracy:4%",
                                  "robust_accuracy:6%", "robust_accuracy:significant"])
    (row,) = result["rows"]  # the worst-case row repeats the only attack: compared once
    assert (row["b"], row["c"]) == (3, 0)
    assert row["p"] == pytest.approx(1 / 8)
    # 3 points absolute = 5% relative; three losses are not significant (p = 1/8)
    assert row["failed"] == ["robust_accuracy:0.02", "robust_accuracy:4%"]
    assert result["failed"] is True


def test_compare_significant_uses_paired_samples_not_the_totals():
    # same accuracy (50%), but 20 samples swapped: b = c = 20, nothing significant, nothing dropped
    base, now = list(range(50)), list(range(20, 70))
    (row,) = _compare(base, now, ["robust_accuracy:significant", "robust_accuracy:0"])["rows"]
    assert (row["b"], row["c"]) == (20, 20)
    assert row["p"] > 0.5 and row["failed"] == []
    # a 9-point drop made of 9 losses and 0 gains is significant
    (row,) = _compare(list(range(50)), list(range(9, 50)), ["robust_accuracy:significant"])["rows"]
    assert (row["b"], row["c"]) == (9, 0) and row["p"] == pytest.approx(2**-9)
    assert row["failed"] == ["robust_accuracy:significant"]


def test_compare_pairs_only_the_samples_both_runs_audited():
    # baseline audited 200 samples, this run 100: ids >= 100 are not evidence of a regression
    base = {"audits": [_audit(list(range(50)) + list(range(100, 200)), n=200)]}
    (row,) = compare_test(base, [_audit(list(range(50)), n=100)], [parse_gate("robust_accuracy:significant")])["rows"]
    assert (row["b"], row["c"]) == (0, 0) and row["p"] == 1.0 and row["failed"] == []


def test_compare_new_test_and_new_rows():
    gates = [parse_gate("robust_accuracy:0")]
    assert compare_test(None, [_audit([1, 2])], gates) == {"status": "new", "rows": [], "failed": False}
    # the baseline's fgsm row is gone, pgd is new: the new row never fails, the missing one does (a gate is given)
    base = {"audits": [_audit(list(range(50)), attack="fgsm")]}
    result = compare_test(base, [_audit(list(range(10)))], gates)
    assert [(r["status"], r["attack"], r["failed"]) for r in result["rows"]] == [
        ("new", "pgd", []), ("missing", "fgsm", ["missing"])]
    assert result["failed"] is True


def test_compare_renamed_model_fails_a_gate_and_says_how_to_fix_it():
    # the same weaker net, wrapped in nn.Sequential: no current row matches a baseline row
    base = {"audits": [_audit(list(range(60)))]}
    now = [_audit(list(range(20)), model="Sequential")]
    result = compare_test(base, now, [parse_gate("robust_accuracy:significant")])
    assert [(r["model"], r["status"]) for r in result["rows"]] == [("Sequential", "new"), ("Net", "missing")]
    missing = result["rows"][1]
    assert missing["baseline"]["robust_accuracy"] == 0.6 and missing["now"] == {}
    assert missing["failed"] == ["missing"] and result["failed"] is True
    message = regression_message(result, "base.json", [parse_gate("robust_accuracy:significant")])
    reason = message.splitlines()[2]
    assert reason.startswith("1 baseline row(s) missing from this run")
    assert "model 'Net' of the baseline is not in this run, which has 'Sequential'" in reason
    assert "robustness.audit({'Net': model}, data)" in reason and "--robust-save" in reason
    assert message.splitlines()[-1].split() == ["Net", "pgd", "0.1", "60.0%", "-", "-", "-", "-", "FAIL", "missing"]
    assert "Sequential" not in message.splitlines()[-1]  # a new row never fails, so it is not listed
    # without a gate the missing row is reported and fails nothing
    result = compare_test(base, now, [])
    assert result["rows"][1]["status"] == "missing" and result["failed"] is False
    assert comparison_rows(result["rows"])[1][-1] == "missing"


def test_compare_an_audit_call_no_longer_made_is_missing():
    base = {"audits": [_audit(list(range(60))), _audit(list(range(60)), attack="fgsm")]}
    result = compare_test(base, [_audit(list(range(60)))], [parse_gate("robust_accuracy:0.02")])
    assert [(r["audit"], r["attack"], r["status"]) for r in result["rows"]] == [
        (0, "pgd", "compared"), (1, "fgsm", "missing")]
    assert result["failed"] is True
    assert "an attack, an eps or an audit() call of the baseline is gone" in missing_reason(result["rows"])
    # a test that ran without any audit: every baseline row is missing, the model gone
    result = compare_test(base, [], [parse_gate("robust_accuracy:0.02")])
    assert [r["status"] for r in result["rows"]] == ["missing", "missing"] and result["failed"] is True
    assert "model 'Net' of the baseline is not in this run: if it was renamed" in missing_reason(result["rows"])


def test_compare_rows_counts_missing_apart_from_regressions():
    base = {"audits": [_audit(list(range(60)))]}
    tests = {"t.py::a": {"compare": compare_test(base, [_audit(list(range(20)), model="Seq")], [parse_gate("robust_accuracy:0")])},
             "t.py::b": {"compare": compare_test(base, [_audit(list(range(20)))], [parse_gate("robust_accuracy:0")])}}
    rows, counts = compare_rows(tests)
    assert [r[-1] for r in rows] == ["new", "FAIL missing", "FAIL robust_accuracy:0"]
    assert counts == {"tests": 2, "new": 0, "rows": 2, "failed_rows": 1, "failed_tests": 1, "missing": 1,
                      "missing_tests": 1}
    lines = compare_verdict(counts, gated=True)
    assert lines[:2] == ["1 of 2 rows regressed beyond the gates in 1 test(s)",
                         "1 baseline row(s) missing from 1 test(s) that ran, failing them (a --robust-compare-fail "
                         "gate is given)"]
    assert "reported only" in compare_verdict(counts, gated=False)[1]
    assert compare_verdict({**counts, "missing": 0}, gated=True) == lines[:1]


def test_useful_records_keeps_worst_case_of_several_attacks():
    one = _audit([1])["records"]
    assert [r["attack"] for r in useful_records(one)] == ["pgd"]
    two = one[:1] + [{**one[0], "attack": "fgsm"}] + one[1:]
    assert [r["attack"] for r in useful_records(two)] == ["pgd", "fgsm", "worst-case"]


# ------------------------------------------------------------------------------ settings
def test_profiles_match_the_light_module():
    from robustaudit.evaluate.plan import CHECK_LEVELS as ENGINE_LEVELS

    assert tuple(PROFILES) == pytest_plugin.PROFILE_NAMES
    assert CHECK_LEVELS == pytest_plugin.CHECK_LEVELS == ENGINE_LEVELS
    assert (PROFILES["smoke"].n, PROFILES["smoke"].steps, PROFILES["smoke"].restarts) == (64, 10, 1)
    assert (PROFILES["ci"].n, PROFILES["ci"].steps, PROFILES["ci"].restarts) == (256, 50, 1)
    assert (PROFILES["full"].n, PROFILES["full"].steps, PROFILES["full"].restarts) == (None, 100, 5)
    assert {name: p.checks for name, p in PROFILES.items()} == {"smoke": "off", "ci": "basic", "full": "full"}
    assert PROFILES["ci"].describe() == "ci (n=256, steps=50, restarts=1, checks=basic)"
    assert PROFILES["smoke"].describe("full") == "smoke (n=64, steps=10, restarts=1, checks=full)"


def test_unknown_marker_key_names_the_valid_ones():
    with pytest.raises(UserError) as info:
        validate({"epsilon": 0.1}, where="@pytest.mark.robustness")
    message = str(info.value)
    assert "unknown key 'epsilon'" in message and "did you mean 'eps'" in message
    assert "valid keys: " + ", ".join(MARKER_KEYS) in message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attack": "pgd", "attacks": ["fgsm"]}, "not both"),
        ({"eps": -0.1}, "numbers >= 0"),
        ({"eps": []}, "eps is empty"),
        ({"min_accuracy": 60}, "did you mean 0.6"),
        ({"bound": "upper"}, "'point' or 'lower'"),
        ({"n": 0}, ">= 1 or 'all'"),
        ({"steps": 2.5}, "integer >= 1"),
        ({"norm": "l3"}, "norm must be one of"),
        ({"attacks": [3]}, "an attack is a name"),
        ({"checks": "fulll"}, r"checks must be one of off, basic, full, got 'fulll' \(did you mean 'full'\?\)"),
        ({"checks": True}, "checks must be one of off, basic, full"),
        ({"allow_failed_checks": "yes"}, "allow_failed_checks must be True or False"),
    ],
)
def test_bad_marker_values(kwargs, message):
    with pytest.raises(UserError, match=message):
        validate(kwargs, where="m")


def test_marker_values_are_normalised():
    out = validate({"attack": "pgd", "eps": ["8/255", 0.1], "n": "all", "min_accuracy": 1}, where="m")
    assert out == {"attacks": ("pgd",), "eps": (pytest.approx(8 / 255), 0.1), "n": "all", "min_accuracy": 1.0}


def test_precedence_call_then_marker_then_options_then_profile():
    marker = merge_markers([((), {"eps": 0.3, "n": 32, "bound": "lower"}), ((), {"eps": 0.1, "steps": 7})],
                           where="m")
    options = SessionOptions(profile="full", device="cpu", gate="point")
    s = resolve(options, marker, {"n": "all"})
    assert s.eps == (0.1,)  # the closer marker wins
    assert s.n is None  # the call's "all" beats the marker's 32
    assert (s.steps, s.restarts) == (7, 5)  # marker steps, profile restarts
    assert s.steps_explicit and not s.restarts_explicit
    assert (s.device, s.bound, s.profile) == ("cpu", "lower", "full")
    assert resolve(SessionOptions(profile="smoke"), {}, {}).n == 64


def test_checks_precedence_call_marker_option_profile():
    marker = validate({"checks": "full", "allow_failed_checks": True}, where="m")
    smoke, ci = SessionOptions(profile="smoke"), SessionOptions(profile="ci", checks="off")
    assert resolve(smoke, {}, {}).checks == "off"  # the profile's level
    assert resolve(SessionOptions(profile="full"), {}, {}).checks == "full"
    assert resolve(ci, {}, {}).checks == "off"  # the option (or ini) beats the profile's basic
    assert resolve(ci, marker, {}).checks == "full"  # the marker beats the option
    assert resolve(ci, marker, {"checks": "basic"}).checks == "basic"  # the call beats the marker
    assert resolve(ci, marker, {}).allow_failed_checks is True
    assert resolve(ci, {}, {}).allow_failed_checks is False
    assert resolve(ci, marker, {}).plain()["checks"] == "full"
    with pytest.raises(UserError, match="keyword arguments only"):
        merge_markers([(("pgd",), {})], where="m")


def test_class_map_marker_key():
    """``class_map=`` on the marker or the call: its form checked at setup (no torch), the call's wins, shown in
    the settings only when given; the data's classes are checked when the audit runs."""
    marker = validate({"class_map": "cat=281,dog=207"}, where="m")
    assert marker == {"class_map": (("cat", 281), ("dog", 207))}
    call = validate({"class_map": {"cat": 1, "dog": 2}}, where="c")
    ci = SessionOptions()
    assert resolve(ci, marker, {}).class_map == (("cat", 281), ("dog", 207))
    assert resolve(ci, marker, call).plain()["class_map"] == {"cat": 1, "dog": 2}
    assert "class_map" not in resolve(ci, {}, {}).plain()
    with pytest.raises(UserError, match="m: class_map: the output index of class 'cat' must be an integer >= 0, got -1"):
        validate({"class_map": {"cat": -1}}, where="m")
    with pytest.raises(UserError, match="m: class_map: class 'cat' is given twice"):
        validate({"class_map": "cat=1,cat=2"}, where="m")


# ------------------------------------------------------------------------------ payloads and files
def test_plain_gives_exact_builtin_types():
    """xdist's channel (execnet) refuses subclasses of str/float/int, such as torch's TorchVersion."""
    from robustaudit.plugin.session import plain

    class Version(str):
        pass

    class Score(float):
        pass

    out = plain({"torch": Version("2.15.0"), 3: (Score(0.5), float("nan"), math.inf, True, None), "o": object})
    assert out == {"torch": "2.15.0", "3": [0.5, None, None, True, None], "o": "<class 'object'>"}
    assert type(out["torch"]) is str and type(out["3"][0]) is float


def test_session_json_keeps_id_lists_on_one_line():
    import json

    from robustaudit.plugin.session import dumps_session

    doc = {"tests": {"t.py::t": {"audits": [_audit(list(range(40)))], "outcome": "passed"}}}
    text = dumps_session(doc)
    assert json.loads(text) == doc
    assert '"ids": [' + ", ".join(map(str, range(40))) + "]" in text
    assert len(text.splitlines()) < 80
