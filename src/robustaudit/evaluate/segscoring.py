"""Segmentation's side of the runner: mIoU and pixel accuracy under attack, one independent run per cell.

Segmentation has no per-image yes/no (mIoU is a dataset-level figure from a confusion matrix summed over
every image), so the :class:`~robustaudit.core.task.SegmentationTask` turns the survivor cascade off: every
model × attack × eps cell is an independent run over all audited images, in the runner's batches. Per
cell we keep each image's confusion matrix ``(K, K)`` (``SegmentationTask.statistics``; rows: true class,
ignored pixels count nowhere) and perturbation norms; every figure (dataset mIoU and pixel accuracy, the
per-image ensemble, the 95% bootstrap intervals over images keyed by seed, model, attack and eps) is
aggregated from these per-image outcomes by :func:`robustaudit.evaluate.aggregate.aggregate_segmentation`.

DAG without ``clip`` is unbounded: it runs once per model, outside the eps grid (``ResultMatrix.unbounded``).
Universal attacks (``seg-uap``) are fitted per (model, eps) on the training split; the fit is stored, so a
resumed run reads it back instead of fitting again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from robustaudit.attacks.base import Attack
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import SegmentationTask
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate import segmetrics
from robustaudit.evaluate.aggregate import SegCellOutcome, aggregate_segmentation, unbounded_record
from robustaudit.evaluate.entries import AttackEntry
from robustaudit.evaluate.result import SEG_COLUMNS, ResultMatrix, SegExample
from robustaudit.evaluate.runstate import ModelRun, RunState
from robustaudit.evaluate.samples import check_segmentation_outputs
from robustaudit.evaluate.segmetrics import BOOTSTRAP, pixel_accuracy_of
from robustaudit.evaluate.store import SegBatch, Store


@dataclass
class SegCell:
    """What one model × attack × eps run accumulates, per image in audit order."""

    attack: str
    threat: ThreatModel
    want: int
    cms: list[torch.Tensor] = field(default_factory=list)  # (B, K, K) per batch
    picked: list[tuple[float, SegExample]] = field(default_factory=list)
    hits: int = 0
    total: int = 0
    l2: list[float] = field(default_factory=list)
    linf: list[float] = field(default_factory=list)
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0

    def add(self, b: SegBatch) -> None:
        """Accumulate one batch (computed or read back)."""
        self.cms.append(b.cms)
        self.picked.extend(b.examples)
        self.hits += b.hits
        self.total += b.total
        self.l2 += b.l2
        self.linf += b.linf
        self.seconds += b.seconds
        self.forward += b.forward_passes
        self.backward += b.backward_passes

    def outcome(self, model: str, norm: str) -> SegCellOutcome:
        cms = torch.cat(self.cms) if self.cms else torch.zeros(0, 1, 1, dtype=torch.long)
        return SegCellOutcome(model, self.attack, self.threat.eps, norm, cms, self.l2, self.linf, self.hits,
                              self.total, self.seconds, self.forward, self.backward)


class SegScoring:
    """The per-image confusion matrices of every cell, the clean ones per model, the panels, and the rows
    (:data:`SEG_COLUMNS`) aggregated from them."""

    def __init__(self, task: SegmentationTask, seed: int, resamples: int = BOOTSTRAP) -> None:
        self.task, self.seed, self.resamples = task, seed, resamples
        self.k: dict[str, int] = {}  # per model: its class count
        self.clean_cms: dict[str, torch.Tensor] = {}  # per model: clean cms (n, K, K)
        self.clean_pred: dict[str, dict[int, torch.Tensor]] = {}  # per model and image: (H, W)
        self.outcomes: list[SegCellOutcome] = []
        self.unbounded: list[dict[str, Any]] = []
        self.examples: list[SegExample] = []

    def check(self, logits: torch.Tensor, y: torch.Tensor, data: ImageData, model: str) -> None:
        self.k[model] = check_segmentation_outputs(logits, y, data, model)

    def stored_clean(self, store: Store, model: str, batch: list[int], y: torch.Tensor) -> tuple[str, Any] | None:
        stored = store.seg_batch(model, "", 0.0, batch)
        if stored is None:
            return None
        self.k[model] = int(stored.cms.shape[-1])
        return stored.data_sha256, (stored.cms, stored.clean_pred)

    def clean(self, store: Store | None, model: str, batch: list[int], y: torch.Tensor, logits: torch.Tensor,
              digest: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One clean batch: per-image confusion matrices ``(B, K, K)`` and predictions ``(B, H, W)``, stored."""
        pred = logits.argmax(1)
        cms = self.task.statistics(pred, y.to(pred.device), self.k[model])
        if store is not None:
            store.write_seg_batch(model, "", 0.0, batch, SegBatch(cms=cms, data_sha256=digest or "",
                                                                  clean_pred=pred.cpu()))
        return cms, pred.cpu()

    def clean_done(self, model: str, ids: list[int], records: list[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
        """Every image is attacked (no cascade)."""
        self.clean_cms[model] = torch.cat([cms for cms, _ in records])
        self.clean_pred[model] = dict(zip(ids, torch.cat([p for _, p in records])))
        return list(ids)

    def once(self, a: AttackEntry, norm: str) -> ThreatModel | None:
        """DAG without ``clip`` runs once, unbounded, outside the grid."""
        from robustaudit.attacks.segmentation import is_unbounded

        return ThreatModel("unbounded", math.inf) if is_unbounded(a.attack) else None

    def new_cell(self, ctx: ModelRun, a: AttackEntry, threat: ThreatModel, want: int) -> SegCell:
        return SegCell(a.name, threat, want)

    def stored(self, ctx: ModelRun, attack: str, eps: float, batch: list[int]) -> SegBatch | None:
        return ctx.store.seg_batch(ctx.name, attack, eps, batch)

    def targets(self, ctx: ModelRun, a: AttackEntry, attack: Attack, batch: list[int],
                y: torch.Tensor) -> torch.Tensor | None:
        """The target map ``(B, H, W)`` of a targeted attack (from the clean prediction when the attack says
        so, else from the labels); ignored pixels stay ignored. ``None`` for an untargeted attack (a
        universal attack is targeted once fitted; the unbounded DAG always is)."""
        from robustaudit.attacks.segmentation import is_targeted, is_unbounded

        if not (is_unbounded(a.attack) or is_targeted(attack)):
            return None
        ignore = self.task.ignore_index
        if hasattr(attack, "targets_for_prediction"):
            targets = attack.targets_for_prediction(self._clean_pred(ctx, batch).to(y.device))
        else:
            targets = attack.targets_for(y, self.k[ctx.name], ignore)
        return torch.where(y != ignore, targets, torch.full_like(targets, ignore))

    def _clean_pred(self, ctx: ModelRun, batch: list[int]) -> torch.Tensor:
        return torch.stack([self.clean_pred[ctx.name][i] for i in batch])

    def score(self, ctx: ModelRun, cell: SegCell, batch: list[int], x: torch.Tensor, y: torch.Tensor,
              adv: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor | None) -> SegBatch:
        """One batch ``x, adv (B, C, H, W)``, ``y, preds (B, H, W)`` scored: its per-image outcomes and the
        ``want`` images it hurt most as panels."""
        k, ignore = self.k[ctx.name], self.task.ignore_index
        cms = self.task.statistics(preds, y, k)
        hits, counted = segmetrics.targeted_success(preds, targets, y, ignore) if targets is not None else (0, 0)
        delta = adv - x
        shots: list[tuple[float, SegExample]] = []
        if cell.want > 0:
            clean_pred = self._clean_pred(ctx, batch)
            drop = pixel_accuracy_of(self.task.statistics(clean_pred.to(y.device), y, k)) - pixel_accuracy_of(cms)
            # an image without valid pixels has no pixel accuracy (NaN): never a panel
            for i in [i for i in drop.argsort(descending=True).tolist() if not math.isnan(drop[i])][:cell.want]:
                shots.append((float(drop[i]), SegExample(
                    ctx.name, cell.attack, cell.threat.eps, x[i].cpu().numpy(), adv[i].detach().cpu().numpy(),
                    y[i].cpu().numpy(), clean_pred[i].numpy(), preds[i].cpu().numpy())))
        return SegBatch(cms=cms, l2=lp_norm(delta, "l2").tolist(), linf=lp_norm(delta, "linf").tolist(),
                        hits=int(hits), total=int(counted), examples=shots)

    def write(self, ctx: ModelRun, attack: str, eps: float, batch: list[int], y: torch.Tensor, out: SegBatch) -> None:
        ctx.store.write_seg_batch(ctx.name, attack, eps, batch, out)

    def _panels(self, cell: SegCell) -> None:
        if cell.want > 0:  # the images the attack hurt most, over the whole run
            self.examples.extend(ex for _, ex in sorted(cell.picked, key=lambda p: -p[0])[:cell.want])

    def end_cell(self, ctx: ModelRun, cell: SegCell, attacked: list[int]) -> list[int]:
        self._panels(cell)
        outcome = cell.outcome(ctx.name, ctx.norm)
        # a universal attack's one-off fit (stored or fresh), apart from the cell's attack seconds
        outcome.fit_seconds = ctx.state.artifacts.fit_seconds((ctx.name, cell.attack, cell.threat.eps))
        self.outcomes.append(outcome)
        return attacked

    def end_once(self, ctx: ModelRun, cell: SegCell, attacked: list[int], grid: list[float]) -> None:
        self._panels(cell)
        total = self.clean_cms[ctx.name].sum(0)
        clean = (segmetrics.miou(total), segmetrics.pixel_accuracy(total))
        self.unbounded.append(unbounded_record(cell.outcome(ctx.name, ctx.norm), clean))

    def stored_fit(self, ctx: ModelRun, a: AttackEntry, eps: float) -> tuple[dict[str, Any], Attack] | None:
        """The stored fit of a universal attack, rebuilt (fitting it again would be wasted work)."""
        from robustaudit.attacks.segmentation import FittedUAP

        stored = ctx.store.seg_fit(ctx.name, a.name, eps)  # (fit, xi, static)
        return None if stored is None else (stored[0], FittedUAP(stored[1], a.attack, stored[2]))

    def save_fit(self, ctx: ModelRun, a: AttackEntry, eps: float, fit: dict[str, Any], attack: Attack) -> None:
        from robustaudit.attacks.segmentation import FittedUAP

        if ctx.store is not None and isinstance(attack, FittedUAP):
            ctx.store.write_seg_fit(ctx.name, a.name, eps, fit, attack.xi, attack.static)

    def result(self, state: RunState) -> ResultMatrix:
        """The rows with the per-image ensemble ``worst-case``, ``class_iou``, ``unbounded``, the panels."""
        rows, class_iou = aggregate_segmentation(self.clean_cms, self.outcomes, seed=self.seed, resamples=self.resamples)
        return ResultMatrix(pd.DataFrame(rows, columns=list(SEG_COLUMNS)), task="segmentation", class_iou=class_iou,
                            unbounded=self.unbounded, seg_examples=self.examples)
