"""aggregate(): every figure of the matrix from hand-written per-sample outcomes, checked by hand."""

from __future__ import annotations

import math

import pytest

from robustaudit.evaluate.aggregate import WORST_CASE, CellOutcome, CleanOutcome, Outcomes, aggregate

#: 10 samples, 8 right on clean data; attack "a" sweeps eps on survivors, "b" attacks every clean-correct
#: sample at every eps (a minimal-norm column)
CORRECT = list(range(8))
A1 = CellOutcome("m", "a", 0.1, "linf", attacked=CORRECT, robust=[0, 1, 2, 3, 4, 5], seconds=1.0, forward=8,
                 backward=8, norms={i: 0.1 for i in CORRECT})
A2 = CellOutcome("m", "a", 0.2, "linf", attacked=[0, 1, 2, 3, 4, 5], robust=[0, 1, 2], seconds=0.5, forward=6,
                 backward=6)
B1 = CellOutcome("m", "b", 0.1, "linf", attacked=CORRECT, robust=[0, 1, 2, 3, 6, 7], seconds=2.0, forward=10,
                 backward=20)
B2 = CellOutcome("m", "b", 0.2, "linf", attacked=CORRECT, robust=[1, 2, 7], seconds=2.0, forward=10, backward=20)


def _outcomes() -> Outcomes:
    return Outcomes([CleanOutcome("m", list(range(10)), CORRECT)], [A1, A2, B1, B2])


def test_rows_counts_intervals_and_worst_case_by_hand():
    rows, robust = aggregate(_outcomes())
    assert [(r["attack"], r["eps"]) for r in rows] == [("a", 0.1), ("a", 0.2), ("b", 0.1), ("b", 0.2),
                                                        (WORST_CASE, 0.1), (WORST_CASE, 0.2)]
    assert all(r["n"] == 10 and r["n_clean_correct"] == 8 and r["clean_accuracy"] == 0.8 for r in rows)
    assert [r["n_robust"] for r in rows] == [6, 3, 6, 3, 4, 2]
    assert [r["robust_accuracy"] for r in rows] == [0.6, 0.3, 0.6, 0.3, 0.4, 0.2]
    worst1, worst2 = rows[4], rows[5]
    # 4 of 10: the 95% Wilson interval, computed by hand
    assert (worst1["ci_low"], worst1["ci_high"]) == pytest.approx((0.168180, 0.687326), abs=1e-6)
    # per sample, not the minimum of the columns: 0..5 ∩ {0,1,2,3,6,7} = 0..3
    assert robust[("m", WORST_CASE, 0.1)] == [0, 1, 2, 3]
    assert robust[("m", WORST_CASE, 0.2)] == [1, 2]
    # the worst case attacked every sample a column attacked, and cost what its columns cost
    assert (worst1["n_attacked"], worst2["n_attacked"]) == (8, 8)
    assert (worst1["forward_passes"], worst1["backward_passes"], worst1["seconds"]) == (18, 28, 3.0)
    assert (worst2["forward_passes"], worst2["backward_passes"], worst2["seconds"]) == (16, 26, 2.5)
    assert worst1["forward_passes_per_attacked_sample"] == 18 / 8
    assert rows[1]["n_attacked"] == 6 and rows[1]["backward_passes_per_attacked_sample"] == 1.0
    assert list(robust) == [(r["model"], r["attack"], r["eps"]) for r in rows]


def test_edges_zero_samples_and_missing_counts():
    clean = CleanOutcome("m", [], [])
    cell = CellOutcome("m", "a", 0.1, "linf", attacked=None, robust=[])
    rows, _ = aggregate(Outcomes([clean], [cell]))
    row = rows[0]
    assert math.isnan(row["clean_accuracy"]) and math.isnan(row["robust_accuracy"])
    assert (row["ci_low"], row["ci_high"]) == (0.0, 1.0)
    assert math.isnan(row["n_attacked"]) and math.isnan(row["forward_passes"])
    assert math.isnan(rows[1]["n_attacked"]) and math.isnan(rows[1]["forward_passes_per_attacked_sample"])
    # all robust and all attacked: the interval closes at 1 exactly
    full = aggregate(Outcomes([CleanOutcome("m", [0, 1], [0, 1])],
                              [CellOutcome("m", "a", 0.1, "linf", [0, 1], [0, 1], forward=2, backward=2)]))[0]
    assert (full[0]["robust_accuracy"], full[0]["ci_high"]) == (1.0, 1.0)


def test_concatenated_shards_aggregate_to_the_whole():
    def shard(keep):
        ids = [i for i in range(10) if keep(i)]

        def cut(c: CellOutcome, f: int) -> CellOutcome:
            return CellOutcome(c.model, c.attack, c.eps, c.norm, [i for i in c.attacked if keep(i)],
                               [i for i in c.robust if keep(i)], c.seconds / 2, f, f,
                               {i: v for i, v in c.norms.items() if keep(i)})

        return Outcomes([CleanOutcome("m", ids, [i for i in CORRECT if keep(i)])],
                        [cut(A1, 4), cut(A2, 3), cut(B1, 5), cut(B2, 5)])

    parts = [shard(lambda i: i % 2 == 0), shard(lambda i: i % 2 == 1)]
    merged = Outcomes.concat(parts)
    rows, robust = aggregate(merged)
    want_rows, want_robust = aggregate(Outcomes([CleanOutcome("m", list(range(10)), CORRECT)], [
        CellOutcome(c.model, c.attack, c.eps, c.norm, c.attacked, c.robust, c.seconds, f, f) for c, f in
        ((A1, 8), (A2, 6), (B1, 10), (B2, 10))]))
    assert rows == want_rows and robust == want_robust
    assert merged.cells[0].norms == A1.norms
    # the shards are not changed by the concatenation
    assert parts[0].cells[0].robust == [0, 2, 4]
    # a count missing on one shard is missing in the whole
    parts[1].cells[0].forward = None
    assert math.isnan(aggregate(Outcomes.concat(parts))[0][0]["forward_passes"])


def test_without_drops_a_column_from_the_worst_case():
    rows, robust = aggregate(_outcomes().without([("m", "b")]))
    assert [r["attack"] for r in rows] == ["a", "a", WORST_CASE, WORST_CASE]
    assert robust[("m", WORST_CASE, 0.2)] == [0, 1, 2]
    assert rows[3]["n_attacked"] == 6


def test_add_columns_aggregates_again_and_keeps_the_row_order():
    from robustaudit.evaluate.result import ResultMatrix

    clean = CleanOutcome("m", list(range(10)), CORRECT)
    result = ResultMatrix.from_outcomes(Outcomes([clean], [A1, A2]))
    assert result.robust_ids[("m", WORST_CASE, 0.2)] == [0, 1, 2]
    more = ResultMatrix.from_outcomes(Outcomes([clean], [B1, B2]))
    result.add_columns(more)
    keys = list(zip(result.records["attack"], result.records["eps"]))
    assert keys == [("a", 0.1), ("a", 0.2), (WORST_CASE, 0.1), (WORST_CASE, 0.2), ("b", 0.1), ("b", 0.2)]
    assert list(result.robust_ids) == [("m", a, e) for a, e in keys]
    rows, _ = aggregate(_outcomes())  # the same figures as one run of both attacks
    worst = result.records[result.records["attack"] == WORST_CASE].to_dict(orient="records")
    assert worst == [r for r in rows if r["attack"] == WORST_CASE]
    assert result.clean_interval("m") == pytest.approx((0.8, 0.4901624, 0.9433178), abs=1e-6)
