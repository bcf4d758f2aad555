"""The segmentation run: mIoU and pixel accuracy under attack, one independent run per cell.

Segmentation has no per-image yes/no (mIoU is a dataset-level figure from a confusion matrix summed over
every image), so every model × attack × eps cell is an independent run over all audited images, in
batches, with no survivor cascade and no early exit. Per cell we keep each image's confusion matrix
``(K, K)`` (rows: true class; ignored pixels count nowhere) and perturbation norms; every figure (dataset
mIoU and pixel accuracy, the per-image ensemble, the 95% bootstrap intervals over images keyed by seed,
model, attack and eps) is aggregated from these per-image outcomes by
:func:`robustaudit.evaluate.aggregate.aggregate_segmentation`.

DAG without ``clip`` is unbounded: it runs once per model, outside the eps grid (``ResultMatrix.unbounded``).
Universal attacks are fitted per (model, eps) on the training split. Every clean or attacked batch is
written to the store as soon as it is computed, so a crash loses at most one batch; a resumed run reads
each batch back by its exact ids, and fits a universal attack only when a batch of its cell is missing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from robustaudit.attacks.base import Attack, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import IGNORE_INDEX, SegmentationTask
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate import segmetrics
from robustaudit.evaluate.aggregate import SegCellOutcome, aggregate_segmentation, unbounded_record
from robustaudit.evaluate.attacking import blame_model
from robustaudit.evaluate.cost import PassCounter
from robustaudit.evaluate.entries import AttackEntry, ModelEntry, NoProgress, Progress, sort_eps
from robustaudit.evaluate.result import SEG_COLUMNS, ResultMatrix, SegExample
from robustaudit.evaluate.samples import check_segmentation_outputs, model_forward
from robustaudit.evaluate.segmetrics import BOOTSTRAP, image_confusion, pixel_accuracy_of
from robustaudit.evaluate.store import SegBatch, Store, tensors_sha256


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


@dataclass
class _SegRun:
    """What every model and cell of one segmentation run shares, and what the run accumulates."""

    data: ImageData
    batches: list[list[int]]
    loaded: list[tuple[torch.Tensor, torch.Tensor]]
    digests: list[str]
    stash: _Stash
    bar: Any
    task: SegmentationTask
    dev: torch.device
    seed: int
    norm: str
    grid: list[float]
    example_eps: float
    examples_per_cell: int
    train_data: ImageData | None
    clean: dict[str, torch.Tensor] = field(default_factory=dict)  # per model: clean cms (n, K, K)
    outcomes: list[SegCellOutcome] = field(default_factory=list)
    unbounded: list[dict[str, Any]] = field(default_factory=list)
    examples: list[SegExample] = field(default_factory=list)
    fitted: dict[tuple[str, str, float], Attack] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:  # the audited images
        return sum(len(b) for b in self.batches)


@dataclass
class _Model:
    """One model of the run: its entry, pass counter, class count and clean predictions per batch."""

    entry: ModelEntry
    counter: PassCounter
    k: int
    clean_preds: list[torch.Tensor]


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
        store: where each batch is written as soon as it is computed (``None``: nowhere); ``reuse``: read
            stored batches back by exact ids (a clean batch whose data hash differs is refused).
    Returns:
        A segmentation :class:`ResultMatrix` (records :data:`SEG_COLUMNS` with the per-image ensemble
        ``worst-case``, ``class_iou``, ``unbounded``, ``seg_examples``); ``provenance`` left for the caller
        except ``fits``, ``fitted`` (objects, for the caller to save) and, given a store, ``resume``.
    """
    grid, sample_ids = _checked(models, data, attacks, eps, norm, ids, batch_size, train_data)
    ignore = data.ignore_index if getattr(data, "ignore_index", None) is not None else IGNORE_INDEX
    batches = [sample_ids[i: i + batch_size] for i in range(0, len(sample_ids), batch_size)]
    loaded = [data.load(b) for b in batches]  # segmentation sets are small enough to hold (masks as int64)
    # hashing what is loaded anyway is the resume's data check (as classification's clean pass)
    digests = [tensors_sha256(x, y) for x, y in loaded] if store is not None else [""] * len(batches)
    run = _SegRun(data, batches, loaded, digests, _Stash(store, reuse), progress or NoProgress(),
                  SegmentationTask(ignore_index=int(ignore)), torch.device(device), seed, norm, grid,
                  grid[len(grid) // 2] if example_eps is None else example_eps, examples_per_cell, train_data)
    for entry in models:
        with on_device(entry.module, run.dev), eval_mode(entry.module):
            _model_cells(run, entry, attacks)
    # every figure, the per-image ensemble (worst case) included, from the per-image outcomes
    rows, class_iou = aggregate_segmentation(run.clean, run.outcomes, seed=seed, resamples=resamples)
    result = ResultMatrix(pd.DataFrame(rows, columns=list(SEG_COLUMNS)), task="segmentation", class_iou=class_iou,
                          unbounded=run.unbounded, seg_examples=run.examples)
    if run.fits:
        result.provenance["fitted"] = run.fitted
        result.provenance["fits"] = run.fits
    if store is not None:
        result.provenance["resume"] = {"reused_batches": run.stash.reused, "computed_batches": run.stash.computed}
    return result


def _checked(models: Sequence[ModelEntry], data: ImageData, attacks: Sequence[AttackEntry], eps: Sequence[float],
             norm: str, ids: Sequence[int] | None, batch_size: int,
             train_data: ImageData | None) -> tuple[list[float], list[int]]:
    """The eps grid and sample ids of :func:`run_segmentation`; refuses what it cannot run."""
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
    sample_ids = list(range(len(data))) if ids is None else list(ids)
    if not sample_ids:
        raise UserError(f"data '{data.name}' has no samples to audit")
    return grid, sample_ids


def _model_cells(run: _SegRun, entry: ModelEntry, attacks: Sequence[AttackEntry]) -> None:
    """One model: its clean pass, then every attack (bounded: at every eps; unbounded: once)."""
    from robustaudit.attacks.segmentation import FittedUAP, is_targeted, is_unbounded

    m = _clean_pass(run, entry)
    total = run.clean[entry.name].sum(0)
    clean_miou, clean_pa = segmetrics.miou(total), segmetrics.pixel_accuracy(total)
    for a in attacks:
        if is_unbounded(a.attack):
            run.bar.start(f"{entry.name}: {a.name} (unbounded)", run.n)
            cell = _attack_cell(run, m, a.attack, ThreatModel("unbounded", math.inf), a.name,
                                run.examples_per_cell, targeted=True)
            run.unbounded.append(unbounded_record(_outcome(entry.name, a.name, math.inf, run.norm, cell),
                                                  (clean_miou, clean_pa)))
            continue
        for e in run.grid:
            threat = ThreatModel(run.norm, e)
            attack = _universal(run, m, a, threat) if isinstance(a.attack, UniversalAttack) else a.attack
            run.bar.start(f"{entry.name}: {a.name} eps {e:g}", run.n)
            cell = _attack_cell(run, m, attack, threat, a.name, run.examples_per_cell if e == run.example_eps else 0,
                                targeted=is_targeted(attack) or isinstance(attack, FittedUAP))
            run.outcomes.append(_outcome(entry.name, a.name, e, run.norm, cell))


def _clean_pass(run: _SegRun, entry: ModelEntry) -> _Model:
    """The model on clean data, batch by batch (stored batches read back, their data hash checked); the
    clean confusion matrices go to ``run.clean``."""
    run.bar.start(f"{entry.name}: clean", run.n)
    clean_cms, clean_preds, k, checked = [], [], 0, False
    for b, (x, y), digest in zip(run.batches, run.loaded, run.digests):
        stored = run.stash.get(entry.name, "", 0.0, b)
        if stored is not None:
            if stored.data_sha256 != digest:
                raise UserError(f"cannot resume {run.stash.store.path.parent}: data changed since the stored run "
                                f"(samples {b[0]}..{b[-1]} differ); rerun with --overwrite to start over")
            run.stash.reused += 1
            k = int(stored.cms.shape[-1])
            clean_preds.append(stored.clean_pred)
            clean_cms.append(stored.cms)
            run.bar.advance(len(b))
            continue
        with torch.no_grad():
            logits = model_forward(entry.module, x.to(run.dev), entry.name)
        if not checked:
            k = check_segmentation_outputs(logits, y, run.data, entry.name)
            checked = True
        pred = logits.argmax(1)
        clean_preds.append(pred.cpu())
        clean_cms.append(image_confusion(pred, y.to(run.dev), k, run.task.ignore_index))
        run.stash.put(entry.name, "", 0.0, b, SegBatch(cms=clean_cms[-1], data_sha256=digest,
                                                       clean_pred=clean_preds[-1]))
        run.bar.advance(len(b))
    run.clean[entry.name] = torch.cat(clean_cms)
    return _Model(entry, PassCounter(entry.module), k, clean_preds)


def _universal(run: _SegRun, m: _Model, a: AttackEntry, threat: ThreatModel) -> Attack:
    """The universal attack ``a`` fitted at ``threat`` (read back when its whole cell is stored)."""
    from robustaudit.attacks.segmentation import FittedUAP

    name, e = m.entry.name, threat.eps
    again = _stored_fit(run.stash, name, a, e, run.batches)
    if again is not None:  # every batch of the cell is stored: no fit needed
        fit, attack = again
    else:
        t0 = time.perf_counter()
        m.counter.take()
        attack = _fit(m.entry, m.counter, a.attack, run.train_data, threat, run.seed, run.task, run.dev, run.bar,
                      a.name)
        f, bwd = m.counter.take()
        fit = {"model": name, "attack": a.name, "eps": e, "seconds": round(time.perf_counter() - t0, 3),
               "forward_passes": f, "backward_passes": bwd}
        if run.stash.store is not None and isinstance(attack, FittedUAP):
            run.stash.store.write_seg_fit(name, a.name, e, fit, attack.xi, attack.static)
    run.fitted[(name, a.name, e)] = attack
    run.fits.append(fit)
    return attack


def _attack_cell(run: _SegRun, m: _Model, attack: Attack, threat: ThreatModel, name: str, want: int, *,
                 targeted: bool) -> _Cell:
    """One independent run of ``attack`` at ``threat`` over every batch (stored batches read back); the
    ``want`` images it hurt most become panels."""
    cell = _Cell()
    picked: list[tuple[float, SegExample]] = []
    for b, (x, y), clean_pred in zip(run.batches, run.loaded, m.clean_preds):
        done = run.stash.get(m.entry.name, name, threat.eps, b)
        if done is not None:
            run.stash.reused += 1
        else:
            done = _attack_batch(run, m, attack, threat, name, b, x.to(run.dev), y.to(run.dev), clean_pred, want,
                                 targeted=targeted)
            run.stash.put(m.entry.name, name, threat.eps, b, done)  # written now: a crash loses at most this batch
        _add(cell, done)
        picked.extend(done.examples)
        run.bar.advance(len(b))
    if want > 0:
        # the images the attack hurt most, over the whole run
        run.examples.extend(ex for _, ex in sorted(picked, key=lambda p: -p[0])[:want])
    return cell


def _attack_batch(run: _SegRun, m: _Model, attack: Attack, threat: ThreatModel, name: str, b: list[int],
                  x: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor, want: int, *,
                  targeted: bool) -> SegBatch:
    """One batch ``x (B, C, H, W)``, ``y (B, H, W)`` attacked and scored: its per-image outcomes."""
    t0 = time.perf_counter()
    task, entry = run.task, m.entry
    targets = _targets(attack, y, clean_pred.to(run.dev), m.k, task) if targeted else None
    m.counter.take()
    with blame_model(entry.name, entry.module, f"during attack '{name}'"):
        adv = attack(m.counter, x, y, threat, targets=targets, ids=torch.tensor(b), seed=run.seed, task=task)
    if adv.shape != x.shape or not torch.isfinite(adv).all():
        raise RuntimeError(f"attack '{name}' returned a bad tensor (shape {tuple(adv.shape)})")
    with torch.no_grad():
        pred = model_forward(entry.module, adv, entry.name).argmax(1)
    f, bwd = m.counter.take()
    cms = image_confusion(pred, y, m.k, task.ignore_index)
    hits, counted = segmetrics.targeted_success(pred, targets, y, task.ignore_index) if targets is not None else (0, 0)
    delta = adv - x
    shots: list[tuple[float, SegExample]] = []
    if want > 0:
        drop = pixel_accuracy_of(image_confusion(clean_pred.to(run.dev), y, m.k, task.ignore_index)) - pixel_accuracy_of(cms)
        # an image without valid pixels has no pixel accuracy (NaN): never a panel
        for i in [i for i in drop.argsort(descending=True).tolist() if not math.isnan(drop[i])][:want]:
            shots.append((float(drop[i]), SegExample(
                entry.name, name, threat.eps, x[i].cpu().numpy(), adv[i].detach().cpu().numpy(),
                y[i].cpu().numpy(), clean_pred[i].numpy(), pred[i].cpu().numpy())))
    return SegBatch(cms=cms, l2=lp_norm(delta, "l2").tolist(), linf=lp_norm(delta, "linf").tolist(), hits=int(hits),
                    total=int(counted), seconds=time.perf_counter() - t0, forward_passes=f, backward_passes=bwd,
                    examples=shots)


def _targets(attack: Attack, y: torch.Tensor, clean_pred: torch.Tensor, k: int,
             task: SegmentationTask) -> torch.Tensor:
    """The target map ``(B, H, W)`` of a targeted attack (from the clean prediction when the attack says
    so, else from the labels); ignored pixels stay ignored."""
    if hasattr(attack, "targets_for_prediction"):
        targets = attack.targets_for_prediction(clean_pred)
    else:
        targets = attack.targets_for(y, k, task.ignore_index)
    return torch.where(y != task.ignore_index, targets, torch.full_like(targets, task.ignore_index))


def _stored_fit(stash: _Stash, model: str, entry: AttackEntry, eps: float, batches: list[list[int]]
                ) -> tuple[dict[str, Any], Attack] | None:
    """The stored fit of a universal attack whose cell is wholly stored (fitting it again would be
    wasted work), rebuilt; ``None`` when a batch of the cell must be computed."""
    from robustaudit.attacks.segmentation import FittedUAP

    if stash.store is None or not stash.reuse or not stash.complete(model, entry.name, eps, batches):
        return None
    stored = stash.store.seg_fit(model, entry.name, eps)  # (fit, xi, static)
    return None if stored is None else (stored[0], FittedUAP(stored[1], entry.attack, stored[2]))


def _fit(entry: ModelEntry, counter: PassCounter, attack: UniversalAttack, train: ImageData | None,
         threat: ThreatModel, seed: int, task: SegmentationTask, dev: torch.device, bar: Any, name: str) -> Attack:
    with blame_model(entry.name, entry.module, f"while fitting '{name}'"):
        return attack.fit(counter, train, threat, seed=seed, task=task, device=dev, progress=bar)


def _outcome(model: str, attack: str, eps: float, norm: str, cell: _Cell) -> SegCellOutcome:
    return SegCellOutcome(model, attack, eps, norm, cell.matrix(), cell.l2, cell.linf, cell.hits, cell.total,
                          cell.seconds, cell.forward, cell.backward)


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
