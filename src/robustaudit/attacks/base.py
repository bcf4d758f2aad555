"""The Attack contract: settings at construction, the model at call time.

``adv = attack(model, x, y, threat, *, targets=None, ids=None, seed=0)`` returns a tensor of
``x``'s shape, device and dtype inside the threat model's ball and bounds. The base class owns what
every attack must get right — validation, eps = 0, eval mode, the final projection — so a subclass
writes only its search (``_run``).
"""

from __future__ import annotations

import enum
import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import torch
import torch.nn as nn

from robustaudit.attacks.settings import Settings, conform
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import clip_to_bounds, project
from robustaudit.core.rng import stream_key
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel


class AttackKind(str, enum.Enum):
    """What an attack promises; the contract test is parametrized by it."""

    FIXED_EPS = "fixed-eps"  # a point inside the eps-ball, the best found
    MINIMAL_NORM = "minimal-norm"  # keeps shrinking the perturbation after the first success
    UNIVERSAL = "universal"  # fit on training data, then applied (patch, UAP, generator)
    SCORE_BASED = "score-based"  # black-box, logits only
    DECISION_BASED = "decision-based"  # black-box, labels only
    TRANSFER = "transfer"  # crafted on surrogates


class Attack(ABC):
    """Base class of all attacks. Subclasses declare ``SETTINGS`` (attacks/settings.py), take them as
    keyword-only ``__init__`` parameters and define ``_run``."""

    name: ClassVar[str] = "attack"
    kind: ClassVar[AttackKind] = AttackKind.FIXED_EPS
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    #: Whether the attack draws random numbers (random start, restarts...).
    randomized: ClassVar[bool] = False
    #: Whether a sample's result is the same whatever batch it is in (keyed randomness, per-sample
    #: bookkeeping). The contract test holds every attack that claims it to it.
    batch_independent: ClassVar[bool] = True
    #: Whether the attack climbs the untargeted objective (any wrong class). False for one that steers each
    #: sample towards one chosen class (ILLC's least-likely class): one untargeted gradient step may beat it
    #: by design, so the iterative-vs-single-step check does not hold it to FGSM.
    untargeted_objective: ClassVar[bool] = True

    #: The declaration of the ``__init__`` settings (type, range, default, doc): ``__init__`` validates
    #: and stores them with ``<Class>.SETTINGS.apply(self, locals())``; it drives :meth:`settings`,
    #: ``repr`` and ``robustaudit list attacks NAME``.
    SETTINGS: ClassVar[Settings] = Settings()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a declaration that disagrees with the signature fails here, at import, not in a user's audit
        cls.SETTINGS = conform(cls, getattr(cls, "SETTINGS", None))

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """The construction settings, as declared (shown by ``repr``, stored in results)."""
        if self.SETTINGS.inferred:  # a class without a declaration: its __init__ parameters, as given
            params = inspect.signature(type(self).__init__).parameters
            return {k: getattr(self, k) for k in params if k != "self" and hasattr(self, k)}
        return {s.name: getattr(self, s.name) for s in self.SETTINGS if s.init and hasattr(self, s.name)}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({inner})"

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        *,
        targets: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        seed: int = 0,
        task: Task = CLASSIFICATION,
    ) -> torch.Tensor:
        """Attack a batch.

        Args:
            model: returns logits ``(N, K)`` for inputs ``(N, C, H, W)`` in ``threat.bounds``.
            x: clean inputs ``(N, C, H, W)``.
            y: labels ``(N,)`` (int64).
            threat: norm, radius and bounds.
            targets: target classes ``(N,)`` for a targeted attack; ``None`` for untargeted.
            ids: stable sample ids ``(N,)`` keying every random draw (default ``arange(N)``), so a
                sample's result does not depend on its batch.
            seed: the audit's seed.
        Returns:
            Adversarial inputs, same shape, device and dtype as ``x``.
        """
        if threat.norm not in self.norms:
            raise UserError(
                f"attack '{self.name}' supports norms {', '.join(self.norms)}, not '{threat.norm}'"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        if threat.eps == 0 or x.shape[0] == 0:
            return x.clone()
        if ids is None:
            ids = torch.arange(x.shape[0])
        x0 = x.detach()
        # the guard: eval mode during the attack, each submodule's own flag restored afterwards;
        # gradients are taken with autograd.grad w.r.t. the input only, so parameters' .grad stay untouched
        with eval_mode(model), torch.enable_grad():
            adv = self._run(model, x0, y, threat, targets, ids.cpu(), seed, task)
        # enforce the contract exactly, whatever float drift the search accumulated;
        # clipping after projecting only shrinks each coordinate of the perturbation, so both hold
        adv = clip_to_bounds(x0 + project(adv.detach() - x0, threat.norm, threat.eps), threat.bounds)
        return adv.to(dtype=x.dtype)

    @abstractmethod
    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        targets: torch.Tensor | None,
        ids: torch.Tensor,
        seed: int,
        task: Task,
    ) -> torch.Tensor:
        """The search itself; ``x`` is detached, the model in eval mode, grad enabled."""

    # ------------------------------------------------------------------ helpers for subclasses
    def stream(self, seed: int, threat: ThreatModel, restart: int) -> int:
        """The random-stream key of one restart: (seed, attack, eps, restart); sample ids come on top."""
        return stream_key(seed, self.name, threat.norm, threat.eps, restart)


class TrainingData(Protocol):
    """What a universal attack is fitted on: a labelled set addressable by index (an ``ImageData``)."""

    def __len__(self) -> int: ...

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, C, H, W)`` in [0, 1] and labels ``(B,)`` (or masks ``(B, H, W)``)."""
        ...


class FitProgress(Protocol):
    """What a fit reports its progress to (the runner passes its progress bar)."""

    def start(self, description: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...


class UniversalAttack(Attack):
    """A two-phase attack: ``fit`` learns one artifact (a patch, a universal perturbation, a generator)
    on *training* data against one model at one threat model; the returned attack applies it.

    The runner fits once per (model, attack, eps) on the audit's training split, never on the audited
    samples, and attacks the audited samples with the fitted attack (whose kind is ``FIXED_EPS``: one
    pass, inside the ball). Calling an unfitted universal attack is an error: fitting on the very
    images it is evaluated on would measure a per-image attack, not the universal one.
    """

    kind: ClassVar[AttackKind] = AttackKind.UNIVERSAL

    @abstractmethod
    def fit(
        self,
        model: nn.Module,
        train: TrainingData,
        threat: ThreatModel,
        *,
        seed: int = 0,
        task: Task = CLASSIFICATION,
        device: torch.device | str = "cpu",
        progress: FitProgress | None = None,
    ) -> Attack:
        """Fit against ``model`` (eval mode, on ``device``) on ``train``; return the fitted attack.

        The fitted attack may offer ``save(path)`` (the runner's caller writes the artifact under
        ``--out``) and must be deterministic given ``seed``.
        """

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        raise UserError(f"attack '{self.name}' is universal: it is fitted on training data as a column of its own "
                        f"(--attack {self.name}), not run inside another attack; in Python, fit it first "
                        "(attack.fit(...))")


def success(task: Task, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Per-sample success: misclassified (untargeted) or classified as the target. ``(N,)`` bool."""
    if targets is None:
        return ~task.correct(logits, y)
    return task.correct(logits, targets)


def attack_loss(
    task: Task, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, loss: str
) -> torch.Tensor:
    """Per-sample objective to maximise. ``loss``: ``ce`` (cross-entropy) or ``margin`` (C&W-style).

    Targeted attacks maximise the negative loss towards the target. ``(N, K) -> (N,)``.
    """
    if loss == "ce":
        return task.loss(logits, y) if targets is None else -task.loss(logits, targets)
    if loss == "margin":
        return -task.margin(logits, y) if targets is None else task.margin(logits, targets)
    raise UserError(f"unknown loss '{loss}'; known: ce, margin")
