"""The runner: the only place that loops over models × attacks × eps.

Engine rules (DESIGN.md): attack only samples the model gets right on clean data; sweep eps from small
to large attacking only the survivors of the previous eps (a point broken at eps_k lies in every
larger ball, so curves are monotone by construction); write every finished batch to the store; the
worst case over attacks is computed per sample.

Resuming (``reuse=True``) reads finished batches back instead of recomputing them. That gives the same
numbers as an uninterrupted run because everything upstream of a batch is deterministic: the clean
predictions fix the first survivors, each eps's outcome fixes the next eps's survivors, so the resumed
run cuts exactly the batches it cut before and finds each one, by its exact ids, in the store.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from robustaudit.attacks.base import AttackKind, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.aggregate import CleanOutcome
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.attacking import NoInputGradients, attack_in_chunks, fitted_attack
from robustaudit.evaluate.cost import PassCounter, split_evenly
from robustaudit.evaluate.entries import (AttackEntry, ModelEntry, NoProgress, Progress, resolve_device,  # noqa: F401
                                          sort_eps)  # resolve_device: imported from here by the entry points
from robustaudit.evaluate.fastpath import FastPath, attack_view, channels_last, to_device
from robustaudit.evaluate.result import Example, ResultMatrix
from robustaudit.evaluate.runstate import ModelRun, RunState
from robustaudit.evaluate.samples import Samples, check_outputs, model_forward
from robustaudit.evaluate.store import Store, tensors_sha256


def run(
    models: Sequence[ModelEntry],
    data: ImageData,
    attacks: Sequence[AttackEntry],
    eps: Sequence[float],
    *,
    norm: str = "linf",
    ids: Sequence[int] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    store: Store | None = None,
    progress: Progress | None = None,
    example_eps: float | None = None,
    examples_per_cell: int = 2,
    task: Task = CLASSIFICATION,
    reuse: bool = False,
    train_data: ImageData | None = None,
    fast: FastPath | None = None,
    artifacts: Artifacts | None = None,
) -> ResultMatrix:
    """Evaluate every model on clean data and under every attack at every eps.

    Args:
        models: the rows; each module maps ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``.
        data: the samples; ``ids`` selects which (default: all).
        attacks: the columns, run independently of each other (the worst case is per sample).
        eps: the radii, in pixel units of ``norm``.
        reuse: resume: read every batch already in ``store`` back instead of recomputing it (the caller
            checked the configuration and weights; the data is checked here against the stored hashes).
        train_data: what universal attacks are fitted on (once per model and eps, lazily); required when
            one is in ``attacks``; fitted into ``artifacts`` (read back on resume), records in ``provenance["fits"]``.
        fast: the attack's precision, ``torch.compile``, channels_last (:mod:`~robustaudit.evaluate.fastpath`); clean
            pass and scoring stay float32. Out of memory halves a batch (same results; ``provenance["oom_halvings"]``).
    Returns:
        A :class:`ResultMatrix` aggregated from the per-sample outcomes (``outcomes``); ``provenance`` left
        to the caller except ``resume`` (reused / computed batches, when ``reuse``). Each row says what it
        cost: ``n_attacked``, the attack's ``forward_passes`` / ``backward_passes`` (the runner's scoring
        forward is not counted) and ``seconds``; a reused batch counts what it cost when computed.
    Raises:
        UserError: when ``reuse`` and a clean batch's inputs differ from the stored ones.
    """
    grid, sample_ids = _checked(models, data, attacks, eps, norm, ids, batch_size, reuse=reuse, store=store,
                                train_data=train_data)
    dev, bar, fast, n = torch.device(device), progress or NoProgress(), fast or FastPath(), len(sample_ids)
    samples = Samples(data, sample_ids, batch_size, dev)
    state = RunState(example_eps=grid[len(grid) // 2] if example_eps is None else example_eps, reuse=reuse,
                     examples_per_cell=examples_per_cell, train_data=train_data, artifacts=artifacts or Artifacts())
    for entry in models:
        model = entry.module
        nhwc = fast.uses_channels_last(dev, tuple(data.sample_shape))
        with on_device(model, dev), eval_mode(model), channels_last(model, nhwc):
            bar.start(f"{entry.name}: clean", n)
            correct_ids = _clean_pass(entry.name, model, samples, dev, store, bar, state, nhwc=nhwc)
            state.outcomes.clean.append(CleanOutcome(entry.name, list(sample_ids), list(correct_ids)))
            # attacks get the model at the audit's precision (autocast, compiled); scoring stays fp32
            ctx = ModelRun(entry.name, model, samples, dev, seed, store, bar, task, n, len(correct_ids), norm,
                           state, PassCounter(attack_view(model, fast, dev)), nhwc)
            _columns(ctx, attacks, correct_ids, grid, state)
    return _result(state)


def _columns(ctx: ModelRun, attacks: Sequence[AttackEntry], correct_ids: list[int], grid: list[float],
             state: RunState) -> None:
    """Every attack column of one model, each sweeping the eps grid on the clean-correct samples."""
    queue = list(attacks)
    for a in queue:
        ctx.bar.start(f"{ctx.name}: {a.name}", len(correct_ids) * (1 if _minimal(a) else len(grid)))
        sweep = _minimal_norm_column if _minimal(a) else _fixed_eps_column
        try:
            sweep(ctx, a, correct_ids, grid, state)
        except NoInputGradients as exc:
            _skip_gradient_attack(ctx.name, a, exc, queue, state)


def _checked(models: Sequence[ModelEntry], data: ImageData, attacks: Sequence[AttackEntry], eps: Sequence[float],
             norm: str, ids: Sequence[int] | None, batch_size: int, *, reuse: bool, store: Store | None,
             train_data: ImageData | None) -> tuple[list[float], list[int]]:
    """The eps grid and the sample ids of :func:`run`; refuses, before any model runs, what it cannot do."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if not models:
        raise UserError("no model to audit")
    if not attacks:
        raise UserError("no attack to run")
    if reuse and store is None:
        raise ValueError("reuse=True needs the store of the run to resume")
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


def _result(state: RunState) -> ResultMatrix:
    """The run's matrix: every figure, the worst case over attacks included, aggregated from the per-sample
    outcomes; what the run did besides (resume, skips, halvings, fits) in ``provenance``."""
    result = ResultMatrix.from_outcomes(state.outcomes, examples=state.examples, minimal_norms=state.minimal_norms)
    if state.reuse:
        result.provenance["resume"] = {"reused_batches": state.reused, "computed_batches": state.computed}
    if state.skipped:
        result.provenance["skipped"] = state.skipped
    if state.halvings:
        result.provenance["oom_halvings"] = state.halvings
    if state.artifacts.records:
        result.provenance["fits"] = list(state.artifacts.records)
    return result


def _skip_gradient_attack(model: str, a: AttackEntry, exc: NoInputGradients, queue: list[AttackEntry],
                          state: RunState) -> None:
    """A model without input gradients is still a valid audit target: its gradient attacks are skipped
    (their column stays empty for this model) and, unless the audit already has one, the black-box
    Square attack takes their place."""
    from robustaudit.attacks.square import Square

    state.skipped.append({"model": model, "attack": a.name, "reason": str(exc)})
    state.outcomes = state.outcomes.without([(model, a.name)])  # a partial column, if any
    state.examples = [e for e in state.examples if (e.model, e.attack) != (model, a.name)]
    black_box = any(q.attack.kind in (AttackKind.SCORE_BASED, AttackKind.DECISION_BASED) for q in queue)
    note = ""
    if not black_box:
        queue.append(AttackEntry("square", Square()))
        note = "; running the black-box attack 'square' instead"
    warnings.warn(f"model '{model}' has no input gradients ({exc}): attack '{a.name}' skipped{note}", stacklevel=2)


def _minimal(a: AttackEntry) -> bool:
    return a.attack.kind is AttackKind.MINIMAL_NORM


def _fixed_eps_column(ctx: ModelRun, a: AttackEntry, correct_ids: list[int], grid: list[float],
                      state: RunState) -> None:
    """Sweep eps upwards, attacking only the survivors of the previous eps."""
    survivors = list(correct_ids)
    for eps in grid:
        threat = ThreatModel(ctx.norm, eps)
        before = len(survivors)
        want = state.examples_per_cell if eps == state.example_eps else 0

        def pick(batch, x, y, adv, preds, pert, ok, eps=eps, want=want):
            return _examples(ctx.name, a.name, eps, batch, x, y, adv, preds, ~ok, want - _count(state, ctx, a, eps))

        still: list[int] = []
        norms: dict[int, float] = {}
        # the cell's compute time and passes: a reused batch counts what it cost when computed
        seconds, forward, backward = 0.0, 0, 0
        for b in _attack_batches(ctx, a, threat, survivors, store_eps=eps, pick=pick):
            still.extend(i for i, keep in zip(b.ids, b.correct) if keep)
            norms.update(zip(b.ids, b.norms))
            state.examples.extend(ex for _, ex in b.examples)
            seconds += b.seconds
            forward += b.forward
            backward += b.backward
        ctx.bar.advance(len(correct_ids) - before)  # broken at a smaller eps: not attacked again
        state.add_cell(ctx, a.name, eps, survivors, sorted(still), seconds, forward, backward, norms)
        survivors = still


def _minimal_norm_column(ctx: ModelRun, a: AttackEntry, correct_ids: list[int], grid: list[float],
                         state: RunState) -> None:
    """One unbounded run gives each sample's smallest adversarial norm, hence the whole curve: a sample
    is robust at eps when no adversarial was found or the smallest one is larger than eps."""
    norms: dict[int, float] = {}
    threat = ThreatModel(ctx.norm, float("inf"))
    found: list[Example] = []

    def pick(batch, x, y, adv, preds, pert, ok):
        # the first examples_per_cell samples broken within example_eps, counting earlier batches'
        picked: list[tuple[int, Example]] = []
        for k, (sid, h, nm) in enumerate(zip(batch, (~ok).tolist(), pert.tolist())):
            if h and nm <= state.example_eps and len(found) + len(picked) < state.examples_per_cell:
                picked.append((sid, Example(ctx.name, a.name, state.example_eps, x[k].cpu().numpy(),
                                            adv[k].cpu().numpy(), int(y[k]), int(y[k]), int(preds[k]),
                                            sample_id=int(sid))))
        return picked

    total, forward, backward = 0.0, 0, 0
    for b in _attack_batches(ctx, a, threat, correct_ids, store_eps=float("inf"), pick=pick):
        for sid, ok, nm in zip(b.ids, b.correct, b.norms):
            norms[sid] = float("inf") if ok else nm
        found.extend(ex for _, ex in b.examples)
        total += b.seconds
        forward += b.forward
        backward += b.backward
    # one run serves every eps: its seconds and passes are spread evenly over the eps rows, so that a
    # row sum (the column's cost) is the run's cost
    seconds = total / len(grid)
    forwards, backwards = split_evenly(forward, len(grid)), split_evenly(backward, len(grid))
    state.minimal_norms[(ctx.name, a.name)] = norms
    state.examples.extend(found)
    for k, eps in enumerate(grid):
        # a hair of tolerance so float32 rounding of a perturbation projected to exactly eps never
        # counts a broken sample as robust (the safe direction)
        robust = sorted(i for i in correct_ids if norms[i] > eps * (1 + 1e-5))
        state.add_cell(ctx, a.name, eps, correct_ids, robust, seconds, forwards[k], backwards[k], norms)


def _count(state: RunState, ctx: ModelRun, a: AttackEntry, eps: float) -> int:
    return sum(1 for e in state.examples if e.model == ctx.name and e.attack == a.name and e.eps == eps)


def _examples(model, attack, eps, batch, x, y, adv, preds, broken, want) -> list[tuple[int, Example]]:
    return [
        (batch[k], Example(model, attack, eps, x[k].cpu().numpy(), adv[k].cpu().numpy(), int(y[k]), int(y[k]),
                           int(preds[k]), sample_id=int(batch[k])))
        for k in broken.nonzero().flatten().tolist()[: max(0, want)]
    ]


def _clean_pass(name, model, samples: Samples, dev, store: Store | None, bar, state: RunState, *,
                nhwc: bool = False) -> list[int]:
    correct: list[int] = []
    first = True
    for batch in samples.batches(samples.ids):
        # always loaded, even when stored: hashing what we load is the resume's data check, and the
        # attacks need the inputs cached anyway
        x, y = samples.load(batch)
        y = y.cpu()  # labels are compared with the predictions on the host
        digest = tensors_sha256(x, y) if store is not None else None
        stored = store.clean_batch(name, batch) if state.reuse and store is not None else None
        if stored is not None:
            if stored[0] != digest:
                raise UserError(
                    f"cannot resume {store.path.parent}: data changed since the stored run (samples "
                    f"{batch[0]}..{batch[-1]} differ); rerun with --overwrite to start over")
            state.reused += 1
            correct.extend(i for i, p, t in zip(batch, stored[1], y.tolist()) if p == t)
            bar.advance(len(batch))
            continue
        with torch.no_grad():
            logits = model_forward(model, to_device(x, dev, nhwc=nhwc), name)
        if first:
            check_outputs(logits, samples.data, name)
            first = False
        preds = logits.argmax(1).cpu()
        if store is not None:
            store.write_clean(name, batch, y.tolist(), preds.tolist(), data_sha256=digest)
        state.computed += 1
        correct.extend(i for i, ok in zip(batch, (preds == y).tolist()) if ok)
        bar.advance(len(batch))
    return correct


@dataclass
class _Batch:
    """The outcome of one attacked batch, computed or read back from the store."""

    ids: list[int]
    correct: list[bool]  # adversarial prediction == label: the sample survived
    norms: list[float]  # norm of the perturbation
    seconds: float
    examples: list[tuple[int, Example]]  # (sample id, example) picked for the report
    forward: int = 0  # samples the attack pushed through the model's forward
    backward: int = 0  # samples of outputs a gradient flowed back through


#: ``pick(batch ids, x, y, adv, adv preds, pert norms, survived) -> [(sample id, Example)]``
Picker = Callable[..., list[tuple[int, Example]]]


def _attack_batches(ctx: ModelRun, a: AttackEntry, threat: ThreatModel, ids: Sequence[int], *, store_eps: float,
                    pick: Picker) -> Iterator[_Batch]:
    """Attack ``ids`` batch by batch; yields each batch's outcome after writing its per-sample records
    and the examples ``pick`` chose to the store, in one commit. When resuming, a batch the store holds
    (same model, attack, eps and exact ids) is read back instead of attacked."""
    norm = threat.norm if threat.norm in ("linf", "l2", "l1", "l0") else "linf"
    for batch in ctx.samples.batches(ids):
        stored = ctx.store.adv_batch(ctx.name, a.name, store_eps, batch) if ctx.state.reuse and ctx.store is not None else None
        if stored is not None:
            ctx.state.reused += 1
            yield _Batch(batch, stored.correct, stored.norms, stored.seconds, stored.examples, stored.forward_passes,
                         stored.backward_passes)
            ctx.bar.advance(len(batch))
            continue
        # fitted lazily: a resumed run whose batches are all stored never fits again
        attack = fitted_attack(ctx, a, threat) if isinstance(a.attack, UniversalAttack) else a.attack
        t0 = time.perf_counter()
        x, y = ctx.samples.load(batch)
        x, y = to_device(x, ctx.dev, nhwc=ctx.nhwc), to_device(y, ctx.dev)
        adv, forward, backward = attack_in_chunks(ctx, a, attack, x, y, threat, batch)
        if adv.shape != x.shape or not torch.isfinite(adv).all():
            raise RuntimeError(f"attack '{a.name}' returned a bad tensor (shape {tuple(adv.shape)})")
        with torch.no_grad():
            preds = model_forward(ctx.model, adv, ctx.name).argmax(1)
        pert = lp_norm(adv - x, norm)
        ok = (preds == y).cpu()
        examples = pick(batch, x, y, adv, preds, pert, ok)
        seconds = time.perf_counter() - t0
        if ctx.store is not None:
            ctx.store.write_adv(ctx.name, a.name, store_eps, batch, y.tolist(), preds.tolist(), pert.tolist(),
                                seconds=seconds, examples=examples, forward_passes=forward, backward_passes=backward)
        ctx.state.computed += 1
        yield _Batch(batch, ok.tolist(), pert.tolist(), seconds, examples, forward, backward)
        ctx.bar.advance(len(batch))


