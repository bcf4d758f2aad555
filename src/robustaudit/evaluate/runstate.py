"""What one run of the runner carries: per model, what its attack columns share (:class:`ModelRun`); over
the whole run, what it accumulates (:class:`RunState`: the per-sample outcomes every figure is
aggregated from, examples, fits, resume counts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.task import Task
from robustaudit.data.base import ImageData
from robustaudit.evaluate.aggregate import CellOutcome, Outcomes
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.cost import PassCounter
from robustaudit.evaluate.entries import Progress
from robustaudit.evaluate.result import Example
from robustaudit.evaluate.samples import Samples
from robustaudit.evaluate.store import Store


@dataclass
class ModelRun:
    """What every column of one model shares."""

    name: str
    model: nn.Module
    samples: Samples
    dev: torch.device
    seed: int
    store: Store | None
    bar: Progress
    task: Task
    n: int
    n_clean: int
    norm: str
    state: RunState
    #: the model as attacks get it: counts their forward and backward passes
    counter: PassCounter
    #: inputs go to the device in channels_last (the model's weights are)
    nhwc: bool = False
    #: the task's store-and-aggregate side (:mod:`robustaudit.evaluate.scoring`)
    scoring: Any = None


@dataclass
class RunState:
    """What the run accumulates: per-sample outcomes, examples, minimal norms, and how many batches were
    read back from the store (``reused``) or computed."""

    example_eps: float
    examples_per_cell: int
    reuse: bool = False
    reused: int = 0
    computed: int = 0
    outcomes: Outcomes = field(default_factory=Outcomes)
    examples: list[Example] = field(default_factory=list)
    minimal_norms: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    train_data: ImageData | None = None
    #: universal attacks fitted per (model, attack, eps) and what each fit cost (saved, reloaded on resume)
    artifacts: Artifacts = field(default_factory=Artifacts)
    #: out-of-memory halvings (model, attack, eps, from, to) and the attack chunk size that last fit,
    #: per (model, attack): later batches start there instead of running out of memory again
    halvings: list[dict[str, Any]] = field(default_factory=list)
    chunks: dict[tuple[str, str], int] = field(default_factory=dict)
    #: the cascade across columns (``run(standing=...)``): per eps, the ids every column so far left standing
    standing: dict[float, set[int]] | None = None
    #: per cell judged over repeated draws (``EOT(judge=R)``): the spread of its verdict (``provenance["verdict_spread"]``)
    spread: list[dict[str, Any]] = field(default_factory=list)

    def add_cell(self, ctx: ModelRun, attack: str, eps: float, attacked: list[int], robust: list[int], seconds: float,
                 forward: int, backward: int, norms: dict[int, float]) -> None:
        """Record one cell's per-sample outcome (and, with a store, its summary row); a universal attack's
        cell also carries what its one-off fit cost (from the fit record, stored or fresh)."""
        self.outcomes.cells.append(CellOutcome(ctx.name, attack, eps, ctx.norm, list(attacked), list(robust), seconds,
                                               forward, backward, norms,
                                               fit_seconds=self.artifacts.fit_seconds((ctx.name, attack, eps))))
        if ctx.store is not None:
            ctx.store.write_cell(ctx.name, attack, eps, seconds, len(attacked), len(robust), forward_passes=forward,
                                 backward_passes=backward)
