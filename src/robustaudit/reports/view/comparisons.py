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


def _ties_at(result: ResultMatrix, eps: float, alpha: float) -> list[Tie]:
    ids = result.robust_ids

    def key(model: str, attack: str) -> tuple[str, str, float] | None:
        return next((k for k in ids if k[0] == model and k[1] == attack and math.isclose(k[2], eps)), None)

    out: list[Tie] = []
    heads = []
    for model in result.models:
        attacks = [a for a in result.attacks if key(model, a) is not None]
        head = key(model, WORST_CASE) or (key(model, attacks[0]) if len(attacks) == 1 else None)
        if head is not None:
            heads.append((model, head))
        for i, a in enumerate(attacks):
            for b in attacks[i + 1:]:
                ka, kb = key(model, a), key(model, b)
                p = paired_p_value(set(ids[ka]), set(ids[kb]))
                if p >= alpha:
                    out.append(Tie(eps, f"{model} / {ka[1]}", f"{model} / {kb[1]}", p, _n_of(result, model)))
    for i, (ma, ka) in enumerate(heads):
        for mb, kb in heads[i + 1:]:
            if _n_of(result, ma) != _n_of(result, mb):
                continue
            p = paired_p_value(set(ids[ka]), set(ids[kb]))
            if p >= alpha:
                out.append(Tie(eps, ma, mb, p, _n_of(result, ma)))
    return out


def ties(result: ResultMatrix, *, alpha: float = TIE_ALPHA) -> list[Tie]:
    """Pairs of rows measured on the same samples whose robust accuracies do not differ significantly.

    Compared: every pair of models on their worst case (or their single attack) at each eps, and every
    pair of attacks of one model at each eps. Uses the per-sample robust ids (exact McNemar test), so
    results saved without them yield nothing.
    """
    if not result.robust_ids:
        return []
    return [t for eps in result.eps_values for t in _ties_at(result, eps, alpha)]


def ties_section(result: ResultMatrix) -> Section:
    """``## Differences within noise``: the test used, then the pairs it cannot tell apart (notes)."""
    found = ties(result)
    paragraph = ("Every figure is measured on the same samples, so rows are compared per sample (exact McNemar "
                 f"test, two-sided, α={TIE_ALPHA:g}).")
    if not found:
        paragraph += " Every pair of models, and every pair of attacks on one model, differs significantly."
        return Section(TIES_TITLE, paragraph=paragraph)
    return Section(TIES_TITLE, paragraph=paragraph + " These pairs cannot be told apart at this n:",
                   notes=tuple(t.sentence() for t in found))


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
