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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustaudit.attacks.base import AttackKind
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.defenses.detection import (
    DetectorAwarePGD,
    describe,
    fit_detector,
    parse_detectors,
)
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.result import COLUMNS, WORST_CASE
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, Progress

ADAPTIVE = " (adaptive)"
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
    the ids defended per row, and the ``provenance["detection"]`` block.
    """
    names = parse_detectors(detectors)
    fit_set = fit_data_for(data, defense_data)
    fx, fy = fit_set.load(list(range(len(fit_set))))
    x_all, y_all = data.load(list(ids))
    id_t = torch.as_tensor(list(ids), dtype=torch.int64)
    usable = [a for a in attacks if a.attack.kind in (AttackKind.FIXED_EPS, AttackKind.SCORE_BASED)]
    skipped = [a.name for a in attacks if a not in usable]
    grid = sorted(float(e) for e in grid)
    mid_eps = grid[len(grid) // 2]
    adaptive = DetectorAwarePGD(steps=adaptive_steps)
    rows: list[dict[str, Any]] = []
    robust: dict[tuple[str, str, float], list[int]] = {}
    figures: list[dict[str, Any]] = []
    fitted: list[dict[str, Any]] = []
    if progress is not None:
        progress.start("detectors", len(entries) * len(names) * len(grid))
    for entry in entries:
        model = entry.module.to(device)
        for name in names:
            t0 = time.perf_counter()
            det = fit_detector(name, model, fx, fy, fpr=fpr, eps=mid_eps, norm=norm, seed=seed,
                               batch_size=batch_size, data_name=fit_set.name)
            fit_seconds = time.perf_counter() - t0
            label = f"{entry.name}+{name}"
            fitted.append({"model": entry.name, "detector": name, "row": label, "description": describe(det),
                           "settings": det.settings(), "threshold": det.threshold, "fpr_target": fpr,
                           "fit_data": fit_set.name, "fit_n": len(fx), "seconds": round(fit_seconds, 3),
                           "latency": detector_latency(model, det, data.sample_shape, min(batch_size, len(ids)),
                                                       device)})
            x, y = x_all.to(device), y_all.to(device)
            clean_scores = det.score(x, batch_size=batch_size).cpu()
            with torch.no_grad():
                clean_correct = torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                                           for i in range(0, len(x), batch_size)]).cpu()
            clean_rejected = clean_scores > det.threshold
            clean_ok = clean_correct & ~clean_rejected
            n = len(x)
            for eps in grid:
                threat = ThreatModel(norm, eps)
                t_eps = time.perf_counter()
                adv_a = torch.cat([adaptive(det, x[i:i + batch_size], y[i:i + batch_size], threat,
                                            ids=id_t[i:i + batch_size], seed=seed)
                                   for i in range(0, n, batch_size)])
                wrong_a, scores_a = _judge(det, model, adv_a, y, batch_size)
                t_adaptive = time.perf_counter() - t_eps
                columns: list[tuple[str, torch.Tensor]] = []
                for a in usable:
                    t_a = time.perf_counter()
                    adv_p = torch.cat([a.attack(model, x[i:i + batch_size], y[i:i + batch_size], threat,
                                                ids=id_t[i:i + batch_size], seed=seed)
                                       for i in range(0, n, batch_size)])
                    wrong_p, scores_p = _judge(det, model, adv_p, y, batch_size)
                    seconds_p = time.perf_counter() - t_a
                    broken_p = wrong_p & ~(scores_p > det.threshold)  # misclassified AND accepted
                    # the adaptive adversary keeps its own point where it succeeded, else the plain one
                    won_a = wrong_a & ~(scores_a > det.threshold)
                    wrong_k, scores_k = wrong_p | won_a, torch.where(won_a, scores_a, scores_p)
                    for col, wrong, scores, broken, secs, is_adaptive in (
                            (a.name, wrong_p, scores_p, broken_p, seconds_p, False),
                            (a.name + ADAPTIVE, wrong_k, scores_k, broken_p | won_a, seconds_p + t_adaptive, True)):
                        fooled = wrong  # the adversarial points that fool the classifier: what must be caught
                        defended = ~broken
                        rows.append(_record(label, col, eps, norm, n, clean_ok, defended, secs))
                        robust[(label, col, eps)] = id_t[defended].tolist()
                        figures.append({
                            "model": entry.name, "detector": name, "row": label, "attack": a.name,
                            "adaptive": is_adaptive, "column": col, "eps": eps, "norm": norm, "n": n,
                            "threshold": det.threshold, "fpr_target": fpr,
                            "fpr_clean": float(clean_rejected.float().mean()),
                            "n_clean_rejected": int(clean_rejected.sum()),
                            "auroc": auroc(clean_scores.numpy(), scores[fooled].numpy()),
                            "n_adversarial": int(fooled.sum()),
                            "tpr": float((scores[fooled] > det.threshold).float().mean()) if fooled.any() else None,
                            "defended_accuracy": float(defended.float().mean()),
                            "n_defended": int(defended.sum()),
                            "ci_low": wilson_interval(int(defended.sum()), n)[0],
                            "ci_high": wilson_interval(int(defended.sum()), n)[1],
                            "undefended_accuracy": float((~wrong).float().mean()),
                            "clean_defended_accuracy": float(clean_ok.float().mean()),
                        })
                        columns.append((col, defended))
                if columns:  # per-sample worst case over this row's columns
                    worst = torch.stack([d for _, d in columns]).all(0)
                    rows.append(_record(label, WORST_CASE, eps, norm, n, clean_ok, worst,
                                        float(sum(r["seconds"] for r in rows[-len(columns):]))))
                    robust[(label, WORST_CASE, eps)] = id_t[worst].tolist()
                if progress is not None:
                    progress.advance(1)
    block = {"fpr": fpr, "adaptive": {"attack": "detector-aware PGD (Carlini & Wagner 2017), BPDA through "
                                                "squeezers; success = misclassified and accepted",
                                      **adaptive.settings()},
             "detectors": fitted, "rows": figures, "skipped_attacks": skipped}
    return pd.DataFrame(rows, columns=list(COLUMNS)), robust, block


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
    with torch.no_grad():
        wrong = torch.cat([model(adv[i:i + batch_size]).argmax(1) != y[i:i + batch_size]
                           for i in range(0, len(adv), batch_size)]).cpu()
    return wrong, det.score(adv, batch_size=batch_size).cpu()


def _record(model: str, attack: str, eps: float, norm: str, n: int, clean_ok: torch.Tensor, defended: torch.Tensor,
            seconds: float) -> dict[str, Any]:
    k = int(defended.sum())
    lo, hi = wilson_interval(k, n)
    nan = float("nan")
    return {"model": model, "attack": attack, "eps": float(eps), "norm": norm, "n": n,
            "n_clean_correct": int(clean_ok.sum()), "n_robust": k,
            "clean_accuracy": float(clean_ok.float().mean()) if n else nan,
            "robust_accuracy": k / n if n else nan, "ci_low": lo, "ci_high": hi, "seconds": round(seconds, 3),
            "n_attacked": n, "forward_passes": nan, "backward_passes": nan,
            "forward_passes_per_attacked_sample": nan, "backward_passes_per_attacked_sample": nan}
