"""Every figure of a classification audit from its per-sample outcomes: the one place they are computed.

The runner, the detectors and the checks' extra columns record *outcomes*: per model, which sample ids
were audited and which of them the model gets right on clean data; per model × attack × eps (a *cell*),
which ids the attack attacked, which survived, each attacked sample's perturbation norm, and what the
cell cost (seconds, forward / backward passes). :func:`aggregate` turns outcomes into the matrix rows
(:data:`~robustaudit.evaluate.result.COLUMNS`): counts, accuracies, 95% Wilson intervals, and the
per-sample worst case over the attacks of each model and eps. It is pure: the same outcomes give the
same rows, so a merge of shards is the concatenation of their outcomes (:meth:`Outcomes.concat`)
followed by :func:`aggregate`, and adding columns is appending outcomes and aggregating again.

Example::

    >>> o = Outcomes([CleanOutcome("m", [0, 1, 2, 3], [0, 1, 2])],
    ...              [CellOutcome("m", "pgd", 0.1, "linf", attacked=[0, 1, 2], robust=[0])])
    >>> rows, robust_ids = aggregate(o)
    >>> rows[0]["robust_accuracy"], rows[1]["attack"], robust_ids[("m", "worst-case", 0.1)]
    (0.25, 'worst-case', [0])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from robustaudit.core.rng import stream_key
from robustaudit.evaluate import segmetrics
from robustaudit.evaluate.metrics import wilson_interval

#: The pseudo-attack of the per-sample worst case over a model's attacks (also in ``result.WORST_CASE``).
WORST_CASE = "worst-case"

#: Columns of a matrix row, one per model × attack × eps (``result.COLUMNS`` is this tuple). The cost
#: columns (after ``seconds``, added without a schema change: older files read them as missing) say what
#: the cell spent: ``n_attacked`` samples (survivors of the previous eps; for the worst case, samples at
#: least one attack attacked), the forward / backward passes the attacks pushed through the model (in
#: samples: a batch of B counts B), and the same per attacked sample (NaN when none was attacked).
#: ``fit_seconds``: the one-off fit of a universal attack (patch, ATN, AdvGAN, ...) fitted for this cell,
#: 0 for the others; not part of ``seconds`` (the attack applied), so the two add up to the cell's time.
#: Every seconds figure is counted once: a worst-case row's are the sums of its columns', not more.
COLUMNS: tuple[str, ...] = (
    "model", "attack", "eps", "norm", "n", "n_clean_correct", "n_robust", "clean_accuracy", "robust_accuracy",
    "ci_low", "ci_high", "seconds", "n_attacked", "forward_passes", "backward_passes",
    "forward_passes_per_attacked_sample", "backward_passes_per_attacked_sample", "fit_seconds",
)

#: A cell's key: ``(model, attack, eps)``.
Key = tuple[str, str, float]


@dataclass
class CleanOutcome:
    """One model on clean data: the audited sample ids and the ids it gets right (for a detector row,
    right *and* accepted)."""

    model: str
    ids: list[int]
    correct: list[int]


@dataclass
class CellOutcome:
    """One model × attack × eps: per-sample outcomes and what the cell cost.

    ``attacked``: the ids the attack ran on (the survivors of the previous eps for a fixed-eps sweep);
    ``None`` when not counted. ``robust``: the ids still right after the attack. ``norms``: per attacked
    sample, the norm of its perturbation (a minimal-norm attack: its smallest adversarial norm, ``inf``
    where none was found). ``forward`` / ``backward``: passes spent, ``None`` when not counted.
    ``fit_seconds``: what fitting the universal attack this cell applied cost (0 for other attacks), apart
    from ``seconds``.
    """

    model: str
    attack: str
    eps: float
    norm: str
    attacked: list[int] | None
    robust: list[int]
    seconds: float = 0.0
    forward: int | None = None
    backward: int | None = None
    norms: dict[int, float] = field(default_factory=dict)
    fit_seconds: float = 0.0

    @property
    def key(self) -> Key:
        return (self.model, self.attack, float(self.eps))


@dataclass
class Outcomes:
    """The per-sample outcomes of an audit: clean outcomes per model and cells, both in run order."""

    clean: list[CleanOutcome] = field(default_factory=list)
    cells: list[CellOutcome] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: Sequence[Outcomes]) -> Outcomes:
        """The outcomes of disjoint shards of the samples as one: per model and per cell, ids united and
        costs summed (a count missing on any shard is missing); order: first appearance."""
        clean: dict[str, CleanOutcome] = {}
        for c in (c for p in parts for c in p.clean):
            have = clean.setdefault(c.model, CleanOutcome(c.model, [], []))
            have.ids.extend(c.ids)
            have.correct.extend(c.correct)
        cells: dict[Key, CellOutcome] = {}
        for c in (c for p in parts for c in p.cells):
            have = cells.get(c.key)
            cells[c.key] = replace(c, attacked=None if c.attacked is None else list(c.attacked),
                                   robust=list(c.robust), norms=dict(c.norms)) if have is None else _join(have, c)
        return cls(list(clean.values()), list(cells.values()))

    def without(self, dropped: Iterable[tuple[str, str]]) -> Outcomes:
        """These outcomes less the cells of the ``(model, attack)`` columns in ``dropped``."""
        drop = set(dropped)
        return Outcomes(list(self.clean), [c for c in self.cells if (c.model, c.attack) not in drop])


def _join(a: CellOutcome, b: CellOutcome) -> CellOutcome:
    """Two shards' outcomes of one cell as one (``a`` is extended in place and returned)."""
    a.attacked = None if a.attacked is None or b.attacked is None else a.attacked + list(b.attacked)
    a.robust.extend(b.robust)
    a.norms.update(b.norms)
    a.seconds += b.seconds
    a.fit_seconds += b.fit_seconds  # each process fits its own copy: both fits were spent
    a.forward = _add(a.forward, b.forward)
    a.backward = _add(a.backward, b.backward)
    return a


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def interval(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of ``successes`` out of ``n`` (``(0, 1)`` when ``n == 0``)."""
    return wilson_interval(successes, n)


def record(model: str, attack: str, eps: float, norm: str, n: int, n_clean: int, n_robust: int, seconds: float,
           n_attacked: int | None = None, forward: int | None = None, backward: int | None = None,
           fit_seconds: float = 0.0) -> dict[str, Any]:
    """One matrix row (:data:`COLUMNS`) from a cell's counts; a count left ``None`` is missing (NaN)."""
    lo, hi = interval(n_robust, n)
    nan = float("nan")

    def per(passes: int | None) -> float:
        return passes / n_attacked if passes is not None and n_attacked else nan

    return dict(zip(COLUMNS, (
        model, attack, float(eps), norm, n, n_clean, n_robust, n_clean / n if n else nan, n_robust / n if n else nan,
        lo, hi, float(seconds), nan if n_attacked is None else int(n_attacked), nan if forward is None else int(forward),
        nan if backward is None else int(backward), per(forward), per(backward), float(fit_seconds))))


def worst_case(cells: Sequence[CellOutcome]) -> CellOutcome:
    """The per-sample worst case of the attack columns ``cells`` (one model, one eps): a sample is robust
    when it survived every column; it was attacked when any column attacked it; the cost is the sum of the
    columns' (seconds, fit seconds and passes: each counted once)."""
    first = cells[0]
    robust = set(first.robust).intersection(*(c.robust for c in cells[1:]))
    attacked: set[int] | None = set()
    forward: int | None = 0
    backward: int | None = 0
    for c in cells:
        attacked = None if attacked is None or c.attacked is None else attacked | set(c.attacked)
        forward, backward = _add(forward, c.forward), _add(backward, c.backward)
    return CellOutcome(first.model, WORST_CASE, first.eps, first.norm, None if attacked is None else sorted(attacked),
                       sorted(robust), sum(c.seconds for c in cells), forward, backward,
                       fit_seconds=sum(c.fit_seconds for c in cells))


def aggregate(outcomes: Outcomes) -> tuple[list[dict[str, Any]], dict[Key, list[int]]]:
    """The matrix rows and the robust ids per cell, from per-sample outcomes.

    Rows, per model in the order of ``outcomes.clean``: its cells in their order, then one
    :data:`WORST_CASE` row per eps (ascending), the per-sample worst case over the model's cells at that
    eps. ``robust_ids`` maps every row's ``(model, attack, eps)`` to its sorted robust ids, in row order.
    Outcomes must hold each model's clean outcome once and each cell once (see :meth:`Outcomes.concat`).
    """
    rows: list[dict[str, Any]] = []
    robust_ids: dict[Key, list[int]] = {}
    for clean in outcomes.clean:
        n, n_clean = len(clean.ids), len(clean.correct)
        mine = [c for c in outcomes.cells if c.model == clean.model and c.attack != WORST_CASE]
        by_eps: dict[float, list[CellOutcome]] = {}
        for c in mine:
            by_eps.setdefault(float(c.eps), []).append(c)
        for c in mine + [worst_case(by_eps[e]) for e in sorted(by_eps)]:
            robust = sorted(c.robust)
            rows.append(record(c.model, c.attack, c.eps, c.norm, n, n_clean, len(robust), c.seconds,
                               None if c.attacked is None else len(c.attacked), c.forward, c.backward,
                               c.fit_seconds))
            robust_ids[c.key] = robust
    return rows, robust_ids


# ---------------------------------------------------------------------------------------------- segmentation
@dataclass
class SegCellOutcome:
    """One segmentation model × attack × eps: per image (audit order) its confusion matrix ``cms (n, K, K)``
    (rows: true class; ignored pixels count nowhere) and perturbation norms; the target pixels reached and
    counted (targeted attacks); what the cell cost."""

    model: str
    attack: str
    eps: float
    norm: str
    cms: torch.Tensor
    l2: list[float] = field(default_factory=list)
    linf: list[float] = field(default_factory=list)
    hits: int = 0
    total: int = 0
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0
    fit_seconds: float = 0.0  # a universal attack's one-off fit, apart from ``seconds``


def seg_worst_case(cells: Sequence[SegCellOutcome]) -> SegCellOutcome:
    """The per-image ensemble of ``cells`` (one model, one eps): each image's outcome under the attack
    that left it the lowest pixel accuracy (an image without valid pixels contributes nothing whichever
    is taken); the cost is the sum; no norms, no targeted figure."""
    stack = torch.stack([c.cms for c in cells])  # (A, n, K, K)
    accuracy = segmetrics.pixel_accuracy_of(stack).nan_to_num(nan=math.inf)  # (A, n)
    chosen = stack[accuracy.argmin(0), torch.arange(stack.shape[1])]
    first = cells[0]
    return SegCellOutcome(first.model, WORST_CASE, first.eps, first.norm, chosen,
                          seconds=sum(c.seconds for c in cells), forward=sum(c.forward for c in cells),
                          backward=sum(c.backward for c in cells), fit_seconds=sum(c.fit_seconds for c in cells))


def aggregate_segmentation(clean: Mapping[str, torch.Tensor], cells: Sequence[SegCellOutcome], *, seed: int,
                           resamples: int) -> tuple[list[dict[str, Any]], dict[Key, list[float | None]]]:
    """The rows (:data:`~robustaudit.evaluate.result.SEG_COLUMNS`) and per-class IoU of a segmentation
    audit from per-image outcomes: ``clean`` maps each model to its clean ``cms (n, K, K)``.

    mIoU and pixel accuracy come from the dataset-level confusion matrix (the sum over images); the
    intervals are 95% percentile bootstrap intervals over images keyed by (seed, model, attack, eps). Per
    model (in the order of ``clean``): its cells, then the per-image ensemble :data:`WORST_CASE` per eps.
    ``class_iou`` holds ``(model, "clean", 0.0)`` first, then every row's key.
    """
    rows: list[dict[str, Any]] = []
    class_iou: dict[Key, list[float | None]] = {}
    for model, clean_cms in clean.items():
        total = clean_cms.sum(0)
        clean_figures = (segmetrics.miou(total), segmetrics.pixel_accuracy(total))
        class_iou[(model, "clean", 0.0)] = segmetrics.class_iou(total)
        mine = [c for c in cells if c.model == model]
        by_eps: dict[float, list[SegCellOutcome]] = {}
        for c in mine:
            by_eps.setdefault(float(c.eps), []).append(c)
        for c in mine + [seg_worst_case(by_eps[e]) for e in sorted(by_eps)]:
            key = stream_key(seed, "bootstrap", model, c.attack, c.eps)
            rows.append(seg_record(c, len(clean_cms), clean_figures, key, resamples))
            class_iou[(model, c.attack, float(c.eps))] = segmetrics.class_iou(c.cms.sum(0))
    return rows, class_iou


def seg_record(c: SegCellOutcome, n: int, clean: tuple[float, float], key: int, resamples: int) -> dict[str, Any]:
    """One segmentation row from a cell's per-image outcomes; ``clean``: the model's (mIoU, pixel accuracy)."""
    total = c.cms.sum(0)
    ci = segmetrics.bootstrap_interval(c.cms, key, resamples)
    nan = math.nan
    return {"model": c.model, "attack": c.attack, "eps": float(c.eps), "norm": c.norm, "n": n,
            "clean_miou": clean[0], "miou": segmetrics.miou(total), "miou_ci_low": ci["miou"][0],
            "miou_ci_high": ci["miou"][1], "clean_pixel_accuracy": clean[1],
            "pixel_accuracy": segmetrics.pixel_accuracy(total), "pa_ci_low": ci["pa"][0], "pa_ci_high": ci["pa"][1],
            "targeted_success": c.hits / c.total if c.total and c.attack != WORST_CASE else nan,
            "median_l2": float(np.median(c.l2)) if c.l2 else nan,
            "median_linf": float(np.median(c.linf)) if c.linf else nan, "seconds": float(c.seconds),
            "n_attacked": n, "forward_passes": int(c.forward), "backward_passes": int(c.backward),
            "fit_seconds": float(c.fit_seconds)}


def unbounded_record(c: SegCellOutcome, clean: tuple[float, float]) -> dict[str, Any]:
    """The row of an attack run once outside the eps grid (unbounded DAG): dataset mIoU and pixel accuracy,
    targeted success, the median and quartiles of the per-image L2 and Linf norms, cost, per-class IoU."""
    total = c.cms.sum(0)

    def q(v: list[float], p: float) -> float:
        return float(np.quantile(v, p)) if v else math.nan

    return {"model": c.model, "attack": c.attack, "n": len(c.l2), "clean_miou": clean[0],
            "miou": segmetrics.miou(total), "clean_pixel_accuracy": clean[1],
            "pixel_accuracy": segmetrics.pixel_accuracy(total),
            "targeted_success": c.hits / c.total if c.total else math.nan,
            "median_l2": q(c.l2, 0.5), "q25_l2": q(c.l2, 0.25), "q75_l2": q(c.l2, 0.75),
            "median_linf": q(c.linf, 0.5), "q25_linf": q(c.linf, 0.25), "q75_linf": q(c.linf, 0.75),
            "seconds": round(c.seconds, 3), "forward_passes": c.forward, "backward_passes": c.backward,
            "class_iou": segmetrics.class_iou(total)}
