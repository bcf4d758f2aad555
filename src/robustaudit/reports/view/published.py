"""Our figures beside the ones a catalog publishes: for each audited RobustBench model, its published clean
and AutoAttack accuracy next to our clean accuracy and our worst case at RobustBench's eps, the difference
and whether their figure lies within our 95% interval. Present only when such a model is audited."""

from __future__ import annotations

import math
from typing import Any

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Section, Table
from robustaudit.reports.view.matrix import Cell, format_cell, summary_rows
from robustaudit.reports.view.numbers import DASH, as_float, format_eps, format_upper_bound

PUBLISHED_TITLE = "Published figures (RobustBench)"
PUBLISHED_HEADERS = ("model", "dataset / threat", "ε", "their clean %", "our clean %", "their AutoAttack %",
                     "our worst case %", "Δ robust (ours − theirs)", "theirs within our interval")
#: RobustBench's threat -> our norm name
_NORMS = {"Linf": "linf", "L2": "l2"}


def _ours(result: ResultMatrix, model: str, eps: float, norm: str | None) -> tuple[Cell | None, Cell | None, bool]:
    """Our clean cell, worst-case cell at ``eps`` (None when the audit did not reach that eps and norm), and
    whether our figures are only an upper bound (a failed sanity check)."""
    rows = [r for r in summary_rows(result, eps) if r.model == model]
    if not rows:
        return None, None, False
    audited = set(result.records.loc[result.records["model"] == model, "norm"].astype(str))
    adversarial = rows[0].adversarial if norm in audited else None
    return rows[0].clean, adversarial, rows[0].upper_bound


def _within(theirs: float, cell: Cell | None) -> str:
    if cell is None or not (math.isfinite(cell.low) and math.isfinite(cell.high)) or not math.isfinite(theirs):
        return DASH
    return "yes" if cell.low <= theirs / 100 <= cell.high else "no"


def _row(result: ResultMatrix, name: str, card: dict[str, Any]) -> tuple[str, ...]:
    pub = card["published"]
    threat, eps = str(card.get("threat")), as_float(card.get("published_eps"))
    clean_theirs, robust_theirs = as_float(pub.get("clean_acc")), as_float(pub.get("robust_acc"))
    clean, worst, upper = _ours(result, name, eps, _NORMS.get(threat)) if math.isfinite(eps) else (None, None, False)
    if worst is not None and math.isfinite(worst.accuracy) and math.isfinite(robust_theirs):
        delta = f"{100 * worst.accuracy - robust_theirs:+.1f}"
    else:
        delta = DASH
    pct = (lambda x: f"{x:.2f}" if math.isfinite(x) else DASH)
    return (name, f"{card.get('dataset')} / {threat}", format_eps(eps) if math.isfinite(eps) else DASH,
            pct(clean_theirs), format_cell(clean), pct(robust_theirs),
            format_upper_bound(format_cell(worst), upper and worst is not None), delta,
            _within(robust_theirs, worst))


def published_section(result: ResultMatrix) -> Section | None:
    """The comparison table, or None when no audited model carries RobustBench's published figures."""
    from robustaudit.reports.view.overview import model_cards

    cards = {n: c for n, c in model_cards(result).items()
             if c.get("robustbench_model") and isinstance(c.get("published"), dict)}
    if not cards:
        return None
    rows = tuple(_row(result, name, card) for name, card in cards.items())
    source = next(iter(cards.values()))["published"].get("source", "RobustBench's model_info")
    note = ("Theirs: RobustBench's published clean and AutoAttack accuracy (full test set); ours: this audit's "
            "clean accuracy and per-sample worst case over our attacks at their ε, with 95% Wilson intervals. "
            "Their AutoAttack figure below our interval means our attacks are weaker than AutoAttack here (or the "
            f"weights or data differ); ≤: our figure is an upper bound (a sanity check failed); — where this audit did "
            f"not run their ε and norm. Source: {source}.")
    table = Table(PUBLISHED_HEADERS, rows, text_columns=2, title=PUBLISHED_TITLE, caption=(note,))
    return Section(PUBLISHED_TITLE, table=table, after=note)
