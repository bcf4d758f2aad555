"""The training loop and the registry of training-time defenses.

One loop serves every defense: the defense decides what one minibatch costs (its loss, or for
Free-AT its own replayed optimizer steps); the loop owns batch order, the eps warm-up, the optimizer
and schedule, augmentation, and Fast-AT's guard against catastrophic overfitting.

============================  ===================================================================
``standard``                  cross-entropy on clean inputs
``pgd-at``                    Madry et al. 2018: cross-entropy on PGD examples
``trades``                    Zhang et al. 2019: CE(f(x), y) + beta * KL(f(x) || f(x'))
``mart``                      Wang et al. 2020: boosted CE on x' + beta * KL weighted by 1 - p_y(x)
``fast-at``                   Wong et al. 2020: FGSM from a random start, step 1.25 eps, with guard
``free-at``                   Shafahi et al. 2019: each minibatch replayed m times, epochs / m
``input-grad``                CE + lam * ||grad_x CE||^2 (double backprop)
``jacobian``                  CE + lam * random-projection Jacobian norm (Hoffman et al. 2019)
``label-smoothing``           CE against labels smoothed by alpha
============================  ===================================================================

Defense settings are keyword-only constructor arguments, written inline like attack settings:
``trades:beta=6,steps=10``. The shipped catalog weights come from here
(``scripts/train_default_models.py``), so anyone can reproduce them bit for bit on a CPU.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustaudit.core.errors import UserError, suggest, unknown
from robustaudit.core.rng import stream_key
from robustaudit.core.threat import ThreatModel

log = logging.getLogger("robustaudit.defenses")

#: name -> "module:Class", imported on first use (explicit, no import side effects)
_BUILTIN: dict[str, str] = {
    "standard": "robustaudit.defenses.training:Standard",
    "pgd-at": "robustaudit.defenses.adversarial:PGDAT",
    "trades": "robustaudit.defenses.adversarial:TRADES",
    "mart": "robustaudit.defenses.adversarial:MART",
    "fast-at": "robustaudit.defenses.adversarial:FastAT",
    "free-at": "robustaudit.defenses.adversarial:FreeAT",
    "input-grad": "robustaudit.defenses.regularizers:InputGradient",
    "jacobian": "robustaudit.defenses.regularizers:Jacobian",
    "label-smoothing": "robustaudit.defenses.regularizers:LabelSmoothing",
}
DEFENSES: tuple[str, ...] = tuple(_BUILTIN)


@dataclass(frozen=True)
class BatchContext:
    """What a defense may know about the minibatch it trains on.

    ``ids`` ``(B,)`` are the samples' stable ids (their index in the training set): every random
    draw is keyed by (seed, defense, epoch, id), so results do not depend on batch composition.
    ``threat`` carries the eps of this epoch (after warm-up).
    """

    epoch: int
    threat: ThreatModel
    seed: int
    ids: torch.Tensor

    def key(self, *parts: object) -> int:
        """A random-stream key for this epoch: (seed, epoch, *parts)."""
        return stream_key(self.seed, self.epoch, *parts)


class Defense:
    """A training-time defense: the loss of one minibatch (and, rarely, its own optimizer steps).

    Subclasses set ``name``, ``adversarial`` (trains against a threat model, so needs eps) and
    implement :meth:`loss`. Settings are keyword-only ``__init__`` arguments, shown by ``repr``.
    """

    name: ClassVar[str] = ""
    adversarial: ClassVar[bool] = False
    #: optimizer steps per minibatch (Free-AT replays each minibatch m times)
    replays: int = 1
    #: Fast-AT's guard: held-out samples whose PGD accuracy is checked after every epoch (0: off)
    guard_size: int = 0
    guard_drop: float = 0.2

    def settings(self) -> dict[str, Any]:
        """The constructor settings and their values."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self"}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({inner})"

    def epochs(self, requested: int) -> int:
        """Epochs to run for ``requested`` (Free-AT divides by its replays)."""
        return requested

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, H, W)``, ``y`` ``(B,)`` -> (scalar loss to minimise, logits ``(B, K)`` whose
        accuracy is reported). Called with the model in training mode."""
        raise NotImplementedError

    def train_batch(
        self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext
    ) -> tuple[float, int]:
        """One minibatch: returns (sum of the per-sample loss, number of correct predictions)."""
        loss, logits = self.loss(model, x, y, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item() * len(y), int((logits.argmax(1) == y).sum())


class Standard(Defense):
    """Plain empirical risk minimisation: cross-entropy on the clean inputs."""

    name = "standard"

    def __init__(self) -> None:
        pass

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        logits = model(x)
        return F.cross_entropy(logits, y), logits


# ------------------------------------------------------------------------------------------- registry


def defense_class(name: str) -> type[Defense]:
    """The class of defense ``name`` (close-match suggestion on typos)."""
    if name not in _BUILTIN:
        raise unknown("defense", name, _BUILTIN)
    module, _, cls = _BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def defense_names() -> list[str]:
    """Names of the training-time defenses."""
    return list(_BUILTIN)


def _literal(raw: str) -> Any:
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw.strip()


def parse_defense(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"trades:beta=6,steps=10"`` into ``("trades", {"beta": 6, "steps": 10})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"defense must be a name like 'pgd-at' or 'trades:beta=6', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    settings: dict[str, Any] = {}
    for item in (s.strip() for s in rest.split(",")):
        if not item:
            continue
        key, eq, raw = (p.strip() for p in item.partition("="))
        if not eq or not key or not raw:
            raise UserError(f"defense '{spec}': setting '{item}' is not KEY=VALUE (e.g. trades:beta=6)")
        if key in settings:
            raise UserError(f"defense '{spec}': setting '{key}' given twice")
        settings[key] = _literal(raw)
    return name.strip().lower(), settings


def make_defense(name: str, settings: dict[str, Any] | None = None) -> Defense:
    """Build defense ``name`` with ``settings``; unknown settings get a close-match suggestion."""
    cls = defense_class(name)
    settings = dict(settings or {})
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in settings:
        if key not in params:
            listing = f"; valid: {', '.join(params)}" if params else "; it takes none"
            raise UserError(f"defense '{name}' has no setting '{key}'{suggest(key, params)}{listing}")
    try:
        return cls(**settings)
    except TypeError as err:  # a setting of the wrong type that the class did not catch itself
        raise UserError(f"defense '{name}': {err}") from None


def check_weight(name: str, value: float) -> float:
    """Validate a non-negative finite weight of a loss term (user input: a UserError, not an assert)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_steps(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainConfig:
    """Settings of one training run.

    ``defense`` names a registered defense and ``settings`` holds its own settings (``beta`` of
    TRADES...). ``eps``/``norm``/``attack_steps``/``eps_warmup`` only matter for adversarial
    defenses; ``attack_steps`` is the default ``steps`` of those that take one.
    """

    defense: str = "standard"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    eps: float = 0.2
    norm: str = "linf"
    attack_steps: int = 10
    #: epochs over which eps ramps linearly from 0 to ``eps`` (helps adversarial training converge
    #: on small data); capped at ``epochs`` so a short run still ends at the full eps
    eps_warmup: int = 5
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    #: random translation (small images) or crop + flip (larger ones), keyed per sample and epoch
    augment: bool = False

    def record(self) -> dict[str, Any]:
        """The settings as JSON-ready built-ins (for manifests and model cards)."""
        out = dict(vars(self))
        # the manifests of the shipped weights predate these keys; leave them out when unused
        if not out["settings"]:
            out.pop("settings")
        if not out["augment"]:
            out.pop("augment")
        return out

    def build(self) -> Defense:
        """The configured defense, with ``attack_steps`` as the default of a ``steps`` setting."""
        settings = dict(self.settings)
        cls = defense_class(self.defense)
        if "steps" in inspect.signature(cls.__init__).parameters and "steps" not in settings:
            settings["steps"] = self.attack_steps
        return make_defense(self.defense, settings)


@dataclass
class TrainLog:
    """Per-epoch training loss and accuracy (on the, possibly adversarial, training batches).

    ``guard_accuracy`` is Fast-AT's held-out PGD accuracy per epoch; ``events`` are one-line notes
    (a rollback); ``optimizer_steps`` counts every parameter update (Free-AT: m per minibatch).
    """

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    guard_accuracy: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rolled_back_to: int | None = None
    optimizer_steps: int = 0


def guard_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int) -> float:
    """PGD-10 accuracy of ``model`` on the held-out guard batch ``x`` ``(G, C, H, W)``, ``y`` ``(G,)``.

    A module-level function so that a test can plant a collapse.
    """
    from robustaudit.attacks.gradient import PGD

    adv = PGD(steps=10)(model, x, y, threat, seed=seed)
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = float((model(adv).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainLog:
    """Train ``model`` in place on ``x`` ``(N, C, H, W)`` in [0, 1] and labels ``y`` ``(N,)``.

    Deterministic for a given seed on a given device: batch order comes from a seeded generator,
    every random draw of a defense (random starts, projections, augmentation) from keyed streams
    (seed, epoch, sample id), dropout from the global generator seeded here. ``on_epoch(epoch, loss,
    accuracy)`` is called after every epoch. The model is left in eval mode.
    """
    defense = config.build()
    if config.epochs < 1 or config.batch_size < 1:
        raise UserError(f"epochs and batch size must be >= 1, got {config.epochs} and {config.batch_size}")
    if defense.adversarial and not config.eps > 0:
        raise UserError(f"defense '{config.defense}' trains against a threat model: give eps > 0")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    epochs = defense.epochs(config.epochs)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history = TrainLog()
    start = time.perf_counter()
    x, y, ids_all, guard = _hold_out_guard(x, y, defense.guard_size, config.seed)
    n = x.shape[0]
    warmup = max(1, min(config.eps_warmup, epochs))
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        eps = config.eps * min(1.0, (epoch + 1) / warmup)
        threat = ThreatModel(config.norm, eps)
        total_loss, total_correct = _epoch(model, opt, defense, (x, y, ids_all), order, threat, config, epoch, history)
        sched.step()
        history.loss.append(total_loss / n)
        history.accuracy.append(total_correct / n)
        if on_epoch is not None:
            on_epoch(epoch, history.loss[-1], history.accuracy[-1])
        if guard is not None:
            best, stop = _guard_epoch(model, guard, config, defense.guard_drop, epoch, best, history)
            if stop:
                break
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def _hold_out_guard(x: torch.Tensor, y: torch.Tensor, guard_size: int, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(x, y, ids, guard)``: the training samples ``(N', ...)`` with their ids ``(N',)`` and the held-out
    guard batch ``(x_g, y_g)`` of ``guard_size`` samples (``None`` when 0)."""
    ids_all = torch.arange(x.shape[0])
    guard = None
    if guard_size > 0:
        # held out: the guard must see samples the model does not train on, or it measures memory
        cut = max(1, x.shape[0] - guard_size)
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(stream_key(seed, "guard")))
        held, kept = order[cut:].sort().values, order[:cut].sort().values
        guard = (x[held], y[held])
        x, y, ids_all = x[kept], y[kept], ids_all[kept]
    return x, y, ids_all, guard


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, defense: Defense,
           data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], order: torch.Tensor, threat: ThreatModel,
           config: TrainConfig, epoch: int, history: TrainLog) -> tuple[float, int]:
    """One epoch over ``data`` = ``(x, y, ids)`` in batch ``order``; ``(summed loss, correct count)``."""
    x, y, ids_all = data
    total_loss, total_correct = 0.0, 0
    for i in range(0, x.shape[0], config.batch_size):
        idx = order[i : i + config.batch_size]
        xb, yb, ids = x[idx], y[idx], ids_all[idx]
        if config.augment:
            from robustaudit.defenses.augment import augment

            xb = augment(xb, ids, stream_key(config.seed, epoch, "augment"))
        model.train()
        loss_sum, correct = defense.train_batch(model, opt, xb, yb, BatchContext(epoch, threat, config.seed, ids))
        history.optimizer_steps += defense.replays
        total_loss += loss_sum
        total_correct += correct
    return total_loss, total_correct


def _guard_epoch(model: nn.Module, guard: tuple[torch.Tensor, torch.Tensor], config: TrainConfig, drop: float,
                 epoch: int, best: tuple[float, int, dict[str, torch.Tensor]] | None, history: TrainLog
                 ) -> tuple[tuple[float, int, dict[str, torch.Tensor]] | None, bool]:
    """Fast-AT's guard after ``epoch``: ``(best, stop)``; on a fall of more than ``drop`` below the best
    accuracy, the model is rolled back to the best epoch and ``stop`` is True."""
    # always at the full training eps: the collapse shows there first
    acc = guard_accuracy(model, guard[0], guard[1], ThreatModel(config.norm, config.eps), config.seed)
    history.guard_accuracy.append(acc)
    if best is None or acc >= best[0]:
        return (acc, epoch, copy.deepcopy(model.state_dict())), False
    if acc < best[0] - drop:
        model.load_state_dict(best[2])
        history.rolled_back_to = best[1]
        note = (f"catastrophic overfitting: held-out PGD accuracy fell from {best[0]:.3f} (epoch "
                f"{best[1] + 1}) to {acc:.3f} (epoch {epoch + 1}); stopped and rolled back to epoch {best[1] + 1}")
        history.events.append(note)
        log.warning(note)
        return best, True
    return best, False
