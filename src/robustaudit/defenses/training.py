"""Training loops that produce models: standard training and PGD adversarial training (Madry et al.).

The shipped catalog weights come from here (``scripts/train_default_models.py``), so anyone can
reproduce them bit for bit on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustaudit.attacks.gradient import PGD
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel

DEFENSES: tuple[str, ...] = ("standard", "pgd-at")


@dataclass
class TrainConfig:
    """Settings of one training run. ``eps`` and ``attack_steps`` only matter for ``pgd-at``."""

    defense: str = "standard"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    eps: float = 0.2
    norm: str = "linf"
    attack_steps: int = 10
    #: epochs over which eps ramps linearly from 0 to ``eps`` (helps PGD-AT converge on small data)
    eps_warmup: int = 5
    seed: int = 0


@dataclass
class TrainLog:
    """Per-epoch training loss and accuracy (on the, possibly adversarial, training batches)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainLog:
    """Train ``model`` in place on ``x`` ``(N, C, H, W)`` in [0, 1] and labels ``y`` ``(N,)``.

    Deterministic for a given seed on a given device: batch order comes from a seeded generator and
    PGD-AT's random starts from keyed streams (sample id, epoch).
    """
    if config.defense not in DEFENSES:
        raise UserError(f"unknown defense '{config.defense}'; known: {', '.join(DEFENSES)}")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    log = TrainLog()
    start = time.perf_counter()
    n = x.shape[0]
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        eps = config.eps * min(1.0, (epoch + 1) / max(1, config.eps_warmup))
        attack = PGD(steps=config.attack_steps, early_stop=False)
        total_loss, total_correct = 0.0, 0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb, yb = x[idx], y[idx]
            if config.defense == "pgd-at":
                # the attack puts the model in eval mode and restores training mode afterwards
                xb = attack(model, xb, yb, ThreatModel(config.norm, eps), ids=idx, seed=config.seed + epoch)
            model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            total_correct += int((logits.argmax(1) == yb).sum())
        sched.step()
        log.loss.append(total_loss / n)
        log.accuracy.append(total_correct / n)
        if on_epoch is not None:
            on_epoch(epoch, log.loss[-1], log.accuracy[-1])
    model.eval()
    log.seconds = time.perf_counter() - start
    return log
