"""Rows compared per sample: pairs whose robust accuracies the sample cannot tell apart (ties), and the
smallest adversarial perturbation found by minimal-norm attacks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustaudit.evaluate.metrics import paired_p_value
from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view.blocks import Section, Table
from robustaudit.reports.view.numbers import format_eps
from robustaudit.reports.view.overview import norm_label

#: Two rows differ when a paired two-sided test rejects "no difference" at this level.
TIE_ALPHA = 0.05
TIES_TITLE = "Differences within noise"
#: A cell of the per-eps table names its pairs when there are at most this many.
NAMED_PAIRS = 3
NORM_NOTE = ("Minimal-norm attacks search for the smallest adversarial perturbation of each clean-correct "
             "sample: one run gives the whole robustness curve. A sample where none was found counts as "
             "larger than any ε.")
NORM_HEADERS = ("model", "attack", "found", "median norm", "25%–75%")


@dataclass(frozen=True)
class Tie:
    """Two rows at one eps whose robust accuracies the sample cannot tell apart."""

    eps: float
    first: str
    second: str
    p_value: float
    n: int

    def sentence(self) -> str:
        return (f"{self.first} and {self.second} at ε={format_eps(self.eps)} cannot be told apart at n={self.n} "
                f"(paired exact test, p={self.p_value:.2g})")


def _n_of(result: ResultMatrix, model: str) -> int:
    rows = result.records[result.records["model"] == model]
    return int(rows["n"].iloc[0]) if not rows.empty else 0


@dataclass(frozen=True)
class Comparison:
    """Two rows at one eps compared per sample: ``models`` is True for two models' worst cases, False for
    two attacks on one model."""

    tie: Tie
    models: bool

    @property
    def within_noise(self) -> bool:
        return self.tie.p_value >= TIE_ALPHA


def _comparisons_at(result: ResultMatrix, eps: float) -> list[Comparison]:
    ids = result.robust_ids

    def key(model: str, attack: str) -> tuple[str, str, float] | None:
        return next((k for k in ids if k[0] == model and k[1] == attack and math.isclose(k[2], eps)), None)

    def compare(ka: tuple[str, str, float], kb: tuple[str, str, float], first: str, second: str, n: int) -> Tie:
        return Tie(eps, first, second, paired_p_value(set(ids[ka]), set(ids[kb])), n)

    out: list[Comparison] = []
    heads = []
    for model in result.models:
        attacks = [a for a in result.attacks if key(model, a) is not None]
        head = key(model, WORST_CASE) or (key(model, attacks[0]) if len(attacks) == 1 else None)
        if head is not None:
            heads.append((model, head))
        for i, a in enumerate(attacks):
            for b in attacks[i + 1:]:
                ka, kb = key(model, a), key(model, b)
                out.append(Comparison(compare(ka, kb, f"{model} / {ka[1]}", f"{model} / {kb[1]}", _n_of(result, model)),
                                      models=False))
    for i, (ma, ka) in enumerate(heads):
        for mb, kb in heads[i + 1:]:
            if _n_of(result, ma) == _n_of(result, mb):
                out.append(Comparison(compare(ka, kb, ma, mb, _n_of(result, ma)), models=True))
    return out


def comparisons(result: ResultMatrix) -> list[Comparison]:
    """Every per-sample comparison the report makes, eps by eps: every pair of models on their worst case
    (or their single attack), and every pair of attacks of one model. Uses the per-sample robust ids (exact
    McNemar test), so results saved without them yield nothing."""
    if not result.robust_ids:
        return []
    return [c for eps in result.eps_values for c in _comparisons_at(result, eps)]


def ties(result: ResultMatrix, *, alpha: float = TIE_ALPHA) -> list[Tie]:
    """Pairs of rows measured on the same samples whose robust accuracies do not differ significantly
    (p >= ``alpha``), in the order of :func:`comparisons`."""
    return [c.tie for c in comparisons(result) if c.tie.p_value >= alpha]


def _pairs_cell(found: list[Comparison], named: bool) -> str:
    """``"2 of 28"``, with the pairs named (``a ≈ b``) when there are at most :data:`NAMED_PAIRS`."""
    tied = [c.tie for c in found if c.within_noise]
    if not found:
        return "—"
    text = f"{len(tied)} of {len(found)}"
    if named and 0 < len(tied) <= NAMED_PAIRS:
        text += ": " + ", ".join(f"{t.first} ≈ {t.second}" for t in tied)
    return text


def ties_table(result: ResultMatrix) -> Table:
    """Per eps: how many model pairs and how many attack pairs (on one model) the sample cannot tell apart;
    the pairs are named where they are few."""
    found = comparisons(result)
    rows = []
    for eps in result.eps_values:
        here = [c for c in found if math.isclose(c.tie.eps, eps)]
        rows.append((format_eps(eps), _pairs_cell([c for c in here if c.models], True),
                     _pairs_cell([c for c in here if not c.models], True)))
    return Table(("ε", "model pairs within noise", "attack pairs (one model) within noise"), tuple(rows),
                 text_columns=3, title=TIES_TITLE)


def ties_section(result: ResultMatrix) -> Section:
    """``## Differences within noise``: the test used, then per eps the pairs it cannot tell apart."""
    paragraph = ("Every figure is measured on the same samples, so rows are compared per sample (exact McNemar "
                 f"test, two-sided, α={TIE_ALPHA:g}): models on their {WORST_CASE}, and the attacks of each model.")
    found = comparisons(result)
    if not found:
        return Section(TIES_TITLE, paragraph=paragraph + " No per-sample outcomes were stored, so nothing is compared.")
    if not any(c.within_noise for c in found):
        return Section(TIES_TITLE, paragraph=paragraph + " Every pair compared differs significantly.")
    return Section(TIES_TITLE, paragraph=paragraph + " A pair within noise cannot be told apart at this n.",
                   table=ties_table(result))


def _norm_text(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "> budget"


def norms_section(result: ResultMatrix) -> Section | None:
    """The smallest-adversarial-norm table: model, attack, found/attacked, median, quartiles (None when
    no minimal-norm attack ran)."""
    if not result.minimal_norms:
        return None
    rows = tuple((str(r.model), str(r.attack), f"{r.found}/{r.n}", _norm_text(r.median),
                  f"{_norm_text(r.q25)} – {_norm_text(r.q75)}") for r in result.norm_summary().itertuples(index=False))
    title = f"Smallest adversarial perturbation ({norm_label(result)})"
    table = Table(NORM_HEADERS, rows, title=f"Smallest adversarial perturbation — {norm_label(result)}")
    return Section(title, paragraph=NORM_NOTE, table=table)
