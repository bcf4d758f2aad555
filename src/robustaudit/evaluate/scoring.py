"""What the runner keeps per task: how a clean or attacked batch is scored, stored and read back, what one
cell accumulates, and how the run's per-sample outcomes become the matrix.

The runner (:mod:`robustaudit.evaluate.runner`) owns the loop over models × attacks × eps, the batches,
resume, fitting, out-of-memory halving and model errors; the :class:`~robustaudit.core.task.Task` says
what differs in the mathematics (loss, success, per-sample statistics, the survivor cascade, the options
it supports). A scoring is the store-and-aggregate side of a task, which lives here because the store and
:mod:`~robustaudit.evaluate.aggregate` are evaluate's: :class:`ClassScoring` (per-sample yes/no, the
survivor cascade, minimal-norm columns) and :class:`~robustaudit.evaluate.segscoring.SegScoring`
(per-image confusion matrices, independent runs per cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import predictions
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.aggregate import CleanOutcome
from robustaudit.evaluate.cost import split_evenly
from robustaudit.evaluate.entries import AttackEntry
from robustaudit.evaluate.result import Example, ResultMatrix
from robustaudit.evaluate.runstate import ModelRun, RunState
from robustaudit.evaluate.samples import check_outputs
from robustaudit.evaluate.store import Store, StoredBatch


class Scoring(Protocol):
    """The per-task side of the runner. A batch outcome (computed or read back) has writable ``seconds``,
    ``forward_passes`` and ``backward_passes``; a cell object has ``add(outcome)``."""

    def check(self, logits: torch.Tensor, y: torch.Tensor, data: ImageData, model: str) -> None: ...

    def stored_clean(self, store: Store, model: str, batch: list[int], y: torch.Tensor) -> tuple[str, Any] | None: ...

    def clean(self, store: Store | None, model: str, batch: list[int], y: torch.Tensor, logits: torch.Tensor,
              digest: str | None) -> Any: ...

    def clean_done(self, model: str, ids: list[int], records: list[Any]) -> list[int]: ...

    def once(self, a: AttackEntry, norm: str) -> ThreatModel | None: ...

    def new_cell(self, ctx: ModelRun, a: AttackEntry, threat: ThreatModel, want: int) -> Any: ...

    def stored(self, ctx: ModelRun, attack: str, eps: float, batch: list[int]) -> Any: ...

    def targets(self, ctx: ModelRun, a: AttackEntry, attack: Attack, batch: list[int],
                y: torch.Tensor) -> torch.Tensor | None: ...

    def score(self, ctx: ModelRun, cell: Any, batch: list[int], x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor,
              preds: torch.Tensor, targets: torch.Tensor | None) -> Any: ...

    def write(self, ctx: ModelRun, attack: str, eps: float, batch: list[int], y: torch.Tensor, out: Any) -> None: ...

    def end_cell(self, ctx: ModelRun, cell: Any, attacked: list[int]) -> list[int]: ...

    def end_once(self, ctx: ModelRun, cell: Any, attacked: list[int], grid: list[float]) -> None: ...

    def stored_fit(self, ctx: ModelRun, a: AttackEntry, eps: float) -> tuple[dict[str, Any], Attack] | None: ...

    def save_fit(self, ctx: ModelRun, a: AttackEntry, eps: float, fit: dict[str, Any], attack: Attack) -> None: ...

    def result(self, state: RunState) -> ResultMatrix: ...


@dataclass
class ClassCell:
    """One classification cell (model × attack × eps, or a minimal-norm column's single run) as its batches
    come in: per sample whether it survived and its perturbation norm, the examples picked, the cost."""

    attack: str
    eps: float
    want: int
    correct: dict[int, bool] = field(default_factory=dict)
    norms: dict[int, float] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0
    #: per sample, correct in each draw of a repeated judgement; ``partial``: a batch came back without them
    draws: dict[int, list[bool]] = field(default_factory=dict)
    partial: bool = False

    def add(self, b: StoredBatch) -> None:
        if b.draws is not None:
            self.draws.update(zip(b.ids, b.draws))
        elif b.ids:
            self.partial = True
        self.correct.update(zip(b.ids, b.correct))
        self.norms.update(zip(b.ids, b.norms))
        self.examples.extend(ex for _, ex in b.examples)
        self.seconds += b.seconds
        self.forward += b.forward_passes
        self.backward += b.backward_passes


class ClassScoring:
    """Classification: a sample is right or wrong; the clean-correct samples are attacked; a fixed-eps column
    sweeps the survivors, a minimal-norm column runs once with ``eps = inf`` and gives the whole curve."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def check(self, logits: torch.Tensor, y: torch.Tensor, data: ImageData, model: str) -> None:
        check_outputs(logits, data, model)

    def stored_clean(self, store: Store, model: str, batch: list[int], y: torch.Tensor) -> tuple[str, Any] | None:
        stored = store.clean_batch(model, batch)
        if stored is None:
            return None
        return stored[0], [i for i, p, t in zip(batch, stored[1], y.tolist()) if p == t]

    def clean(self, store: Store | None, model: str, batch: list[int], y: torch.Tensor, logits: torch.Tensor,
              digest: str | None) -> list[int]:
        """The clean-correct ids of one batch (labels ``y (B,)`` on the host), written to the store."""
        preds = predictions(logits).cpu()
        if store is not None:
            store.write_clean(model, batch, y.tolist(), preds.tolist(), data_sha256=digest)
        return [i for i, ok in zip(batch, (preds == y).tolist()) if ok]

    def clean_done(self, model: str, ids: list[int], records: list[list[int]]) -> list[int]:
        correct = [i for r in records for i in r]
        self.state.outcomes.clean.append(CleanOutcome(model, list(ids), list(correct)))
        return correct

    def once(self, a: AttackEntry, norm: str) -> ThreatModel | None:
        """A minimal-norm attack runs once, unbounded; every other attack at each eps."""
        return ThreatModel(norm, float("inf")) if a.attack.kind is AttackKind.MINIMAL_NORM else None

    def new_cell(self, ctx: ModelRun, a: AttackEntry, threat: ThreatModel, want: int) -> ClassCell:
        return ClassCell(a.name, threat.eps, want)

    def stored(self, ctx: ModelRun, attack: str, eps: float, batch: list[int]) -> StoredBatch | None:
        return ctx.store.adv_batch(ctx.name, attack, eps, batch)

    def targets(self, ctx: ModelRun, a: AttackEntry, attack: Attack, batch: list[int],
                y: torch.Tensor) -> torch.Tensor | None:
        return None

    def score(self, ctx: ModelRun, cell: ClassCell, batch: list[int], x: torch.Tensor, y: torch.Tensor,
              adv: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor | None) -> StoredBatch:
        """One attacked batch ``x, adv (B, C, H, W)``, ``y, preds (B,)``: survived, perturbation norm, examples."""
        norm = ctx.norm if ctx.norm in ("linf", "l2", "l1", "l0") else "linf"
        pert = lp_norm(adv - x, norm)
        ok = (preds == y).cpu()
        examples = self._pick(ctx, cell, batch, x, y, adv, preds, pert, ok)
        return StoredBatch(list(batch), preds.tolist(), ok.tolist(), pert.tolist(), 0.0, examples)

    def _pick(self, ctx: ModelRun, cell: ClassCell, batch: list[int], x: torch.Tensor, y: torch.Tensor,
              adv: torch.Tensor, preds: torch.Tensor, pert: torch.Tensor, ok: torch.Tensor) -> list[tuple[int, Example]]:
        """The report's examples from this batch: at a fixed eps the first broken samples; in a minimal-norm
        run the first broken within ``example_eps`` (shown at ``example_eps``); ``want`` per cell in all."""
        minimal, state = cell.eps == float("inf"), self.state
        eps = state.example_eps if minimal else cell.eps
        room = (state.examples_per_cell if minimal else cell.want) - len(cell.examples)
        chosen = [k for k, (h, nm) in enumerate(zip((~ok).tolist(), pert.tolist()))
                  if h and (not minimal or nm <= state.example_eps)][: max(0, room)]
        return [(batch[k], Example(ctx.name, cell.attack, eps, x[k].cpu().numpy(), adv[k].cpu().numpy(), int(y[k]),
                                   int(y[k]), int(preds[k]), sample_id=int(batch[k]))) for k in chosen]

    def write(self, ctx: ModelRun, attack: str, eps: float, batch: list[int], y: torch.Tensor, out: StoredBatch) -> None:
        ctx.store.write_adv(ctx.name, attack, eps, batch, y.tolist(), out.preds, out.norms, seconds=out.seconds,
                            examples=out.examples, forward_passes=out.forward_passes,
                            backward_passes=out.backward_passes)

    def end_cell(self, ctx: ModelRun, cell: ClassCell, attacked: list[int]) -> list[int]:
        """Record a fixed-eps cell; its survivors (in attack order) are the next eps's targets."""
        still = [i for i in attacked if cell.correct[i]]
        if cell.draws:
            self.state.spread.append(verdict_spread(ctx, cell, attacked))
        self.state.examples.extend(cell.examples)
        self.state.add_cell(ctx, cell.attack, cell.eps, attacked, sorted(still), cell.seconds, cell.forward,
                            cell.backward, cell.norms)
        return still

    def end_once(self, ctx: ModelRun, cell: ClassCell, attacked: list[int], grid: list[float]) -> None:
        """One unbounded run gives each sample's smallest adversarial norm, hence the whole curve: a sample
        is robust at eps when no adversarial was found or the smallest one is larger than eps."""
        state = self.state
        norms = {i: float("inf") if cell.correct[i] else cell.norms[i] for i in attacked}
        # one run serves every eps: its seconds and passes are spread evenly over the eps rows, so that a
        # row sum (the column's cost) is the run's cost
        seconds = cell.seconds / len(grid)
        forwards, backwards = split_evenly(cell.forward, len(grid)), split_evenly(cell.backward, len(grid))
        state.minimal_norms[(ctx.name, cell.attack)] = norms
        state.examples.extend(cell.examples)
        for k, eps in enumerate(grid):
            # a hair of tolerance so float32 rounding of a perturbation projected to exactly eps never
            # counts a broken sample as robust (the safe direction)
            robust = sorted(i for i in attacked if norms[i] > eps * (1 + 1e-5))
            state.add_cell(ctx, cell.attack, eps, attacked, robust, seconds, forwards[k], backwards[k], norms)

    def stored_fit(self, ctx: ModelRun, a: AttackEntry, eps: float) -> tuple[dict[str, Any], Attack] | None:
        return None  # classification fits are not stored yet: a fit is redone when a batch needs it

    def save_fit(self, ctx: ModelRun, a: AttackEntry, eps: float, fit: dict[str, Any], attack: Attack) -> None:
        pass

    def result(self, state: RunState) -> ResultMatrix:
        return ResultMatrix.from_outcomes(state.outcomes, examples=state.examples, minimal_norms=state.minimal_norms)


def verdict_spread(ctx: ModelRun, cell: ClassCell, attacked: list[int]) -> dict[str, Any]:
    """How a cell judged over R draws of a randomized model's prediction varies: the robust count of each draw
    alone (``per_draw``, over the ``n`` audited samples), robust in every draw (the figure reported) and in
    at least one, and how many attacked samples were correct in exactly k of the R draws (``histogram[k]``).
    ``partial``: some batches were read back from the store (draws are not stored) and are left out."""
    rows = [cell.draws[i] for i in attacked if i in cell.draws]
    repeats = len(rows[0]) if rows else 0
    hist = [0] * (repeats + 1)
    for r in rows:
        hist[sum(r)] += 1
    per_draw = [sum(r[k] for r in rows) for k in range(repeats)]
    return {"model": ctx.name, "attack": cell.attack, "eps": cell.eps, "repeats": repeats, "n": ctx.n,
            "attacked": len(attacked), "robust_every_draw": sum(all(r) for r in rows),
            "robust_some_draw": sum(any(r) for r in rows), "per_draw": per_draw,
            "per_draw_min": min(per_draw, default=0), "per_draw_max": max(per_draw, default=0),
            "histogram": hist, "partial": cell.partial}


def without_column(state: RunState, model: str, attack: str) -> None:
    """Drop what a column stored in the run's classification accumulators (a skipped attack)."""
    state.outcomes = state.outcomes.without([(model, attack)])  # a partial column, if any
    state.examples = [e for e in state.examples if (e.model, e.attack) != (model, attack)]


__all__: Sequence[str] = ["ClassCell", "ClassScoring", "Scoring", "verdict_spread", "without_column"]
