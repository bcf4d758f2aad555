"""Whether each model's headline can be trusted, as every renderer shows it.

A model whose sanity checks left a ``fail`` unanswered (``result.reliability``, computed by
:mod:`robustaudit.evaluate.reliability`) has its headline shown as an upper bound:
``≤ 89.0 (upper bound: loss-gap failed)``. An audit whose checks were off says that its figures were not
checked, without marking them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustaudit.evaluate.reliability import reasons_text
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.matrix import summary_eps, summary_rows
from robustaudit.reports.view.numbers import DASH, format_eps, format_percent, format_upper_bound

#: What an upper bound means; each rendering follows it with its own reference to the "Upper bounds" section of
#: docs/checks.md (an anchor inside the report, or the checkout's file on a terminal)
UPPER_BOUND_MEANING = ("A failing sanity check that no adaptive attack answered: the attacks probably underestimate "
                       "these models, so their worst case is only an upper bound")
NOT_CHECKED = ("The figures were not checked (--checks off): a failing sanity check would have marked them as "
               "upper bounds; run with --checks basic or full.")


@dataclass(frozen=True)
class ModelReliability:
    """One model's headline: its worst case at the summary ε (``figure``, in %), and whether it holds."""

    model: str
    reliable: bool
    reasons: tuple[str, ...]  # "loss-gap failed", ...
    figure: str  # "89.0", or — when the model has no figure at that ε

    @property
    def display(self) -> str:
        """``"89.0"``, or ``"≤ 89.0 (upper bound: loss-gap failed)"`` for an unreliable model."""
        if self.reliable:
            return self.figure
        return f"{format_upper_bound(self.figure)} ({reasons_text(self.reasons)})"


@dataclass(frozen=True)
class ReliabilityView:
    """Every model's :class:`ModelReliability`, the ε its figure is at, and whether checks ran at all."""

    models: tuple[ModelReliability, ...]
    eps: str
    checked: bool  # False: --checks off (nothing marked, but the reports say so)

    @property
    def unreliable(self) -> tuple[ModelReliability, ...]:
        return tuple(m for m in self.models if not m.reliable)

    @property
    def note(self) -> str | None:
        """The sentence a report shows when checks were off, else None."""
        return None if self.checked else NOT_CHECKED

    def lines(self) -> list[str]:
        """One line per unreliable model: ``"digits-cnn at ε=0.1: ≤ 89.0 (upper bound: loss-gap failed)"``."""
        return [f"{m.model} at ε={self.eps}: {m.display}" for m in self.unreliable]


def reliability_view(result: ResultMatrix) -> ReliabilityView:
    """Each model's headline (worst case at the summary ε) and reliability, from ``result.reliability``."""
    eps = summary_eps(result)
    reliability = result.reliability
    models = []
    for row in summary_rows(result, eps):
        r = reliability.get(row.model, {"reliable": True, "reasons": []})
        accuracy = row.adversarial.accuracy if row.adversarial is not None else math.nan
        models.append(ModelReliability(row.model, bool(r["reliable"]), tuple(r["reasons"]),
                                       format_percent(accuracy) if math.isfinite(accuracy) else DASH))
    level = (result.provenance.get("checks") or {}).get("level") if isinstance(result.provenance, dict) else None
    checked = bool(result.checks) if level is None else level != "off"
    return ReliabilityView(tuple(models), format_eps(eps), checked)
