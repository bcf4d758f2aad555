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

import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, AttackKind, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.cost import PassCounter, split_evenly
from robustaudit.evaluate.fastpath import (FastPath, attack_view, channels_last, is_out_of_memory, release_memory,
                                           to_device)
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.result import COLUMNS, WORST_CASE, Example, ResultMatrix, worst_case_attacked
from robustaudit.evaluate.store import Store, tensors_sha256
from robustaudit.models.wrappers import raised_by_model

#: Inputs kept in host memory between attacks when they fit; larger sets are reloaded per batch.
_CACHE_BYTES = 1 << 30


@dataclass
class ModelEntry:
    """One row group of the matrix: a display name, the module, and what the report says about it."""

    name: str
    module: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackEntry:
    """One attack column: a display name (unique in the audit) and the attack object."""

    name: str
    attack: Attack


class Progress(Protocol):
    """What the runner reports progress to (the CLI passes a rich progress bar)."""

    def start(self, description: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...


class _NoProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; otherwise a device that must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{spec}' requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device '{spec}' requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    return dev


def sort_eps(eps: Sequence[float]) -> list[float]:
    """Validated, de-duplicated, ascending eps grid."""
    out: list[float] = []
    for e in eps:
        ThreatModel("linf", e)  # validates: >= 0, a number
        if e == float("inf"):
            raise UserError("the eps grid needs finite radii (inf is only a minimal-norm attack's budget)")
        if float(e) not in out:
            out.append(float(e))
    if not out:
        raise UserError("the eps grid is empty")
    return sorted(out)


class _Samples:
    """The audited samples of one dataset, loaded once and cached when small enough: on the GPU when the
    audit runs on one and the set fits in a quarter of its free memory (no host copy per batch then),
    else on the host."""

    def __init__(self, data: ImageData, ids: list[int], batch_size: int, device: torch.device | None = None) -> None:
        self.data = data
        self.ids = ids
        self.batch_size = batch_size
        c, h, w = data.sample_shape
        size = len(ids) * c * h * w * 4
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if size <= _CACHE_BYTES else None
        self.device = device if device is not None and device.type == "cuda" and _fits_on(device, size) else None
        self.labels: dict[int, int] = {}

    def batches(self, ids: Sequence[int]) -> list[list[int]]:
        return [list(ids[i : i + self.batch_size]) for i in range(0, len(ids), self.batch_size)]

    def load(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)``, ``y (B,)`` for sample ids ``ids``: on the host, or on the GPU when resident."""
        if self._cache is not None and all(i in self._cache for i in ids):
            xs, ys = zip(*(self._cache[i] for i in ids))
            return torch.stack(xs), torch.stack(ys)
        x, y = self.data.load(list(ids))
        for i, label in zip(ids, y.tolist()):
            self.labels[i] = label
        if self.device is not None:  # resident on the GPU: copied once, from pinned memory
            x, y = to_device(x, self.device), to_device(y, self.device)
        if self._cache is not None:
            for k, i in enumerate(ids):
                self._cache[i] = (x[k], y[k])
        return x, y


def _fits_on(device: torch.device, size: int) -> bool:
    """Whether ``size`` bytes of inputs may live on ``device`` for the audit: a quarter of its free memory."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:  # pragma: no cover - a CUDA build without a usable device
        return False
    return size <= free // 4


def _check_outputs(logits: Any, data: ImageData, model: str) -> None:
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"model '{model}' returned {type(logits).__name__}, expected a logits tensor")
    if logits.dim() != 2:
        raise UserError(
            f"model '{model}' returned shape {tuple(logits.shape)}; a classifier must return logits (N, K)"
        )
    k = logits.shape[1]
    # labels of a tensor file may cover only some classes: more outputs than seen labels is fine
    # unless the data names its classes
    if k < data.num_classes or (k > data.num_classes and data.class_names is not None):
        raise UserError(
            f"model '{model}' has {k} outputs but data '{data.name}' has {data.num_classes} classes "
            f"(labels 0..{data.num_classes - 1})"
        )
    if not torch.isfinite(logits).all():
        raise UserError(f"model '{model}' returned NaN or infinite logits on clean data")


def _record(model, attack, eps, norm, n, n_clean, n_robust, seconds, n_attacked=None, forward=None,
            backward=None) -> dict[str, Any]:
    """One row of the records (:data:`COLUMNS`); cost figures left ``None`` are missing (NaN)."""
    lo, hi = wilson_interval(n_robust, n)
    nan = float("nan")

    def per(passes):
        return passes / n_attacked if passes is not None and n_attacked else nan

    return dict(
        zip(
            COLUMNS,
            (model, attack, float(eps), norm, n, n_clean, n_robust, n_clean / n if n else nan,
             n_robust / n if n else nan, lo, hi, float(seconds), nan if n_attacked is None else int(n_attacked),
             nan if forward is None else int(forward), nan if backward is None else int(backward), per(forward),
             per(backward)),
        )
    )


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
) -> ResultMatrix:
    """Evaluate every model on clean data and under every attack at every eps.

    Args:
        models: the rows; each module maps ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``.
        data: the samples; ``ids`` selects which (default: all).
        attacks: the columns, run independently of each other (the worst case is per sample).
        eps: the radii, in pixel units of ``norm``.
        reuse: resume: take every batch already in ``store`` from it instead of recomputing it (the
            caller has checked that the store's run had the same configuration and weights; the data
            is checked here, batch by batch, against the hashes of the stored clean batches).
        train_data: what universal attacks (patches, universal perturbations, generators) are fitted
            on, once per model and eps, before their first batch needs computing; required when one
            is in ``attacks``. The fitted attacks are in ``provenance["fitted"]`` (objects, for the
            caller to save and drop) with their seconds in ``provenance["fits"]``.
        fast: the attack's precision, ``torch.compile``, channels_last (see
            :mod:`robustaudit.evaluate.fastpath`); the clean pass and the scoring of adversarial points
            always use the bare model in float32. An attack batch that runs out of memory is attacked in
            halves (again, down to one sample), which changes no result (keyed randomness); the halvings
            are in ``provenance["oom_halvings"]``.
    Returns:
        A :class:`ResultMatrix` (``provenance`` left for the caller to fill, except, when ``reuse``,
        ``provenance["resume"] = {"reused_batches": .., "computed_batches": ..}``). Each row also says
        what it cost: ``n_attacked`` samples, the ``forward_passes`` / ``backward_passes`` the attack
        spent on them (counted by :class:`~robustaudit.evaluate.cost.PassCounter`; the runner's own
        scoring forward is not counted) and ``seconds``; a reused batch counts what it cost when computed.
    Raises:
        UserError: when ``reuse`` and a clean batch's inputs differ from the stored ones.
    """
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
    dev = torch.device(device)
    sample_ids = list(range(len(data))) if ids is None else list(ids)
    if not sample_ids:
        raise UserError(f"data '{data.name}' has no samples to audit")
    samples = _Samples(data, sample_ids, batch_size, dev)
    bar = progress or _NoProgress()
    fast = fast or FastPath()
    if example_eps is None:
        example_eps = grid[len(grid) // 2]
    state = _RunState(example_eps=example_eps, examples_per_cell=examples_per_cell, reuse=reuse,
                      train_data=train_data)
    n = len(sample_ids)
    for entry in models:
        model = entry.module
        nhwc = fast.uses_channels_last(dev, tuple(data.sample_shape))
        with on_device(model, dev), eval_mode(model), channels_last(model, nhwc):
            bar.start(f"{entry.name}: clean", n)
            correct_ids = _clean_pass(entry.name, model, samples, dev, store, bar, state, nhwc=nhwc)
            robust_sets: dict[float, set[int]] = {e: set(correct_ids) for e in grid}
            # attacks get the model at the audit's precision (autocast, compiled); scoring stays fp32
            ctx = _Cell(entry.name, model, samples, dev, seed, store, bar, task, n, len(correct_ids), norm,
                        state, PassCounter(attack_view(model, fast, dev)), nhwc)
            queue = list(attacks)
            for a in queue:
                bar.start(f"{entry.name}: {a.name}", len(correct_ids) * (1 if _minimal(a) else len(grid)))
                sweep = _minimal_norm_column if _minimal(a) else _fixed_eps_column
                try:
                    column = sweep(ctx, a, correct_ids, grid, state)
                except NoInputGradients as exc:
                    _skip_gradient_attack(entry.name, a, exc, queue, state)
                    continue
                for e, survivors in column.items():
                    robust_sets[e] &= set(survivors)
            for k, e in enumerate(grid):
                # the worst case cost what its columns cost; it attacked every sample one of them did
                cells = [r for r in state.rows if r["model"] == entry.name and r["eps"] == e]
                attacked = worst_case_attacked(cells, state.robust_ids, grid[k - 1] if k else None)
                state.add_row(ctx, WORST_CASE, e, sorted(robust_sets[e]), sum(r["seconds"] for r in cells),
                              attacked, sum(r["forward_passes"] for r in cells),
                              sum(r["backward_passes"] for r in cells))
    result = ResultMatrix(pd.DataFrame(state.rows, columns=list(COLUMNS)), examples=state.examples,
                          robust_ids=state.robust_ids, minimal_norms=state.minimal_norms)
    if reuse:
        result.provenance["resume"] = {"reused_batches": state.reused, "computed_batches": state.computed}
    if state.skipped:
        result.provenance["skipped"] = state.skipped
    if state.halvings:
        result.provenance["oom_halvings"] = state.halvings
    if state.fitted:
        result.provenance["fitted"] = state.fitted
        result.provenance["fits"] = state.fits
    return result


class NoInputGradients(Exception):
    """A gradient attack met a model whose output has no gradient with respect to its input."""


#: What autograd says when the input is not part of the output's graph (numpy or ``.detach()`` in forward).
_NO_GRAD = re.compile(r"does not require grad|not have been used in the graph|numpy\(\) on Tensor that requires grad"
                      r"|does not have a grad_fn")


def _skip_gradient_attack(model: str, a: AttackEntry, exc: NoInputGradients, queue: list[AttackEntry],
                          state: _RunState) -> None:
    """A model without input gradients is still a valid audit target: its gradient attacks are skipped
    (their column stays empty for this model) and, unless the audit already has one, the black-box
    Square attack takes their place."""
    from robustaudit.attacks.square import Square

    state.skipped.append({"model": model, "attack": a.name, "reason": str(exc)})
    for key in [k for k in state.robust_ids if k[:2] == (model, a.name)]:  # a partial column, if any
        del state.robust_ids[key]
    state.rows = [r for r in state.rows if (r["model"], r["attack"]) != (model, a.name)]
    state.examples = [e for e in state.examples if (e.model, e.attack) != (model, a.name)]
    black_box = any(q.attack.kind in (AttackKind.SCORE_BASED, AttackKind.DECISION_BASED) for q in queue)
    note = ""
    if not black_box:
        queue.append(AttackEntry("square", Square()))
        note = "; running the black-box attack 'square' instead"
    warnings.warn(f"model '{model}' has no input gradients ({exc}): attack '{a.name}' skipped{note}", stacklevel=2)


@dataclass
class _Cell:
    """What every column of one model shares."""

    name: str
    model: nn.Module
    samples: _Samples
    dev: torch.device
    seed: int
    store: Store | None
    bar: Progress
    task: Task
    n: int
    n_clean: int
    norm: str
    state: _RunState
    #: the model as attacks get it: counts their forward and backward passes
    counter: PassCounter
    #: inputs go to the device in channels_last (the model's weights are)
    nhwc: bool = False


@dataclass
class _RunState:
    """What the run accumulates: matrix rows, per-sample robust ids, examples, minimal norms, and how
    many batches were read back from the store (``reused``) or computed."""

    example_eps: float
    examples_per_cell: int
    reuse: bool = False
    reused: int = 0
    computed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    robust_ids: dict[tuple[str, str, float], list[int]] = field(default_factory=dict)
    minimal_norms: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    train_data: ImageData | None = None
    #: universal attacks fitted per (model, attack, eps), and what each fit cost
    fitted: dict[tuple[str, str, float], Attack] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)
    #: out-of-memory halvings (model, attack, eps, from, to) and the attack chunk size that last fit,
    #: per (model, attack): later batches start there instead of running out of memory again
    halvings: list[dict[str, Any]] = field(default_factory=list)
    chunks: dict[tuple[str, str], int] = field(default_factory=dict)

    def add_row(self, ctx: _Cell, attack: str, eps: float, robust: list[int], seconds: float, attacked: int,
                forward: int, backward: int) -> None:
        self.rows.append(_record(ctx.name, attack, eps, ctx.norm, ctx.n, ctx.n_clean, len(robust), seconds,
                                 attacked, forward, backward))
        self.robust_ids[(ctx.name, attack, eps)] = robust


def _minimal(a: AttackEntry) -> bool:
    return a.attack.kind is AttackKind.MINIMAL_NORM


def _fixed_eps_column(ctx: _Cell, a: AttackEntry, correct_ids: list[int], grid: list[float],
                      state: _RunState) -> dict[float, list[int]]:
    """Sweep eps upwards, attacking only the survivors of the previous eps."""
    survivors = list(correct_ids)
    out: dict[float, list[int]] = {}
    for eps in grid:
        threat = ThreatModel(ctx.norm, eps)
        before = len(survivors)
        want = state.examples_per_cell if eps == state.example_eps else 0

        def pick(batch, x, y, adv, preds, pert, ok, eps=eps, want=want):
            return _examples(ctx.name, a.name, eps, batch, x, y, adv, preds, ~ok, want - _count(state, ctx, a, eps))

        still: list[int] = []
        # the cell's compute time and passes: a reused batch counts what it cost when computed
        seconds, forward, backward = 0.0, 0, 0
        for b in _attack_batches(ctx, a, threat, survivors, store_eps=eps, pick=pick):
            still.extend(i for i, keep in zip(b.ids, b.correct) if keep)
            state.examples.extend(ex for _, ex in b.examples)
            seconds += b.seconds
            forward += b.forward
            backward += b.backward
        survivors = still
        ctx.bar.advance(len(correct_ids) - before)  # broken at a smaller eps: not attacked again
        state.add_row(ctx, a.name, eps, sorted(survivors), seconds, before, forward, backward)
        if ctx.store is not None:
            ctx.store.write_cell(ctx.name, a.name, eps, seconds, before, len(survivors), forward_passes=forward,
                                 backward_passes=backward)
        out[eps] = survivors
    return out


def _minimal_norm_column(ctx: _Cell, a: AttackEntry, correct_ids: list[int], grid: list[float],
                         state: _RunState) -> dict[float, list[int]]:
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
    out: dict[float, list[int]] = {}
    for k, eps in enumerate(grid):
        # a hair of tolerance so float32 rounding of a perturbation projected to exactly eps never
        # counts a broken sample as robust (the safe direction)
        robust = sorted(i for i in correct_ids if norms[i] > eps * (1 + 1e-5))
        state.add_row(ctx, a.name, eps, robust, seconds, len(correct_ids), forwards[k], backwards[k])
        if ctx.store is not None:
            ctx.store.write_cell(ctx.name, a.name, eps, seconds, len(correct_ids), len(robust),
                                 forward_passes=forwards[k], backward_passes=backwards[k])
        out[eps] = robust
    return out


def _count(state: _RunState, ctx: _Cell, a: AttackEntry, eps: float) -> int:
    return sum(1 for e in state.examples if e.model == ctx.name and e.attack == a.name and e.eps == eps)


def _examples(model, attack, eps, batch, x, y, adv, preds, broken, want) -> list[tuple[int, Example]]:
    return [
        (batch[k], Example(model, attack, eps, x[k].cpu().numpy(), adv[k].cpu().numpy(), int(y[k]), int(y[k]),
                           int(preds[k]), sample_id=int(batch[k])))
        for k in broken.nonzero().flatten().tolist()[: max(0, want)]
    ]


def _clean_pass(name, model, samples: _Samples, dev, store: Store | None, bar, state: _RunState, *,
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
            logits = _forward(model, to_device(x, dev, nhwc=nhwc), name)
        if first:
            _check_outputs(logits, samples.data, name)
            first = False
        preds = logits.argmax(1).cpu()
        if store is not None:
            store.write_clean(name, batch, y.tolist(), preds.tolist(), data_sha256=digest)
        state.computed += 1
        correct.extend(i for i, ok in zip(batch, (preds == y).tolist()) if ok)
        bar.advance(len(batch))
    return correct


def _forward(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return model(x)
    except UserError:
        raise
    except Exception as exc:  # a user's model failing is a user-facing error, not our traceback
        raise UserError(f"model '{name}' raised {type(exc).__name__} in forward: {exc}") from None


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


def _attack_batches(ctx: _Cell, a: AttackEntry, threat: ThreatModel, ids: Sequence[int], *, store_eps: float,
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
        attack = _fitted(ctx, a, threat) if isinstance(a.attack, UniversalAttack) else a.attack
        t0 = time.perf_counter()
        x, y = ctx.samples.load(batch)
        x, y = to_device(x, ctx.dev, nhwc=ctx.nhwc), to_device(y, ctx.dev)
        adv, forward, backward = _attack_in_chunks(ctx, a, attack, x, y, threat, batch)
        if adv.shape != x.shape or not torch.isfinite(adv).all():
            raise RuntimeError(f"attack '{a.name}' returned a bad tensor (shape {tuple(adv.shape)})")
        with torch.no_grad():
            preds = _forward(ctx.model, adv, ctx.name).argmax(1)
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


def _attack_in_chunks(ctx: _Cell, a: AttackEntry, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                      threat: ThreatModel, batch: list[int]) -> tuple[torch.Tensor, int, int]:
    """``attack`` on one batch ``x (B, C, H, W)``, ``y (B,)``; returns ``(adv (B, C, H, W), forward, backward)``.

    The batch goes to the attack whole unless an earlier batch of this model and attack ran out of
    memory: then in chunks of the size that last fit. Out of memory halves the chunk and retries it;
    a sample's result does not depend on its chunk (keyed randomness), and neither do the passes
    counted (a failed attempt's passes are discarded). The stored batch stays the runner's batch, so
    resuming finds it by the same ids.
    """
    key = (ctx.name, a.name)
    n = len(batch)
    parts: list[torch.Tensor] = []
    forward = backward = 0
    start = 0
    ctx.counter.take()  # from zero: what an interrupted batch counted is not this one's
    while start < n:
        size = min(ctx.state.chunks.get(key, n), n - start)
        part = slice(start, start + size)
        try:
            parts.append(_attack_call(ctx, a, attack, x[part], y[part], threat, batch[part]))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            ctx.counter.take()  # the failed attempt's passes are not this batch's cost
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            if size == 1:
                raise UserError(f"out of memory attacking a single sample with '{a.name}' on model '{ctx.name}' "
                                f"({first}); use a device with more memory") from None
            release_memory(ctx.dev)
            half = (size + 1) // 2
            ctx.state.chunks[key] = half
            ctx.state.halvings.append({"model": ctx.name, "attack": a.name, "eps": float(threat.eps), "from": size,
                                       "to": half})
            warnings.warn(f"out of memory: attack '{a.name}' on model '{ctx.name}' continues in batches of {half} "
                          f"(was {size}); results do not change", stacklevel=2)
            continue
        f, b = ctx.counter.take()
        forward, backward = forward + f, backward + b
        start += size
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), forward, backward


def _attack_call(ctx: _Cell, a: AttackEntry, attack: Attack, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 batch: list[int]) -> torch.Tensor:
    """One attack call; the model's and autograd's failures become the runner's errors (an allocator out of
    memory propagates as it is: the caller halves the chunk)."""
    try:
        # the attack gets the counting wrapper; the runner scores with the bare model (not counted)
        return attack(ctx.counter, x, y, threat, ids=torch.tensor(batch), seed=ctx.seed, task=ctx.task)
    except UserError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        if isinstance(exc, RuntimeError) and _NO_GRAD.search(str(exc)):
            raise NoInputGradients(str(exc).strip().splitlines()[0]) from None
        if raised_by_model(exc, ctx.model):  # the user's model failed on the attack's input, not the attack
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise UserError(f"model '{ctx.name}' raised {type(exc).__name__} in forward during attack "
                            f"'{a.name}': {first}") from None
        raise


def _fitted(ctx: _Cell, a: AttackEntry, threat: ThreatModel) -> Attack:
    """The universal attack ``a`` fitted against this model at ``threat`` on the training data (once)."""
    key = (ctx.name, a.name, threat.eps)
    if key not in ctx.state.fitted:
        universal = a.attack
        assert isinstance(universal, UniversalAttack) and ctx.state.train_data is not None  # run() checked
        t0 = time.perf_counter()
        ctx.counter.take()
        try:
            fitted = universal.fit(ctx.counter, ctx.state.train_data, threat, seed=ctx.seed, task=ctx.task,
                                   device=ctx.dev, progress=ctx.bar)
        except UserError:
            raise
        except Exception as exc:
            if raised_by_model(exc, ctx.model):
                raise UserError(f"model '{ctx.name}' raised {type(exc).__name__} in forward while fitting "
                                f"'{a.name}': {exc}") from None
            raise
        forward, backward = ctx.counter.take()
        ctx.state.fitted[key] = fitted
        ctx.state.fits.append({"model": ctx.name, "attack": a.name, "eps": threat.eps,
                               "seconds": round(time.perf_counter() - t0, 3), "forward_passes": forward,
                               "backward_passes": backward})
        ctx.bar.start(f"{ctx.name}: {a.name}", ctx.n_clean)
    return ctx.state.fitted[key]
