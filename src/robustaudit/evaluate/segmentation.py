"""The segmentation evaluator: mIoU and pixel accuracy under attack, one independent run per cell.

Classification's runner attacks survivors of the previous eps (a per-sample yes/no that is monotone by
construction). Segmentation has no per-image yes/no — mIoU is a dataset-level figure from a confusion
matrix summed over every image — so here every model × attack × eps cell is an independent run over all
audited images, in batches, with no survivor cascade and no early exit. Per cell we keep each image's
confusion matrix ``(K, K)`` (rows: true class, columns: predicted; ignored pixels count nowhere), which
gives the dataset figures (their sum), the per-image pixel accuracy (the ensemble picks the worst attack
per image) and the bootstrap intervals (images resampled, their matrices re-summed).

Intervals: 95% percentile bootstrap over images (1000 resamples, keyed by seed, model, attack and eps),
for mIoU and pixel accuracy alike. Pixels of one image are not independent, so a Wilson interval over
pixels would be far too narrow; a Wilson interval over images would need a per-image yes/no that mIoU
does not have. The image is the unit that was sampled, so it is the unit resampled.

DAG without ``clip`` is unbounded: it runs once per model, outside the eps grid; its row (mIoU, pixel
accuracy, targeted success, median / quartile L2 and Linf norms per image) goes to
``ResultMatrix.unbounded``. Universal attacks are fitted per (model, eps) on the training split.

Stored batch by batch (``evaluate/store.py``: ``seg_batches``): every clean or attacked batch is written
as soon as it is computed (its per-image confusion matrices, norms, counts, cost and panel examples), so
a crash loses at most one batch; a resumed run (``reuse``) reads each batch back by its exact ids instead
of recomputing it, and fits a universal attack only when a batch of its cell is missing. The bootstrap
is keyed, so a resumed run's numbers equal the uninterrupted run's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustaudit.attacks.base import Attack, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.rng import stream_key
from robustaudit.core.task import IGNORE_INDEX, SegmentationTask
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate import segmetrics
from robustaudit.evaluate.cost import PassCounter
from robustaudit.evaluate.result import (
    SEG_COLUMNS,
    WORST_CASE,
    ResultMatrix,
    SegExample,
)
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, Progress, sort_eps
from robustaudit.evaluate.store import SegBatch, Store, tensors_sha256
from robustaudit.models.wrappers import raised_by_model

#: Bootstrap resamples of the 95% intervals.
BOOTSTRAP = 1000


# ---------------------------------------------------------------------------------------------- metrics
def image_confusion(pred: torch.Tensor, y: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """One confusion matrix per image: ``pred, y (N, H, W) -> (N, K, K)`` int64, rows the true class.

    Pixels labelled ``ignore_index`` count nowhere; a prediction outside ``[0, K)`` never happens (argmax).
    """
    n = y.shape[0]
    valid = y != ignore_index
    img = torch.arange(n, device=y.device).view(-1, 1, 1).expand_as(y)
    k = num_classes
    flat = (img * k * k + y.clamp(0, k - 1) * k + pred.clamp(0, k - 1))[valid]
    return torch.bincount(flat, minlength=n * k * k).view(n, k, k).cpu()


def _iou_table(cm: torch.Tensor) -> torch.Tensor:
    """``(..., K, K) -> (..., K)`` IoU per class, NaN where the class is in neither labels nor predictions."""
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def miou_of(cm: torch.Tensor) -> torch.Tensor:
    """Mean IoU over the classes present in the labels or the predictions. ``(..., K, K) -> (...)``."""
    return _iou_table(cm).nanmean(-1)


def pixel_accuracy_of(cm: torch.Tensor) -> torch.Tensor:
    """Correct valid pixels over valid pixels (1 where there are none). ``(..., K, K) -> (...)``."""
    cm = cm.double()
    total = cm.sum((-1, -2))
    return torch.where(total > 0, cm.diagonal(dim1=-2, dim2=-1).sum(-1) / total.clamp_min(1), torch.ones_like(total))


def class_iou_of(cm: torch.Tensor) -> list[float | None]:
    """Per-class IoU of one ``(K, K)`` matrix; ``None`` for a class in neither labels nor predictions."""
    return segmetrics.class_iou(cm)


def bootstrap_interval(cms: torch.Tensor, key: int, resamples: int = BOOTSTRAP) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of mIoU and pixel accuracy, resampling images. ``cms (n, K, K)``."""
    n, k, _ = cms.shape
    if n == 0:
        return {"miou": (math.nan, math.nan), "pa": (math.nan, math.nan)}
    g = torch.Generator().manual_seed(key & 0x7FFFFFFFFFFFFFFF)
    idx = torch.randint(n, (resamples, n), generator=g)
    weights = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(resamples, n,
                                                                                               dtype=torch.float64))
    summed = (weights @ cms.reshape(n, -1).double()).view(resamples, k, k)
    out = {}
    for name, values in (("miou", miou_of(summed)), ("pa", pixel_accuracy_of(summed))):
        v = values.numpy()
        out[name] = (float(np.nanquantile(v, 0.025)), float(np.nanquantile(v, 0.975)))
    return out


# ---------------------------------------------------------------------------------------------- checks
def check_segmentation_outputs(logits: Any, y: torch.Tensor, data: ImageData, model: str) -> int:
    """Refuse a model whose outputs are not per-pixel logits ``(N, K, H, W)`` matching the masks;
    returns ``K``."""
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"model '{model}' returned {type(logits).__name__}, expected a logits tensor")
    if logits.dim() == 2:
        raise UserError(f"model '{model}' returns one score vector per image {tuple(logits.shape)} but data "
                        f"'{data.name}' is a segmentation set (a class per pixel): use a segmentation model, or "
                        "classification data")
    if logits.dim() != 4 or tuple(logits.shape[2:]) != tuple(y.shape[1:]):
        raise UserError(f"model '{model}' returned shape {tuple(logits.shape)}; a segmentation model must return "
                        f"logits (N, K, H, W) at the masks' size {tuple(y.shape[1:])}")
    k = int(logits.shape[1])
    if k < data.num_classes:
        raise UserError(f"model '{model}' has {k} output classes but data '{data.name}' has {data.num_classes} "
                        f"(labels 0..{data.num_classes - 1})")
    if not torch.isfinite(logits).all():
        raise UserError(f"model '{model}' returned NaN or infinite logits on clean data")
    return k


# ---------------------------------------------------------------------------------------------- run
@dataclass
class _Cell:
    """What one model × attack × eps run accumulates, per image in audit order."""

    cms: list[torch.Tensor] = field(default_factory=list)  # (B, K, K) per batch
    hits: int = 0
    total: int = 0
    l2: list[float] = field(default_factory=list)
    linf: list[float] = field(default_factory=list)
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0

    def matrix(self) -> torch.Tensor:
        return torch.cat(self.cms) if self.cms else torch.zeros(0, 1, 1, dtype=torch.long)


@dataclass
class _Stash:
    """The run's store (or none), whether stored batches are read back, and how many were reused or
    computed (``provenance["resume"]``)."""

    store: Store | None = None
    reuse: bool = False
    reused: int = 0
    computed: int = 0

    def get(self, model: str, attack: str, eps: float, ids: list[int]) -> SegBatch | None:
        if self.store is None or not self.reuse:
            return None
        return self.store.seg_batch(model, attack, eps, ids)

    def put(self, model: str, attack: str, eps: float, ids: list[int], batch: SegBatch) -> None:
        self.computed += 1
        if self.store is not None:
            self.store.write_seg_batch(model, attack, eps, ids, batch)

    def complete(self, model: str, attack: str, eps: float, batches: list[list[int]]) -> bool:
        """Whether every batch of a cell is stored (then a universal attack need not be fitted)."""
        return all(self.get(model, attack, eps, b) is not None for b in batches)


def run_segmentation(
    models: Sequence[ModelEntry],
    data: ImageData,
    attacks: Sequence[AttackEntry],
    eps: Sequence[float],
    *,
    norm: str = "linf",
    ids: Sequence[int] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Progress | None = None,
    train_data: ImageData | None = None,
    example_eps: float | None = None,
    examples_per_cell: int = 2,
    resamples: int = BOOTSTRAP,
    store: Store | None = None,
    reuse: bool = False,
) -> ResultMatrix:
    """Evaluate every segmentation model clean and under every attack at every eps (independent runs).

    Args:
        models: the rows; each module maps ``(N, C, H, W)`` in [0, 1] to logits ``(N, K, H, W)``.
        data: a segmentation data set: masks ``(N, H, W)`` int64, ``data.ignore_index`` (255) ignored.
        attacks: the columns (segmentation attacks, ``attacks.get(name, task="segmentation")``).
        eps: the radii, in pixel units of ``norm``.
        train_data: what universal attacks (``seg-uap``) are fitted on, once per model and eps.
        store: where each batch is written as soon as it is computed (``None``: nowhere).
        reuse: read batches stored in ``store`` back (by exact ids) instead of computing them; a clean
            batch whose data hash differs from the stored one is refused.
    Returns:
        A :class:`ResultMatrix` with ``task="segmentation"``, records :data:`SEG_COLUMNS` (one row per
        model × attack × eps plus the per-image ensemble ``worst-case``), ``class_iou``, ``unbounded``
        (DAG without clip) and ``seg_examples``; ``provenance`` left for the caller, except
        ``provenance["fits"]`` (seconds of each universal fit) and ``provenance["fitted"]`` (the fitted
        attacks, objects, for the caller to save) and, given a store, ``provenance["resume"]``
        (``reused_batches``, ``computed_batches``).
    """
    from robustaudit.attacks.segmentation import FittedUAP, is_targeted, is_unbounded

    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if not models:
        raise UserError("no model to audit")
    if not attacks:
        raise UserError("no attack to run")
    universal = [a.name for a in attacks if isinstance(a.attack, UniversalAttack)]
    if universal and train_data is None:
        raise UserError(f"attack '{universal[0]}' is fitted on training data: give a data set with a train split")
    grid = sort_eps(eps)
    ThreatModel(norm, grid[0])
    ignore = data.ignore_index if getattr(data, "ignore_index", None) is not None else IGNORE_INDEX
    task = SegmentationTask(ignore_index=int(ignore))
    dev = torch.device(device)
    sample_ids = list(range(len(data))) if ids is None else list(ids)
    if not sample_ids:
        raise UserError(f"data '{data.name}' has no samples to audit")
    batches = [sample_ids[i: i + batch_size] for i in range(0, len(sample_ids), batch_size)]
    loaded = [data.load(b) for b in batches]  # segmentation sets are small enough to hold (masks as int64)
    # hashing what is loaded anyway is the resume's data check (as classification's clean pass)
    digests = [tensors_sha256(x, y) for x, y in loaded] if store is not None else [""] * len(batches)
    stash = _Stash(store, reuse)
    bar = progress or _Quiet()
    if example_eps is None:
        example_eps = grid[len(grid) // 2]
    rows: list[dict[str, Any]] = []
    class_iou: dict[tuple[str, str, float], list[float | None]] = {}
    unbounded: list[dict[str, Any]] = []
    examples: list[SegExample] = []
    fitted_all: dict[tuple[str, str, float], Attack] = {}
    fits: list[dict[str, Any]] = []
    n = len(sample_ids)
    for entry in models:
        model = entry.module
        with on_device(model, dev), eval_mode(model):
            bar.start(f"{entry.name}: clean", n)
            clean_cms, clean_preds, k, checked = [], [], 0, False
            for b, (x, y), digest in zip(batches, loaded, digests):
                stored = stash.get(entry.name, "", 0.0, b)
                if stored is not None:
                    if stored.data_sha256 != digest:
                        raise UserError(f"cannot resume {store.path.parent}: data changed since the stored run "
                                        f"(samples {b[0]}..{b[-1]} differ); rerun with --overwrite to start over")
                    stash.reused += 1
                    k = int(stored.cms.shape[-1])
                    clean_preds.append(stored.clean_pred)
                    clean_cms.append(stored.cms)
                    bar.advance(len(b))
                    continue
                with torch.no_grad():
                    logits = _forward(model, x.to(dev), entry.name)
                if not checked:
                    k = check_segmentation_outputs(logits, y, data, entry.name)
                    checked = True
                pred = logits.argmax(1)
                clean_preds.append(pred.cpu())
                clean_cms.append(image_confusion(pred, y.to(dev), k, task.ignore_index))
                stash.put(entry.name, "", 0.0, b, SegBatch(cms=clean_cms[-1], data_sha256=digest,
                                                           clean_pred=clean_preds[-1]))
                bar.advance(len(b))
            clean_cm = torch.cat(clean_cms)
            clean_miou = segmetrics.miou(clean_cm.sum(0))
            clean_pa = segmetrics.pixel_accuracy(clean_cm.sum(0))
            class_iou[(entry.name, "clean", 0.0)] = class_iou_of(clean_cm.sum(0))
            counter = PassCounter(model)
            cells: dict[tuple[str, float], _Cell] = {}
            for a in attacks:
                if is_unbounded(a.attack):
                    threat = ThreatModel("unbounded", math.inf)
                    bar.start(f"{entry.name}: {a.name} (unbounded)", n)
                    cell = _attack_cell(entry, counter, a.attack, threat, batches, loaded, clean_preds, k, task, dev,
                                        seed, bar, examples if examples_per_cell else None, examples_per_cell,
                                        a.name, stash, targeted=True)
                    unbounded.append(_unbounded_row(entry.name, a.name, cell, clean_miou, clean_pa))
                    continue
                for e in grid:
                    threat = ThreatModel(norm, e)
                    attack = a.attack
                    if isinstance(attack, UniversalAttack):
                        again = _stored_fit(stash, entry.name, a, e, batches)
                        if again is not None:  # every batch of the cell is stored: no fit needed
                            fit, attack = again
                        else:
                            t0 = time.perf_counter()
                            counter.take()
                            attack = _fit(entry, counter, attack, train_data, threat, seed, task, dev, bar, a.name)
                            f, bwd = counter.take()
                            fit = {"model": entry.name, "attack": a.name, "eps": e,
                                   "seconds": round(time.perf_counter() - t0, 3), "forward_passes": f,
                                   "backward_passes": bwd}
                            if stash.store is not None and isinstance(attack, FittedUAP):
                                stash.store.write_seg_fit(entry.name, a.name, e, fit, attack.xi, attack.static)
                        fitted_all[(entry.name, a.name, e)] = attack
                        fits.append(fit)
                    bar.start(f"{entry.name}: {a.name} eps {e:g}", n)
                    want = examples_per_cell if e == example_eps else 0
                    cell = _attack_cell(entry, counter, attack, threat, batches, loaded, clean_preds, k, task, dev,
                                        seed, bar, examples if want else None, want, a.name, stash,
                                        targeted=is_targeted(attack) or isinstance(attack, FittedUAP))
                    cells[(a.name, e)] = cell
                    rows.append(_row(entry.name, a.name, e, norm, n, clean_miou, clean_pa, cell.matrix(), cell,
                                     stream_key(seed, "bootstrap", entry.name, a.name, e), resamples))
                    class_iou[(entry.name, a.name, e)] = class_iou_of(cell.matrix().sum(0))
            # the ensemble: per image, the attack that left the lowest pixel accuracy
            bounded = [a.name for a in attacks if not is_unbounded(a.attack)]
            for e in grid:
                if not bounded:
                    break
                stack = torch.stack([cells[(name, e)].matrix() for name in bounded])  # (A, n, K, K)
                worst = pixel_accuracy_of(stack).argmin(0)  # (n,)
                chosen = stack[worst, torch.arange(n)]
                ens = _Cell(cms=[chosen], seconds=sum(cells[(name, e)].seconds for name in bounded),
                            forward=sum(cells[(name, e)].forward for name in bounded),
                            backward=sum(cells[(name, e)].backward for name in bounded))
                row = _row(entry.name, WORST_CASE, e, norm, n, clean_miou, clean_pa, chosen, ens,
                           stream_key(seed, "bootstrap", entry.name, WORST_CASE, e), resamples)
                row["targeted_success"] = math.nan
                rows.append(row)
                class_iou[(entry.name, WORST_CASE, e)] = class_iou_of(chosen.sum(0))
    records = pd.DataFrame(rows, columns=list(SEG_COLUMNS))
    result = ResultMatrix(records, task="segmentation", class_iou=class_iou, unbounded=unbounded,
                          seg_examples=examples)
    if fits:
        result.provenance["fitted"] = fitted_all
        result.provenance["fits"] = fits
    if store is not None:
        result.provenance["resume"] = {"reused_batches": stash.reused, "computed_batches": stash.computed}
    return result


def _stored_fit(stash: _Stash, model: str, entry: AttackEntry, eps: float, batches: list[list[int]]
                ) -> tuple[dict[str, Any], Attack] | None:
    """The stored fit of a universal attack whose cell is wholly stored (fitting it again would be
    wasted work), rebuilt; ``None`` when a batch of the cell must be computed."""
    from robustaudit.attacks.segmentation import FittedUAP

    if stash.store is None or not stash.reuse or not stash.complete(model, entry.name, eps, batches):
        return None
    stored = stash.store.seg_fit(model, entry.name, eps)
    if stored is None:
        return None
    fit, xi, static = stored
    return fit, FittedUAP(xi, entry.attack, static)


class _Quiet:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


def _forward(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return model(x)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's model failing is a user-facing error, not our traceback
        raise UserError(f"model '{name}' raised {type(exc).__name__} in forward: {exc}") from None


def _fit(entry: ModelEntry, counter: PassCounter, attack: UniversalAttack, train: ImageData | None,
         threat: ThreatModel, seed: int, task: SegmentationTask, dev: torch.device, bar: Any, name: str) -> Attack:
    try:
        return attack.fit(counter, train, threat, seed=seed, task=task, device=dev, progress=bar)
    except UserError:
        raise
    except Exception as exc:
        if raised_by_model(exc, entry.module):
            raise UserError(f"model '{entry.name}' raised {type(exc).__name__} in forward while fitting "
                            f"'{name}': {exc}") from None
        raise


def _attack_cell(entry: ModelEntry, counter: PassCounter, attack: Attack, threat: ThreatModel,
                 batches: list[list[int]], loaded: list[tuple[torch.Tensor, torch.Tensor]],
                 clean_preds: list[torch.Tensor], k: int, task: SegmentationTask, dev: torch.device, seed: int,
                 bar: Any, examples: list[SegExample] | None, want: int, name: str, stash: _Stash, *,
                 targeted: bool) -> _Cell:
    """One independent run of ``attack`` at ``threat`` over every batch (stored batches read back)."""
    cell = _Cell()
    picked: list[tuple[float, SegExample]] = []
    for b, (x, y), clean_pred in zip(batches, loaded, clean_preds):
        stored = stash.get(entry.name, name, threat.eps, b)
        if stored is not None:
            stash.reused += 1
            _add(cell, stored)
            picked.extend(stored.examples)
            bar.advance(len(b))
            continue
        t0 = time.perf_counter()
        x, y = x.to(dev), y.to(dev)
        targets = None
        if targeted:
            if hasattr(attack, "targets_for_prediction"):
                targets = attack.targets_for_prediction(clean_pred.to(dev))
            else:
                targets = attack.targets_for(y, k, task.ignore_index)
            targets = torch.where(y != task.ignore_index, targets, torch.full_like(targets, task.ignore_index))
        counter.take()
        try:
            adv = attack(counter, x, y, threat, targets=targets, ids=torch.tensor(b), seed=seed, task=task)
        except UserError:
            raise
        except Exception as exc:
            if raised_by_model(exc, entry.module):
                first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
                raise UserError(f"model '{entry.name}' raised {type(exc).__name__} in forward during attack "
                                f"'{name}': {first}") from None
            raise
        if adv.shape != x.shape or not torch.isfinite(adv).all():
            raise RuntimeError(f"attack '{name}' returned a bad tensor (shape {tuple(adv.shape)})")
        with torch.no_grad():
            pred = _forward(entry.module, adv, entry.name).argmax(1)
        f, bwd = counter.take()
        cms = image_confusion(pred, y, k, task.ignore_index)
        hits = counted = 0
        if targets is not None:
            hits, counted = segmetrics.targeted_success(pred, targets, y, task.ignore_index)
        delta = adv - x
        shots: list[tuple[float, SegExample]] = []
        if examples is not None and want > 0:
            drop = pixel_accuracy_of(image_confusion(clean_pred.to(dev), y, k, task.ignore_index)) - pixel_accuracy_of(cms)
            for i in drop.argsort(descending=True).tolist()[:want]:
                shots.append((float(drop[i]), SegExample(
                    entry.name, name, threat.eps, x[i].cpu().numpy(), adv[i].detach().cpu().numpy(),
                    y[i].cpu().numpy(), clean_pred[i].numpy(), pred[i].cpu().numpy())))
        done = SegBatch(cms=cms, l2=lp_norm(delta, "l2").tolist(), linf=lp_norm(delta, "linf").tolist(),
                        hits=int(hits), total=int(counted), seconds=time.perf_counter() - t0, forward_passes=f,
                        backward_passes=bwd, examples=shots)
        stash.put(entry.name, name, threat.eps, b, done)  # written now: a crash loses at most this batch
        _add(cell, done)
        picked.extend(shots)
        bar.advance(len(b))
    if examples is not None and want > 0:
        # the images the attack hurt most, over the whole run
        examples.extend(ex for _, ex in sorted(picked, key=lambda p: -p[0])[:want])
    return cell


def _add(cell: _Cell, batch: SegBatch) -> None:
    """Accumulate one batch (computed or read back) into its cell."""
    cell.cms.append(batch.cms)
    cell.hits += batch.hits
    cell.total += batch.total
    cell.l2 += batch.l2
    cell.linf += batch.linf
    cell.seconds += batch.seconds
    cell.forward += batch.forward_passes
    cell.backward += batch.backward_passes


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _row(model: str, attack: str, eps: float, norm: str, n: int, clean_miou: float, clean_pa: float,
         cms: torch.Tensor, cell: _Cell, key: int, resamples: int) -> dict[str, Any]:
    total = cms.sum(0)
    ci = bootstrap_interval(cms, key, resamples)
    return dict(zip(SEG_COLUMNS, (
        model, attack, float(eps), norm, n, clean_miou, segmetrics.miou(total), ci["miou"][0], ci["miou"][1],
        clean_pa, segmetrics.pixel_accuracy(total), ci["pa"][0], ci["pa"][1],
        cell.hits / cell.total if cell.total else math.nan, _median(cell.l2), _median(cell.linf),
        float(cell.seconds), n, int(cell.forward), int(cell.backward))))


def _unbounded_row(model: str, attack: str, cell: _Cell, clean_miou: float, clean_pa: float) -> dict[str, Any]:
    total = cell.matrix().sum(0)
    q = (lambda v, p: float(np.quantile(v, p)) if v else math.nan)
    return {"model": model, "attack": attack, "n": len(cell.l2), "clean_miou": clean_miou,
            "miou": segmetrics.miou(total), "clean_pixel_accuracy": clean_pa,
            "pixel_accuracy": segmetrics.pixel_accuracy(total),
            "targeted_success": cell.hits / cell.total if cell.total else math.nan,
            "median_l2": q(cell.l2, 0.5), "q25_l2": q(cell.l2, 0.25), "q75_l2": q(cell.l2, 0.75),
            "median_linf": q(cell.linf, 0.5), "q25_linf": q(cell.linf, 0.25), "q75_linf": q(cell.linf, 0.75),
            "seconds": round(cell.seconds, 3), "forward_passes": cell.forward, "backward_passes": cell.backward,
            "class_iou": class_iou_of(total)}
