"""The iterative engine: restarts, the active set, the best iterate per sample, compaction, early stop.

Every iterative search (PGD and its variants, APGD, Square, the segmentation PGD family, the
detector-aware attack, the adversarial-training inner loops) runs on :class:`IterativeSearch`, so an
attack writes only its step. Per restart, on the samples not yet broken::

    a = Active(...)                    # the restart's samples, their best-so-far, their state a[...]
    self._start(p, a, restart)         # the first point and the step rule's per-sample state
    for t in 0 .. self._last(p):
        q = self._query(p, a, t)       # the t-th iterate and what it scored (forward [+ backward])
        done, score, tier = self._judge(p, a, q)
        record                         # masked updates of the best iterate: no host sync
        if t is the last query: stop
        self._advance(p, a, t, q)      # the step rule: move the samples still alive
        if early_stop and self._compact_due(t):
            write back; drop the finished rows   # the one host sync, every few steps

A sample is *done* when ``_judge`` says so (for classification: adversarial); it then stops moving
(``a.alive`` turns false) and keeps that iterate. Among iterates of samples not done, a higher
``tier`` wins, then a higher ``score`` (``keep_last``: the newest iterate wins). Every tensor in the
state ``a[...]`` has one row per active sample and is compacted with the active set; values that are
not tensors are kept as they are, unless they have a ``keep(rows)`` method, which is called.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn as nn

from robustaudit.core.task import Task
from robustaudit.core.threat import ThreatModel


@dataclass
class Problem:
    """One batch under attack: ``x`` ``(N, C, H, W)``, ``y`` ``(N,)`` (or ``(N, H, W)``; ``None`` for a
    search that needs no labels), ``ids``
    ``(N,)`` on the CPU, ``targets`` like ``y`` or ``None``; ``seed`` keys the random draws."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor | None
    threat: ThreatModel
    targets: torch.Tensor | None
    ids: torch.Tensor
    task: Task
    seed: int = 0


class Query(NamedTuple):
    """One scored iterate: ``point`` ``(n, C, H, W)``, and whatever the attack computed there
    (``logits`` ``(n, K)``, per-sample objective ``obj`` ``(n,)``, input gradient ``grad``)."""

    point: torch.Tensor
    logits: torch.Tensor | None = None
    obj: torch.Tensor | None = None
    grad: torch.Tensor | None = None


@dataclass
class Best:
    """The result over all restarts, per sample: the kept iterate ``x`` ``(N, C, H, W)``, its ``score``
    and ``tier`` ``(N,)``, ``found`` ``(N,)`` (done at some iterate) and summed ``totals`` (``(N,)``
    counters such as queries)."""

    x: torch.Tensor
    score: torch.Tensor
    found: torch.Tensor
    tier: torch.Tensor
    totals: dict[str, torch.Tensor] = field(default_factory=dict)


class Active:
    """The samples of one restart still searched: positions ``idx`` ``(n,)`` in the batch, their ids
    (CPU), clean inputs, labels, targets, ``alive`` mask, best-so-far, the step rule's state
    (``a["name"]``) and ``tally`` counters (summed into :attr:`Best.totals` on write-back)."""

    def __init__(self, p: Problem, best: Best, idx: torch.Tensor, tallies: Iterable[str]) -> None:
        self.idx = idx
        self.ids = p.ids[idx.cpu()]
        self.x, self.y = p.x[idx], (p.y[idx] if p.y is not None else None)
        self.targets = p.targets[idx] if p.targets is not None else None
        self.best_x, self.score, self.found, self.tier = best.x[idx], best.score[idx], best.found[idx], best.tier[idx]
        self.alive = torch.ones(len(idx), dtype=torch.bool, device=p.x.device)
        #: the last judgement's raw ``done`` ``(n,)`` (before masking by ``alive``)
        self.done = torch.zeros_like(self.alive)
        self.state: dict[str, Any] = {}
        self.tally = {k: torch.zeros(len(idx), dtype=torch.long, device=p.x.device) for k in tallies}

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.state[key] = value

    def write_back(self, best: Best) -> None:
        """Copy this restart's best-so-far into ``best`` and add the tallies to its totals."""
        idx = self.idx
        best.x[idx], best.score[idx], best.found[idx], best.tier[idx] = self.best_x, self.score, self.found, self.tier
        for k, v in self.tally.items():
            best.totals[k][idx] += v
            self.tally[k] = torch.zeros_like(v)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only rows ``rows`` ``(m,)`` of everything per sample (the compaction)."""
        self.idx, self.ids = self.idx[rows], self.ids[rows.cpu()]
        self.x, self.y = self.x[rows], (self.y[rows] if self.y is not None else None)
        self.targets = self.targets[rows] if self.targets is not None else None
        self.best_x, self.score, self.found, self.tier = (
            self.best_x[rows], self.score[rows], self.found[rows], self.tier[rows])
        self.alive, self.done = self.alive[rows], self.done[rows]
        self.tally = {k: v[rows] for k, v in self.tally.items()}
        for k, v in self.state.items():
            if isinstance(v, torch.Tensor):
                self.state[k] = v[rows]
            elif hasattr(v, "keep"):
                v.keep(rows)


def view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(n,)`` mask -> broadcastable against ``like`` ``(n, ...)``."""
    return mask.view(-1, *[1] * (like.dim() - 1))


class IterativeSearch:
    """The engine. Subclasses write the hooks ``_start``, ``_last``, ``_query``, ``_judge``,
    ``_advance`` (and ``_compact_due`` when their compaction schedule differs) and call :meth:`search`.

    ``early_stop`` (freeze samples once done, restart only the samples not done, compact the active
    set) and ``compact_every`` are usually settings of the attack; the defaults here apply otherwise.
    """

    early_stop: bool = True
    compact_every: int = 5
    #: samples never done keep their newest iterate rather than their best-scored one
    keep_last: ClassVar[bool] = False

    # ------------------------------------------------------------------ the loop
    def search(self, p: Problem, restarts: Iterable[Any], *, found: torch.Tensor | None = None,
               tallies: Iterable[str] = ()) -> Best:
        """Run one restart per item of ``restarts`` (passed to ``_start``) on the samples not yet done.

        ``found`` ``(N,)`` marks samples done before any search (they keep ``x``; the tensor becomes
        ``best.found`` and is updated in place). ``tallies`` name per-sample counters. Returns the
        :class:`Best` over all restarts; ``best.x`` is the attack's result.
        """
        n, dev = p.x.shape[0], p.x.device
        best = Best(p.x.clone(), torch.full((n,), -math.inf, device=dev, dtype=p.x.dtype),
                    torch.zeros(n, dtype=torch.bool, device=dev) if found is None else found,
                    torch.zeros(n, dtype=torch.long, device=dev),
                    {k: torch.zeros(n, dtype=torch.long, device=dev) for k in tallies})
        for restart in restarts:
            # one host sync per restart: restarts only work on samples not yet broken
            todo = (~best.found).nonzero().squeeze(1) if self.early_stop else torch.arange(n, device=dev)
            if todo.numel() == 0:
                break
            self._run_restart(p, best, restart, Active(p, best, todo, best.totals))
        return best

    def _run_restart(self, p: Problem, best: Best, restart: Any, a: Active) -> None:
        self._start(p, a, restart)
        last = self._last(p)
        for t in range(last + 1):
            q = self._query(p, a, t)
            self._record(a, q.point, *self._judge(p, a, q))
            if t == last:
                break
            self._advance(p, a, t, q)
            if self.early_stop and self._compact_due(t):
                # write back, then drop the samples that are done (the one sync every few steps)
                a.write_back(best)
                keep = a.alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return
                if keep.numel() < len(a.idx):
                    a.keep(keep)
        a.write_back(best)

    def _record(self, a: Active, point: torch.Tensor, done: torch.Tensor, score: torch.Tensor,
                tier: torch.Tensor | None) -> None:
        # masked updates only: no host sync
        a.done = done
        hit = done & a.alive & ~a.found
        if self.keep_last:
            better = torch.ones_like(hit)
        elif tier is None:
            better = score > a.score
        else:  # a higher tier wins whatever the score; the score ranks within a tier
            better = (tier > a.tier) | ((tier == a.tier) & (score > a.score))
        take = hit | (better & ~a.found & a.alive)
        a.best_x = torch.where(view(take, point), point, a.best_x)
        a.score = torch.where(take, score, a.score)
        if tier is not None:
            a.tier = torch.where(take, tier, a.tier)
        a.found = a.found | hit
        if self.early_stop:
            a.alive = a.alive & ~hit

    # ------------------------------------------------------------------ hooks
    def _start(self, p: Problem, a: Active, restart: Any) -> None:
        """Set the first point and the step rule's state in ``a[...]`` for one restart."""
        raise NotImplementedError

    def _last(self, p: Problem) -> int:
        """Index of the last query of a restart (queries are numbered 0 .. last)."""
        raise NotImplementedError

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        """Produce the ``t``-th iterate of the active samples and score it."""
        raise NotImplementedError

    def _judge(self, p: Problem, a: Active, q: Query) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(done (n,) bool, score (n,), tier (n,) int64 or None)`` of a query."""
        raise NotImplementedError

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        """The step rule after query ``t`` (``a.alive`` already excludes samples done at ``t``)."""
        raise NotImplementedError

    def _compact_due(self, t: int) -> bool:
        """Whether to compact after query ``t`` (and its step): every ``compact_every`` steps."""
        return t > 0 and t % self.compact_every == 0


__all__ = ["Active", "Best", "IterativeSearch", "Problem", "Query", "view"]
