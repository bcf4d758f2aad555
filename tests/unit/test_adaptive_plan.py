"""checks/adaptive.py: each failing check maps to the columns that answer it, and answered_by is set from
the columns that ran."""

from __future__ import annotations

from robustaudit.checks.adaptive import ADAPTIVE, answered, passes_per_sample, plan_adaptive
from robustaudit.checks.probes import Probe
from robustaudit.checks.verdict import Verdict
from robustaudit.evaluate.api import attack_entries_from

ATTACKS = attack_entries_from(["fgsm", "pgd:steps=5"])


def _fail(vid: str) -> Verdict:
    return Verdict(vid, "m", "fail", "x", {"attack": "pgd:steps=5"})


def test_loss_gap_gets_a_margin_column_and_is_answered_by_it():
    plan = plan_adaptive([_fail("loss-gap"), Verdict("step-reach", "m", "pass", "ok")], Probe("m"),
                         ATTACKS, ["fgsm", "pgd:steps=5"])
    assert [a.name for a in plan.run] == ["pgd:steps=5,loss=margin"]
    assert plan.run[0].attack.settings()["loss"] == "margin" and plan.run[0].attack.settings()["steps"] == 5
    out = answered([_fail("loss-gap")], plan, {"pgd:steps=5,loss=margin"})
    assert out[0].answered_by == ("pgd:steps=5,loss=margin",)
    assert out[0].to_dict()["answered_by"] == ["pgd:steps=5,loss=margin"]
    assert "answered_by" not in answered([_fail("loss-gap")], plan, set())[0].to_dict()  # not run: unanswered


def test_dead_gradients_get_bpda_with_a_preprocess_module_and_square_always():
    probe = Probe("m", dead_gradients=True)
    shaped = Probe("m", dead_gradients=True, bpda_identity=True)
    with_pre = plan_adaptive([_fail("input-gradients")], shaped, ATTACKS, ["fgsm", "pgd:steps=5"])
    assert [a.name for a in with_pre.run] == ["bpda(pgd:steps=5,loss=margin)", "bpda(fgsm)", "bpda(pgd:steps=5)",
                                              "square"]
    without = plan_adaptive([_fail("input-gradients")], probe, ATTACKS, ["fgsm", "pgd:steps=5"])
    assert [a.name for a in without.run] == ["square"]
    assert passes_per_sample(without.run[0].attack) == 5000


def test_randomness_gets_eot_and_a_present_blackbox_column_answers_without_running():
    probe = Probe("m", randomized=True)
    plan = plan_adaptive([_fail("deterministic")], probe, ATTACKS, ["fgsm", "pgd:steps=5"])
    assert [a.name for a in plan.run] == ["eot(fgsm)", "eot(pgd:steps=5)"]
    assert passes_per_sample(plan.run[1].attack) == 10 * 2 * 5
    atts = attack_entries_from(["pgd:steps=5", "square:queries=100"])
    plan = plan_adaptive([_fail("blackbox-vs-whitebox")], Probe("m"), atts,
                         ["pgd:steps=5", "square:queries=100"])
    assert plan.run == [] and plan.answers == {0: ["square:queries=100"]}


def test_every_mapped_family_exists():
    families = {"margin", "bpda", "square", "eot", "blackbox", "more-steps", "more-restarts"}
    assert {f for fs in ADAPTIVE.values() for f in fs} <= families
