"""checks/adaptive.py: each failing check maps to the columns that answer it, and answered_by is set from
the columns that ran."""

from __future__ import annotations

from robustaudit.checks.adaptive import (ADAPTIVE, EOT_JUDGE, EOT_K, answered, cheapest_first, passes_per_sample,
                                         plan_adaptive)
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
    assert passes_per_sample(plan.run[1].attack) == EOT_K * 2 * 5
    # judged over repeated draws: robust only if correct in each (the spread goes to the provenance)
    assert all(a.attack.judge_repeats == EOT_JUDGE for a in plan.run)
    atts = attack_entries_from(["pgd:steps=5", "square:queries=100"])
    plan = plan_adaptive([_fail("blackbox-vs-whitebox")], Probe("m"), atts,
                         ["pgd:steps=5", "square:queries=100"])
    assert plan.run == [] and plan.answers == {0: ["square:queries=100"]}


def test_every_mapped_family_exists():
    families = {"margin", "bpda", "square", "eot", "blackbox", "more-steps", "more-restarts"}
    assert {f for fs in ADAPTIVE.values() for f in fs} <= families


def test_adaptive_columns_run_cheapest_first():
    atts = attack_entries_from(["square:queries=100", "pgd:steps=20", "fgsm", "pgd:steps=5"])
    assert [a.name for a in cheapest_first(atts)] == ["fgsm", "pgd:steps=5", "pgd:steps=20", "square:queries=100"]


def test_the_cascade_across_columns_attacks_only_what_stands_and_keeps_the_worst_case():
    """``run(standing=...)``: each column attacks only what the earlier columns (and the caller) left standing;
    the worst case equals the independent columns' on a deterministic model, at fewer passes, and no
    column's figure is above its independent figure."""
    from robustaudit.data.digits import digits_split
    from robustaudit.evaluate.result import WORST_CASE
    from robustaudit.evaluate.runner import ModelEntry, run
    from robustaudit.models.catalog import create_model

    model, data, grid = create_model("digits-cnn"), digits_split("test"), [0.05, 0.1]
    atts = attack_entries_from(["fgsm", "pgd:steps=3", "pgd:steps=3,loss=margin"])
    ids = list(range(40))
    free = run([ModelEntry("m", model)], data, atts, grid, ids=ids)
    standing = {e: set(ids) for e in grid}
    cascade = run([ModelEntry("m", model)], data, atts, grid, ids=ids, standing=standing)
    for e in grid:
        assert cascade.robust_ids[("m", WORST_CASE, e)] == free.robust_ids[("m", WORST_CASE, e)]
        assert standing[e] == set(free.robust_ids[("m", WORST_CASE, e)])  # narrowed in place
        for a in atts:
            assert cascade.robust_accuracy("m", a.name, e) <= free.robust_accuracy("m", a.name, e)
    rows = cascade.records.set_index(["attack", "eps"])
    fgsm_left = set(free.robust_ids[("m", "fgsm", 0.05)])
    assert rows.loc[("pgd:steps=3", 0.05), "n_attacked"] == len(fgsm_left)  # only fgsm's survivors
    spent = {r.records[r.records.attack != WORST_CASE][["forward_passes", "backward_passes"]].to_numpy().sum()
             for r in (free, cascade)}
    assert min(spent) == cascade.records[cascade.records.attack != WORST_CASE][
        ["forward_passes", "backward_passes"]].to_numpy().sum() < max(spent)
    # what the caller says is already broken is never attacked, and counts as broken
    few = {e: set(range(8)) for e in grid}
    only = run([ModelEntry("m", model)], data, atts[:1], grid, ids=ids, standing=few)
    assert set(only.robust_ids[("m", "fgsm", 0.05)]) <= set(range(8))
