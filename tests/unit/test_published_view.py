"""The report's "Published figures" section: RobustBench's clean and AutoAttack accuracy beside ours."""

from __future__ import annotations

import pandas as pd

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports import render_markdown
from robustaudit.reports.view.published import published_section

EPS = 8 / 255


def _result(eps: float, norm: str = "linf", card: bool = True) -> ResultMatrix:
    rows = []
    for attack, robust, low, high in (("pgd", 0.62, 0.55, 0.68), (WORST_CASE, 0.58, 0.51, 0.65)):
        rows.append({"model": "robustbench:Carmon2019Unlabeled", "attack": attack, "eps": eps, "norm": norm, "n": 200,
                     "n_clean_correct": 180, "n_robust": int(robust * 200), "clean_accuracy": 0.9,
                     "robust_accuracy": robust, "ci_low": low, "ci_high": high, "seconds": 1.0})
    models = [{"name": "robustbench:Carmon2019Unlabeled", "source": "robustbench", "dataset": "cifar10",
               "threat": "Linf", "robustbench_model": "Carmon2019Unlabeled", "published_eps": EPS,
               "published": {"clean_acc": 89.69, "robust_acc": 59.53, "source": "model_info at commit X"}}]
    provenance = {"threat": {"norm": norm, "eps": [eps]}, "models": models if card else [{"name": models[0]["name"]}]}
    return ResultMatrix(pd.DataFrame(rows), provenance)


def test_theirs_beside_our_worst_case_at_their_eps():
    section = published_section(_result(EPS))
    (row,) = section.table.rows
    # their clean, our clean [Wilson 180/200], their AA, our worst case [interval], ours - theirs, within
    assert row[:4] == ("robustbench:Carmon2019Unlabeled", "cifar10 / Linf", "8/255", "89.69")
    assert row[4].startswith("90.0 [") and row[5] == "59.53" and row[6] == "58.0 [51.0–65.0]"
    assert row[7] == "-1.5" and row[8] == "yes"
    assert "| robustbench:Carmon2019Unlabeled | cifar10 / Linf | 8/255 | 89.69 |" in render_markdown(_result(EPS))


def test_their_figure_outside_our_interval_and_eps_or_norm_not_audited():
    outside = _result(EPS)
    outside.records.loc[outside.records["attack"] == WORST_CASE, ["robust_accuracy", "ci_low", "ci_high"]] = [0.7, 0.63, 0.76]
    assert published_section(outside).table.rows[0][6:] == ("70.0 [63.0–76.0]", "+10.5", "no")
    for result in (_result(0.1), _result(EPS, norm="l2")):  # not their eps, not their norm: no worst case
        assert published_section(result).table.rows[0][6:] == ("—", "—", "—")


def test_no_section_without_a_robustbench_card():
    assert published_section(_result(EPS, card=False)) is None
    assert "Published figures" not in render_markdown(_result(EPS, card=False))


def test_an_unreliable_worst_case_is_marked_as_an_upper_bound():
    result = _result(EPS)
    result.checks.append({"id": "loss-gap", "status": "fail", "model": "robustbench:Carmon2019Unlabeled"})
    assert published_section(result).table.rows[0][6] == "≤ 58.0 [51.0–65.0]"
