"""The verdict of a randomized model over repeated draws (issue 16, "randomness -> EOT with enough samples, and
the spread of the verdict over repeats"): ``EOT(judge=R)`` has the runner draw each sample's prediction R
times, count it robust only if it is correct in every draw, and record the spread in
``provenance["verdict_spread"]``. Run on the corpus's random resize-and-pad and logit-noise models."""

from __future__ import annotations

import pytest
import torch

from robustaudit.attacks.gradient import PGD
from robustaudit.attacks.wrappers import EOT
from robustaudit.data.digits import digits_split
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, run
from robustaudit.models.catalog import create_model

from .obfuscated import CORPUS

N = 32
R = 5


@pytest.mark.parametrize("name", ["random-resize-pad", "logit-noise"])
@pytest.mark.usefixtures("one_thread")
def test_a_randomized_model_is_judged_over_repeated_draws_and_its_spread_recorded(name: str) -> None:
    torch.manual_seed(0)
    model = CORPUS[name](create_model("digits-cnn")).eval()
    result = run([ModelEntry(name, model)], digits_split("test"), [AttackEntry("eot", EOT(PGD(steps=3), k=2, judge=R))],
                 [0.05, 0.1], ids=list(range(N)))
    spreads = result.provenance["verdict_spread"]
    assert [s["eps"] for s in spreads] == [0.05, 0.1]
    for s in spreads:
        assert s["repeats"] == R and s["n"] == N and not s["partial"] and len(s["per_draw"]) == R
        # the figure is the per-sample worst case over the draws
        assert result.robust_accuracy(name, "eot", s["eps"]) == s["robust_every_draw"] / N
        assert len(result.robust_ids[(name, "eot", s["eps"])]) == s["robust_every_draw"]
        assert s["robust_every_draw"] <= s["per_draw_min"] <= s["per_draw_max"] <= s["robust_some_draw"] <= s["attacked"]
        assert sum(s["histogram"]) == s["attacked"] and s["histogram"][R] == s["robust_every_draw"]
        assert s["histogram"][0] == s["attacked"] - s["robust_some_draw"]
    # these models are random enough that single draws disagree: one draw alone would report more
    assert any(s["per_draw_max"] > s["robust_every_draw"] for s in spreads)


def test_a_deterministic_attack_column_records_no_spread() -> None:
    result = run([ModelEntry("m", create_model("digits-cnn"))], digits_split("test"),
                 [AttackEntry("eot", EOT(PGD(steps=3), k=2))], [0.1], ids=list(range(16)))
    assert "verdict_spread" not in result.provenance


def test_the_deterministic_row_quotes_the_spread_of_the_columns_that_answered_it() -> None:
    from types import SimpleNamespace

    from robustaudit.reports.view.checks import check_rows

    spread = [{"model": "m", "attack": a, "eps": 0.1, "repeats": 5, "n": 64, "robust_every_draw": k,
               "per_draw_min": k + 2, "per_draw_max": k + 5} for a, k in (("eot(pgd)", 12), ("eot(fgsm)", 20))]
    checks = [{"id": "deterministic", "model": "m", "status": "fail", "message": "randomized",
               "answered_by": ["eot(fgsm)", "eot(pgd)"]},
              {"id": "loss-gap", "model": "m", "status": "fail", "message": "gap", "answered_by": ["eot(pgd)"]}]
    rows = check_rows(SimpleNamespace(checks=checks, provenance={"verdict_spread": spread}))  # type: ignore[arg-type]
    assert rows[0].message.endswith("verdict over repeated draws (ε=0.1: 12/64 robust in all 5 draws, 14–17 in a "
                                    "single draw)")
    assert rows[1].message.endswith("in the worst case)")  # only the randomness checks quote it
