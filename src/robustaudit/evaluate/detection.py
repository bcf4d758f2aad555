"""Detectors in the audit: fit, then evaluate under the plain and the detector-aware adaptive attack.

Called by :func:`robustaudit.evaluate.api.execute` after the matrix when detectors are asked for
(``--defense squeeze,metzen``). For every model × detector × attack × eps, over all ``n`` audited
samples:

* AUROC of the detector score, clean test inputs (all ``n``) vs the adversarial inputs that fool the
  classifier; TPR = share of those rejected at the threshold; the clean FPR measured on the test set;
* defended accuracy: an adversarial input counts as defended when it is rejected or still correctly
  classified; a clean input counts as correct only when accepted and correctly classified.

Each under the plain attack (the audit's attack on the classifier alone) and under the adaptive one
(:class:`~robustaudit.defenses.detection.DetectorAwarePGD` on classifier and detector together, per
sample the worst case of its point and the plain attack's: an adaptive adversary may also try the
plain attack). Rows go into the matrix as ``MODEL+DETECTOR`` with columns ``ATTACK`` and
``ATTACK (adaptive)`` (plus their per-sample worst case); the figures go into
``provenance["detection"]`` (``results.json``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustaudit.attacks.base import AttackKind
from robustaudit.core.task import predictions
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.defenses.detection import (
    DetectorAwarePGD,
    describe,
    fit_detector,
    parse_detectors,
)
from robustaudit.evaluate.aggregate import COLUMNS, WORST_CASE, CellOutcome, CleanOutcome, Key, Outcomes, aggregate
from robustaudit.evaluate.passes import PassCounter, split_evenly
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, Progress

ADAPTIVE = " (adaptive)"
#: The attacks a detector column judges: each gives every sample its own point in the eps-ball. Universal
#: ones (one perturbation fitted on training data), minimal-norm, decision-based and transfer attacks are
#: left out of the detector rows, by name, in ``provenance["detection"]["skipped_attacks"]`` and its note.
PER_SAMPLE_KINDS = (AttackKind.FIXED_EPS, AttackKind.SCORE_BASED)
#: Steps of the adaptive attack in an audit: at least the plain PGD's default budget.
ADAPTIVE_STEPS = 50


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of scores, ``P(pos > neg) + 0.5 P(pos == neg)``; NaN when a side is empty."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if not len(neg) or not len(pos):
        return float("nan")
    both = np.concatenate([neg, pos])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks over ties (Mann-Whitney U)
    _, start, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(neg) * len(pos)))


def coverage_note(left_out: Sequence[str], *, none_usable: bool = False) -> str:
    """The line the report and ``provenance["detection"]["note"]`` carry when attacks were left out of the
    detector rows (they cover only the per-sample fixed-eps and score-based attacks)."""
    return ("detector rows cover only the per-sample attacks (fixed-eps, score-based); left out: "
            + ", ".join(left_out) + ("; no detector was fitted and there is no detector row, since none of the "
                                     "audit's attacks is per-sample" if none_usable else ""))


def fit_data_for(data: ImageData, defense_data: str | ImageData | None) -> ImageData:
    """The split detectors are fitted on: ``defense_data`` when given, else the train split of the
    audit's data set (by its registry spec)."""
    from robustaudit.data.registry import train_split_of

    return train_split_of(data, defense_data, flag="--defense-data (defense_data=)", purpose="detectors are fitted")


def evaluate_detection(
    entries: Sequence[ModelEntry],
    data: ImageData,
    ids: Sequence[int],
    attacks: Sequence[AttackEntry],
    grid: Sequence[float],
    *,
    detectors: str | Sequence[str],
    fpr: float,
    defense_data: str | ImageData | None,
    norm: str,
    device: torch.device,
    seed: int,
    batch_size: int,
    progress: Progress | None = None,
    adaptive_steps: int = ADAPTIVE_STEPS,
) -> tuple[pd.DataFrame, dict[tuple[str, str, float], list[int]], dict[str, Any]]:
    """Fit each detector around each model and evaluate it (see the module docstring).

    Returns ``(records, robust_ids, block)``: matrix rows (:data:`COLUMNS`) named ``MODEL+DETECTOR``,
    aggregated from the per-sample outcomes (:func:`~robustaudit.evaluate.aggregate.aggregate`: an
    outcome's "clean-correct" is correct and accepted, its "robust" is defended), the ids defended per
    row, and the ``provenance["detection"]`` block.
    """
    names = parse_detectors(detectors)
    fit_set = fit_data_for(data, defense_data)
    fx, fy = fit_set.load(list(range(len(fit_set))))
    x_all, y_all = data.load(list(ids))
    usable = [a for a in attacks if a.attack.kind in PER_SAMPLE_KINDS]
    left_out = [a.name for a in attacks if a not in usable]
    grid = sorted(float(e) for e in grid)
    if not usable:  # nothing a detector column could judge: no fit, no rows, and the report says why
        return _collected(Outcomes(), [], [], {"fpr": fpr, "detectors": [], "rows": [], "skipped_attacks": left_out,
                                               "note": coverage_note(left_out, none_usable=True)})
    adaptive = DetectorAwarePGD(steps=adaptive_steps)
    outcomes, order, figures, fitted = Outcomes(), [], [], []
    if progress is not None:
        progress.start("detectors", len(entries) * len(names) * len(grid))
    for entry in entries:
        model = entry.module.to(device)
        for name in names:
            det, info = _fit(entry.name, model, name, fit_set, fx, fy, fpr=fpr, eps=grid[len(grid) // 2], norm=norm,
                             seed=seed, batch_size=batch_size)
            fitted.append({**info, "latency": detector_latency(model, det, data.sample_shape,
                                                               min(batch_size, len(ids)), device)})
            judged = _Judged.of(entry.name, name, det, model, x_all.to(device), y_all.to(device), list(ids),
                                batch_size, fpr)
            outcomes.clean.append(CleanOutcome(judged.label, list(ids), judged.ids[judged.clean_ok].tolist()))
            state: dict[str, _Broken] = {}  # per column, the sweep so far: survivors only
            for eps in grid:
                cells = _eps_cells(judged, usable, adaptive, ThreatModel(norm, eps), seed, figures, state)
                outcomes.cells.extend(cells)
                order += [c.key for c in cells] + ([(judged.label, WORST_CASE, eps)] if cells else [])
                if progress is not None:
                    progress.advance(1)
    return _collected(outcomes, order, figures, {
        "fpr": fpr, "adaptive": {"attack": "detector-aware PGD (Carlini & Wagner 2017), BPDA through squeezers; "
                                           "success = misclassified and accepted", **adaptive.settings()},
        "detectors": fitted, "rows": figures, "skipped_attacks": left_out,
        **({"note": coverage_note(left_out)} if left_out else {})})


def _collected(outcomes: Outcomes, order: list[Key], figures: list[dict[str, Any]], block: dict[str, Any]
               ) -> tuple[pd.DataFrame, dict[tuple[str, str, float], list[int]], dict[str, Any]]:
    """:func:`evaluate_detection`'s return: the rows aggregated from ``outcomes`` in ``order``, each figure
    given its row's interval, and ``block``."""
    rows, robust = aggregate(outcomes)
    by_key = {(r["model"], r["attack"], r["eps"]): r for r in rows}
    for f in figures:  # the interval of the defended accuracy is the row's
        f["ci_low"], f["ci_high"] = (by_key[(f["row"], f["column"], f["eps"])][k] for k in ("ci_low", "ci_high"))
    return pd.DataFrame([by_key[k] for k in order], columns=list(COLUMNS)), {k: robust[k] for k in order}, block


def _fit(model_name: str, model: torch.nn.Module, name: str, fit_set: ImageData, fx: torch.Tensor, fy: torch.Tensor,
         *, fpr: float, eps: float, norm: str, seed: int, batch_size: int) -> tuple[Any, dict[str, Any]]:
    """Detector ``name`` fitted around ``model`` on ``fx (N, C, H, W)``, ``fy (N,)``, and what the report
    says about the fit."""
    t0 = time.perf_counter()
    det = fit_detector(name, model, fx, fy, fpr=fpr, eps=eps, norm=norm, seed=seed, batch_size=batch_size,
                       data_name=fit_set.name)
    return det, {"model": model_name, "detector": name, "row": f"{model_name}+{name}", "description": describe(det),
                 "settings": det.settings(), "threshold": det.threshold, "fpr_target": fpr, "fit_data": fit_set.name,
                 "fit_n": len(fx), "seconds": round(time.perf_counter() - t0, 3)}


@dataclass
class _Judged:
    """One model behind one detector on the clean test inputs ``x (n, C, H, W)``, ``y (n,)``."""

    label: str
    model_name: str
    detector: str
    det: Any
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    batch_size: int
    fpr: float
    clean_scores: torch.Tensor
    clean_rejected: torch.Tensor
    clean_ok: torch.Tensor  # correct and accepted

    @classmethod
    def of(cls, model_name: str, detector: str, det: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
           ids: list[int], batch_size: int, fpr: float) -> _Judged:
        scores = det.score(x, batch_size=batch_size).cpu()
        with torch.no_grad():
            correct = torch.cat([predictions(model(x[i:i + batch_size])) == y[i:i + batch_size]
                                 for i in range(0, len(x), batch_size)]).cpu()
        rejected = scores > det.threshold
        return cls(f"{model_name}+{detector}", model_name, detector, det, model, x, y, torch.as_tensor(ids, dtype=torch.int64),
                   batch_size, fpr, scores, rejected, correct & ~rejected)

    def attack(self, attack: Any, target: Any, threat: ThreatModel, seed: int, rows: torch.Tensor) -> torch.Tensor:
        """``attack(target, x[rows], y[rows], threat)`` batch by batch: adversarial inputs ``(len(rows), C, H, W)``.
        Draws are keyed by sample id, so a sample's point does not depend on which others are attacked."""
        b, x, y, ids = self.batch_size, self.x[rows.to(self.x.device)], self.y[rows.to(self.y.device)], self.ids[rows]
        if not len(rows):
            return x
        return torch.cat([attack(target, x[i:i + b], y[i:i + b], threat, ids=ids[i:i + b], seed=seed)
                          for i in range(0, len(x), b)])

    def judged(self, attack: Any, target: Any, threat: ThreatModel, seed: int, before: _Broken | None) -> _Run:
        """The column's state after ``attack`` at ``threat``: samples broken at a smaller eps (``before``) keep
        their point (it lies in the larger ball: survivors only, curves monotone); the rest are attacked.
        ``target`` is the classifier (a plain attack) or the detector (the adaptive one); either way the passes
        through the classifier are counted, the detector's own included (the scoring forward is not)."""
        n = len(self.x)
        state = _Broken.none(n) if before is None else before.copy()
        rows = (~state.broken).nonzero().flatten()
        t0 = time.perf_counter()
        with _counted(self.model, self.det, target) as (counted, counter):
            adv = self.attack(attack, counted, threat, seed, rows)
        wrong, scores = _judge(self.det, self.model, adv, self.y[rows.to(self.y.device)], self.batch_size)
        state.wrong[rows], state.scores[rows] = wrong, scores
        state.broken[rows] = wrong & ~(scores > self.det.threshold)  # misclassified AND accepted
        return _Run(state, self.ids[rows].tolist(), time.perf_counter() - t0, *counter.take())


@dataclass
class _Run:
    """One attack run of a detector column at one eps: the column's state after it, the ids it attacked and
    what it cost (seconds; samples forward and backward through the classifier)."""

    state: _Broken
    attacked: list[int]
    seconds: float
    forward: int
    backward: int


@contextmanager
def _counted(model: torch.nn.Module, det: Any, target: Any) -> Iterator[tuple[Any, PassCounter]]:
    """``(what the attack gets, its counter)``: the classifier wrapped in a :class:`PassCounter`, or the detector
    with its classifier so wrapped for the duration (restored after, whatever happens)."""
    counter = PassCounter(model)
    if target is model:
        yield counter, counter
        return
    held = det.model
    det.model = counter
    try:
        yield target, counter
    finally:
        det.model = held


@dataclass
class _Broken:
    """One detector column at one eps, per sample ``(n,)``: its point misclassified, its score, and broken
    (misclassified and accepted)."""

    wrong: torch.Tensor
    scores: torch.Tensor
    broken: torch.Tensor

    @classmethod
    def none(cls, n: int) -> _Broken:
        return cls(torch.zeros(n, dtype=torch.bool), torch.zeros(n), torch.zeros(n, dtype=torch.bool))

    def copy(self) -> _Broken:
        return _Broken(self.wrong.clone(), self.scores.clone(), self.broken.clone())


def _eps_cells(j: _Judged, usable: Sequence[AttackEntry], adaptive: DetectorAwarePGD, threat: ThreatModel,
               seed: int, figures: list[dict[str, Any]], state: dict[str, _Broken]) -> list[CellOutcome]:
    """The per-sample outcomes of every column at one eps: each usable attack plain and adaptive (per
    sample the adaptive point where it won, else the plain one); their figures appended to ``figures``.

    ``state`` carries each column's outcome from the previous eps and is updated: a sample broken there
    keeps its point, so only survivors are attacked. The adaptive attack runs once per eps on the samples
    that every plain column and the adaptive sweep so far left standing (elsewhere each adaptive column
    is broken already), and stops per sample at its first success (the attack's early stop)."""
    plain: dict[str, _Run] = {}
    for a in usable:
        plain[a.name] = j.judged(a.attack, j.model, threat, seed, state.get(a.name))
        state[a.name] = plain[a.name].state
    before = state.get(ADAPTIVE)
    if before is None:
        before = _Broken.none(len(j.x))
    skip = before.broken | _all_broken(plain, len(j.x))  # adaptive already won, or every plain column broke it
    run = j.judged(adaptive, j.det, threat, seed, _Broken(before.wrong, before.scores, skip))
    won = before.broken | (~skip & run.state.broken)
    state[ADAPTIVE] = _Broken(torch.where(~skip, run.state.wrong, before.wrong),
                              torch.where(~skip, run.state.scores, before.scores), won)
    won_a, scores_a = state[ADAPTIVE].broken, state[ADAPTIVE].scores  # won_a: misclassified and accepted
    # each second and pass is counted once: a plain column holds its attack's run, the adaptive columns share
    # the one adaptive run evenly (the plain point they also take is the plain column's cost), so the worst
    # case, the sum over the columns, is what was spent
    k = len(usable)
    forwards, backwards = split_evenly(run.forward, k), split_evenly(run.backward, k)
    cells: list[CellOutcome] = []
    for i, a in enumerate(usable):
        p = plain[a.name]
        for col, wrong, scores, broken, cost, is_adaptive in (
                (a.name, p.state.wrong, p.state.scores, p.state.broken,
                 (p.attacked, p.seconds, p.forward, p.backward), False),
                (a.name + ADAPTIVE, p.state.wrong | won_a, torch.where(won_a, scores_a, p.state.scores),
                 p.state.broken | won_a, (run.attacked, run.seconds / k, forwards[i], backwards[i]), True)):
            defended = ~broken
            cells.append(CellOutcome(j.label, col, threat.eps, threat.norm, attacked=list(cost[0]),
                                     robust=j.ids[defended].tolist(), seconds=round(cost[1], 3), forward=cost[2],
                                     backward=cost[3]))
            figures.append(_figure(j, a.name, col, is_adaptive, threat, wrong, scores, defended))
    return cells


def _all_broken(plain: dict[str, _Run], n: int) -> torch.Tensor:
    """``(n,)`` bool: broken in every plain column."""
    out = torch.ones(n, dtype=torch.bool)
    for p in plain.values():
        out &= p.state.broken
    return out


def _figure(j: _Judged, attack: str, column: str, is_adaptive: bool, threat: ThreatModel, wrong: torch.Tensor,
            scores: torch.Tensor, defended: torch.Tensor) -> dict[str, Any]:
    """One row of the detection block: the detector's figures for one column at one eps (``ci_low`` and
    ``ci_high`` are filled from the aggregated row)."""
    fooled = wrong  # the adversarial points that fool the classifier: what must be caught
    n = len(j.x)
    return {
        "model": j.model_name, "detector": j.detector, "row": j.label, "attack": attack,
        "adaptive": is_adaptive, "column": column, "eps": float(threat.eps), "norm": threat.norm, "n": n,
        "threshold": j.det.threshold, "fpr_target": j.fpr, "fpr_clean": float(j.clean_rejected.float().mean()),
        "n_clean_rejected": int(j.clean_rejected.sum()),
        "auroc": auroc(j.clean_scores.numpy(), scores[fooled].numpy()), "n_adversarial": int(fooled.sum()),
        "tpr": float((scores[fooled] > j.det.threshold).float().mean()) if fooled.any() else None,
        "defended_accuracy": float(defended.float().mean()), "n_defended": int(defended.sum()),
        "ci_low": None, "ci_high": None, "undefended_accuracy": float((~wrong).float().mean()),
        "clean_defended_accuracy": float(j.clean_ok.float().mean()),
    }


class _Defended(torch.nn.Module):
    """What a deployment runs: the classifier's logits and the detector's score of the same batch."""

    def __init__(self, model: torch.nn.Module, det: Any) -> None:
        super().__init__()
        self.model, self.det = model, det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.det.score(x, batch_size=len(x))
        return logits


def detector_latency(model: torch.nn.Module, det: Any, sample_shape: Sequence[int], batch_size: int,
                     device: torch.device) -> dict[str, Any]:
    """Median seconds per batch of the bare model and of model + detector score (same batch, same
    device, warm-up excluded), and the latency the detector adds."""
    from robustaudit.evaluate.cost import measure_latency

    bare = measure_latency(model, sample_shape, batch_size, device)
    defended = measure_latency(_Defended(model, det), sample_shape, batch_size, device)
    added = defended["median_seconds_per_batch"] - bare["median_seconds_per_batch"]
    return {"batch_size": batch_size, "bare_seconds_per_batch": bare["median_seconds_per_batch"],
            "defended_seconds_per_batch": defended["median_seconds_per_batch"], "added_seconds_per_batch": added}


def _judge(det, model, adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(misclassified (N,) bool, scores (N,))`` of adversarial inputs, on CPU."""
    if not len(adv):  # every sample already broken (or none left to attack): torch.cat refuses an empty list
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0)
    with torch.no_grad():
        wrong = torch.cat([predictions(model(adv[i:i + batch_size])) != y[i:i + batch_size]
                           for i in range(0, len(adv), batch_size)]).cpu()
    return wrong, det.score(adv, batch_size=batch_size).cpu()
