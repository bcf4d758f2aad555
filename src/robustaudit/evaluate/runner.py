"""The runner: the only place that loops over models × attacks × eps, for every task.

Engine rules (DESIGN.md): attack only samples the model gets right on clean data; sweep eps from small
to large attacking only the survivors of the previous eps (a point broken at eps_k lies in every
larger ball, so curves are monotone by construction); write every finished batch to the store; the
worst case over attacks is computed per sample. The task (:class:`~robustaudit.core.task.Task`) says what
differs: segmentation has no per-image yes/no, so its cascade is off (every eps is an independent run over
all images) and its cells keep per-image confusion matrices. How a batch is scored, stored and aggregated
per task is a scoring (:mod:`~robustaudit.evaluate.scoring`, :mod:`~robustaudit.evaluate.segscoring`);
batching, the store, resume, fitting, out-of-memory halving, model errors and progress are here, once.

Resuming (``reuse=True``) reads finished batches back instead of recomputing them. That gives the same
numbers as an uninterrupted run because everything upstream of a batch is deterministic: the clean
predictions fix the first survivors, each eps's outcome fixes the next eps's survivors, so the resumed
run cuts exactly the batches it cut before and finds each one, by its exact ids, in the store.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from robustaudit.attacks.base import AttackKind, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.task import SegmentationTask, Task, predictions, task_of
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.attacking import NoInputGradients, attack_in_chunks, fitted_attack
from robustaudit.evaluate.cost import PassCounter
from robustaudit.evaluate.entries import (AttackEntry, ModelEntry, NoProgress, Progress, resolve_device,  # noqa: F401
                                          sort_eps)  # resolve_device: imported from here by the entry points
from robustaudit.evaluate.fastpath import FastPath, attack_view, channels_last, to_device
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.runstate import ModelRun, RunState
from robustaudit.evaluate.samples import Samples, model_forward
from robustaudit.evaluate.scoring import ClassScoring, Scoring, without_column
from robustaudit.evaluate.segmetrics import BOOTSTRAP
from robustaudit.evaluate.store import Store, tensors_sha256


def run(
    models: Sequence[ModelEntry],
    data: ImageData,
    attacks: Sequence[AttackEntry],
    eps: Sequence[float],
    *,
    norm: str = "linf", ids: Sequence[int] | None = None, batch_size: int = 256,
    device: torch.device | str = "cpu", seed: int = 0, store: Store | None = None,
    progress: Progress | None = None, example_eps: float | None = None,
    examples_per_cell: int = 2, task: Task | None = None, reuse: bool = False,
    train_data: ImageData | None = None, fast: FastPath | None = None, resamples: int = BOOTSTRAP,
    artifacts: Artifacts | None = None, standing: dict[float, set[int]] | None = None,
) -> ResultMatrix:
    """Evaluate every model on clean data and under every attack at every eps.

    Args:
        models: the rows; each module maps ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)`` (classification)
            or ``(N, K, H, W)`` (segmentation: masks ``(N, H, W)`` int64, ``data.ignore_index`` ignored).
        data: the samples; ``ids`` selects which (default: all).
        attacks: the columns, independent of each other unless ``standing`` (the worst case is per sample).
        eps: the radii, in pixel units of ``norm``.
        task: what the models do (default: the data's, :func:`~robustaudit.core.task.task_of`).
        reuse: resume: read every batch already in ``store`` back instead of recomputing it (the caller
            checked the configuration and weights; the data is checked here against the stored hashes).
        train_data: what universal attacks are fitted on (once per model and eps, lazily); required when
            one is in ``attacks``; fitted into ``artifacts`` (read back on resume), records in ``provenance["fits"]``.
        fast: the attack's precision, ``torch.compile``, channels_last (scoring stays float32); a task that
            lacks one refuses it (``Task.refuse``). Out of memory halves an attack batch (no result changes).
        resamples: bootstrap resamples of segmentation's intervals.
        standing: a cascade across columns (AutoAttack's; one model): at each eps a fixed-eps column attacks
            only the ids in ``standing[eps]``, which each finished cell narrows to its survivors in place, so
            a column's figure is the worst case of those before it and itself. ``None``: columns independent.
    Returns:
        A :class:`ResultMatrix` from the per-sample outcomes (segmentation: :data:`SEG_COLUMNS` records,
        ``class_iou``, ``unbounded``); ``provenance`` left to the caller except ``resume`` (when ``reuse``),
        skips, halvings and fits. Rows state their cost (``n_attacked``, the attack's passes, ``seconds``;
        a reused batch counts what it cost when computed).
    A clean batch whose inputs differ from the stored ones is refused when ``reuse`` (:class:`UserError`).
    """
    grid, sample_ids = _checked(models, data, attacks, eps, norm, ids, batch_size, reuse=reuse, store=store,
                                train_data=train_data, standing=standing)
    task, dev, bar, fast = task or task_of(data), torch.device(device), progress or NoProgress(), fast or FastPath()
    task.refuse(o for o, used in (("precision", fast.precision != "fp32"), ("compile", fast.compile)) if used)
    samples = Samples(data, sample_ids, batch_size, dev)
    state = RunState(example_eps=grid[len(grid) // 2] if example_eps is None else example_eps,
                     examples_per_cell=examples_per_cell, reuse=reuse, train_data=train_data,
                     artifacts=artifacts or Artifacts(), standing=standing)
    scoring = _scoring(task, state, seed, resamples)
    nhwc = task.supports("channels_last") and fast.uses_channels_last(dev, tuple(data.sample_shape))
    for entry in models:
        model = entry.module
        with on_device(model, dev), eval_mode(model), channels_last(model, nhwc):
            bar.start(f"{entry.name}: clean", len(sample_ids))
            targets = _clean_pass(entry.name, model, samples, dev, store, bar, state, scoring, nhwc=nhwc)
            # attacks get the model at the audit's precision (autocast, compiled); scoring stays fp32
            ctx = ModelRun(entry.name, model, samples, dev, seed, store, bar, task, len(sample_ids), len(targets),
                           norm, state, PassCounter(attack_view(model, fast, dev)), nhwc, scoring)
            _columns(ctx, attacks, targets, grid)
    return _result(scoring, state)


def _scoring(task: Task, state: RunState, seed: int, resamples: int) -> Scoring:
    """The store-and-aggregate side of ``task``."""
    if isinstance(task, SegmentationTask):
        from robustaudit.evaluate.segscoring import SegScoring

        return SegScoring(task, seed, resamples)
    return ClassScoring(state)


def _columns(ctx: ModelRun, attacks: Sequence[AttackEntry], targets: list[int], grid: list[float]) -> None:
    """Every attack column of one model on ``targets`` (the clean-correct samples; every sample without the
    cascade): at each eps, or once outside the grid (a minimal-norm attack, segmentation's unbounded DAG)."""
    queue = list(attacks)
    for a in queue:
        once = ctx.scoring.once(a, ctx.norm)
        ctx.bar.start(f"{ctx.name}: {a.name}", len(targets) * (1 if once is not None else len(grid)))
        try:
            if once is not None:
                cell = _cell(ctx, a, once, targets, ctx.state.examples_per_cell)
                ctx.scoring.end_once(ctx, cell, targets, grid)
            else:
                _sweep(ctx, a, targets, grid)
        except NoInputGradients as exc:
            _skip_gradient_attack(ctx, a, exc, queue)


def _sweep(ctx: ModelRun, a: AttackEntry, targets: list[int], grid: list[float]) -> None:
    """Sweep eps upwards; with the task's cascade only the survivors of the previous eps are attacked."""
    state, attacked = ctx.state, list(targets)
    across = state.standing if ctx.task.cascade else None
    for eps in grid:
        threat = ThreatModel(ctx.norm, eps)
        if across is not None:  # what an earlier column broke at this eps is broken: not attacked again
            attacked = [i for i in attacked if i in across.get(eps, ())]
        if isinstance(a.attack, UniversalAttack) and state.reuse and ctx.store is not None:
            _reuse_fit(ctx, a, threat)
        cell = _cell(ctx, a, threat, attacked, state.examples_per_cell if eps == state.example_eps else 0)
        if len(attacked) < len(targets):
            ctx.bar.advance(len(targets) - len(attacked))  # broken at a smaller eps: not attacked again
        still = ctx.scoring.end_cell(ctx, cell, attacked)
        if across is not None:
            across[eps] = set(still)
        if ctx.task.cascade:
            attacked = still


def _cell(ctx: ModelRun, a: AttackEntry, threat: ThreatModel, ids: list[int], want: int) -> Any:
    """One run of ``a`` at ``threat`` over ``ids``, batch by batch; ``want``: examples for the report."""
    cell = ctx.scoring.new_cell(ctx, a, threat, want)
    for b in _attack_batches(ctx, a, threat, ids, cell):
        cell.add(b)
    return cell


def _reuse_fit(ctx: ModelRun, a: AttackEntry, threat: ThreatModel) -> None:
    """A resumed run takes a universal attack's stored fit (when the task stores fits) instead of fitting
    again; the fit record stays in the provenance even when every batch of the cell is stored."""
    key = (ctx.name, a.name, threat.eps)
    if ctx.state.artifacts.get(key) is not None:
        return
    stored = ctx.scoring.stored_fit(ctx, a, threat.eps)
    if stored is not None:
        ctx.state.artifacts.adopt(key, stored[1], stored[0])


def _checked(models: Sequence[ModelEntry], data: ImageData, attacks: Sequence[AttackEntry], eps: Sequence[float],
             norm: str, ids: Sequence[int] | None, batch_size: int, *, reuse: bool, store: Store | None,
             train_data: ImageData | None, standing: dict[float, set[int]] | None = None) -> tuple[list[float], list[int]]:
    """The eps grid and the sample ids of :func:`run`; refuses, before any model runs, what it cannot do."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if not models:
        raise UserError("no model to audit")
    if not attacks:
        raise UserError("no attack to run")
    if reuse and store is None:
        raise ValueError("reuse=True needs the store of the run to resume")
    if standing is not None and len(models) != 1:
        raise ValueError("a cascade across columns (standing=) is one model's")
    universal = [a.name for a in attacks if isinstance(a.attack, UniversalAttack)]
    if universal and train_data is None:
        raise UserError(f"attack '{universal[0]}' is fitted on training data: give a data set with a train split "
                        "(or training data) to fit it on")
    grid = sort_eps(eps)
    ThreatModel(norm, grid[0])  # an unknown norm fails here, before any model runs
    sample_ids = list(range(len(data))) if ids is None else list(ids)
    if not sample_ids:
        raise UserError(f"data '{data.name}' has no samples to audit")
    return grid, sample_ids


def _result(scoring: Scoring, state: RunState) -> ResultMatrix:
    """The run's matrix: every figure, the worst case over attacks included, aggregated from the per-sample
    outcomes; what the run did besides (resume, skips, halvings, fits) in ``provenance``."""
    result = scoring.result(state)
    if state.reuse:
        result.provenance["resume"] = {"reused_batches": state.reused, "computed_batches": state.computed}
    if state.skipped:
        result.provenance["skipped"] = state.skipped
    if state.halvings:
        result.provenance["oom_halvings"] = state.halvings
    if state.spread:
        result.provenance["verdict_spread"] = state.spread
    if state.artifacts.records:
        result.provenance["fits"] = list(state.artifacts.records)
    return result


def _skip_gradient_attack(ctx: ModelRun, a: AttackEntry, exc: NoInputGradients, queue: list[AttackEntry]) -> None:
    """A model without input gradients is still a valid audit target: its gradient attacks are skipped
    (their column stays empty for this model) and, unless the audit already has one or the task has no
    such stand-in, the black-box Square attack takes their place."""
    from robustaudit.attacks.square import Square

    state, model = ctx.state, ctx.name
    state.skipped.append({"model": model, "attack": a.name, "reason": str(exc)})
    without_column(state, model, a.name)
    black_box = any(q.attack.kind in (AttackKind.SCORE_BASED, AttackKind.DECISION_BASED) for q in queue)
    note = ""
    if not black_box and ctx.task.supports("black_box_fallback"):
        queue.append(AttackEntry("square", Square()))
        note = "; running the black-box attack 'square' instead"
    warnings.warn(f"model '{model}' has no input gradients ({exc}): attack '{a.name}' skipped{note}", stacklevel=2)


def _judge(ctx: ModelRun, attack: Any, adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[list[bool]] | None]:
    """The predictions ``(B,)`` an attacked batch ``adv (B, C, H, W)`` is scored on. An attack with
    ``judge_repeats`` R > 1 (``EOT(judge=R)``: a randomized model) draws them R times: a sample counts as robust
    only if correct in every draw (its first wrong prediction is kept), and per sample its R outcomes come
    back (the verdict's spread); else ``None``."""
    preds = predictions(model_forward(ctx.model, adv, ctx.name))
    repeats = int(getattr(attack, "judge_repeats", 1))
    if repeats <= 1 or not isinstance(ctx.scoring, ClassScoring):
        return preds, None
    every = torch.stack([preds, *(predictions(model_forward(ctx.model, adv, ctx.name)) for _ in range(repeats - 1))], 1)
    ok = every == y.view(-1, 1)  # (B, R)
    first_wrong = (~ok).to(torch.uint8).argmax(1, keepdim=True)
    chosen = torch.where((~ok).any(1), every.gather(1, first_wrong).squeeze(1), preds)
    return chosen, ok.cpu().tolist()


def _clean_pass(name: str, model: torch.nn.Module, samples: Samples, dev: torch.device, store: Store | None,
                bar: Progress, state: RunState, scoring: Scoring, *, nhwc: bool = False) -> list[int]:
    """The model on clean data, batch by batch (stored batches read back, their data hash checked); returns
    the ids to attack."""
    records: list[Any] = []
    first = True
    for batch in samples.batches(samples.ids):
        # always loaded, even when stored: hashing what we load is the resume's data check, and the
        # attacks need the inputs cached anyway
        x, y = samples.load(batch)
        y = y.cpu()  # labels are compared with the predictions on the host
        digest = tensors_sha256(x, y) if store is not None else None
        stored = scoring.stored_clean(store, name, batch, y) if state.reuse and store is not None else None
        if stored is not None:
            if stored[0] != digest:
                raise UserError(
                    f"cannot resume {store.path.parent}: data changed since the stored run (samples "
                    f"{batch[0]}..{batch[-1]} differ); rerun with --overwrite to start over")
            state.reused += 1
            records.append(stored[1])
            bar.advance(len(batch))
            continue
        with torch.no_grad():
            logits = model_forward(model, to_device(x, dev, nhwc=nhwc), name)
        if first:
            scoring.check(logits, y, samples.data, name)
            first = False
        records.append(scoring.clean(store, name, batch, y, logits, digest))
        state.computed += 1
        bar.advance(len(batch))
    return scoring.clean_done(name, list(samples.ids), records)


def _attack_batches(ctx: ModelRun, a: AttackEntry, threat: ThreatModel, ids: Sequence[int], cell: Any) -> Iterator[Any]:
    """Attack ``ids`` batch by batch; yields each batch's outcome after writing its per-sample records and
    the examples picked for the report to the store, in one commit. When resuming, a batch the store holds
    (same model, attack, eps and exact ids) is read back instead of attacked."""
    scoring, eps = ctx.scoring, threat.eps
    for batch in ctx.samples.batches(ids):
        stored = scoring.stored(ctx, a.name, eps, batch) if ctx.state.reuse and ctx.store is not None else None
        if stored is not None:
            ctx.state.reused += 1
            yield stored
            ctx.bar.advance(len(batch))
            continue
        # fitted lazily: a resumed run whose batches are all stored never fits again
        attack = fitted_attack(ctx, a, threat) if isinstance(a.attack, UniversalAttack) else a.attack
        t0 = time.perf_counter()
        x, y = ctx.samples.load(batch)
        x, y = to_device(x, ctx.dev, nhwc=ctx.nhwc), to_device(y, ctx.dev)
        targets = scoring.targets(ctx, a, attack, batch, y)
        adv, forward, backward = attack_in_chunks(ctx, a, attack, x, y, threat, batch, targets)
        if adv.shape != x.shape or not torch.isfinite(adv).all():
            raise RuntimeError(f"attack '{a.name}' returned a bad tensor (shape {tuple(adv.shape)})")
        with torch.no_grad():
            preds, draws = _judge(ctx, attack, adv, y)
        out = scoring.score(ctx, cell, batch, x, y, adv, preds, targets)
        out.seconds, out.forward_passes, out.backward_passes = time.perf_counter() - t0, forward, backward
        if draws is not None:
            out.draws = draws
        if ctx.store is not None:
            scoring.write(ctx, a.name, eps, batch, y, out)
        ctx.state.computed += 1
        yield out
        ctx.bar.advance(len(batch))
