"""The detector-aware adaptive attack (Carlini & Wagner 2017): PGD against a classifier and its detector.

The attack needs no detector class: anything with ``model`` (the classifier), ``score(x, *,
differentiable, logits) -> (N,)``, ``threshold`` and ``scale`` is one (the detectors of
:mod:`robustaudit.defenses.detection` are). Called on a plain model it attacks the classifier alone
(no reject rule), which is how the contract test sees it.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.settings import MAX_RESTARTS, MAX_STEPS, Float, Int, Settings
from robustaudit.attacks.engine import Active, IterativeSearch, Problem, Query, view
from robustaudit.attacks.gradient import random_start
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.threat import ThreatModel


class RejectRule(Protocol):
    """A detector as the attack sees it: higher ``score`` is more suspicious; ``score > threshold``
    rejects; ``scale`` is the spread of clean scores (the unit of ``score - threshold``)."""

    model: nn.Module
    threshold: float
    scale: float

    def score(self, x: torch.Tensor, *, differentiable: bool = False,
              logits: torch.Tensor | None = None) -> torch.Tensor: ...


class Guarded(nn.Module):
    """A classifier and its reject rule as one model: ``forward`` is the classifier's (logits ``(N, K)``),
    ``detector`` the rule. Eval-mode handling reaches the classifier as a submodule."""

    def __init__(self, detector: RejectRule) -> None:
        super().__init__()
        self.classifier = detector.model
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class DetectorAwarePGD(Attack, IterativeSearch):
    """Linf/L2/L1 PGD on the combined objective (Carlini & Wagner 2017)

        ``min(max_{k != y} z_k - z_y, kappa) - lam * relu((score(x) - threshold) / scale + margin)``

    so the search first crosses the decision boundary and then pulls the score under the threshold
    (``scale``: the spread of clean validation scores, so one ``lam`` fits every detector). Success
    means **misclassified and accepted**; a sample is frozen at its first successful iterate, judged by
    the real forward pass (not the BPDA view through non-differentiable squeezers). A sample never
    broken gets the last iterate of the last restart (what a report's examples would show). The step
    starts at ``rel_step_size * eps`` (default half the radius) and decays (cosine) to 1/50 of that:
    small fixed steps never cross the rounding boundaries of a bit-depth squeezer, large ones never settle.

    ``attack(detector, x (N, C, H, W), y (N,), threat, ids=..., seed=...) -> (N, C, H, W)``; a plain
    model instead of a detector attacks the classifier alone.

    Example:
        >>> adv = DetectorAwarePGD(steps=20)(detector, x, y, ThreatModel("linf", 0.2))
    """

    name = "detector-aware-pgd"
    norms = ("linf", "l2", "l1")
    randomized = True
    keep_last = True
    SETTINGS = Settings(
        Int("steps", 50, "iterations per restart", 1, MAX_STEPS),
        Int("restarts", 1, "random restarts", 1, MAX_RESTARTS),
        Float("lam", 1.0, "weight of the detector term", 0),
        Float("kappa", 2.0, "cap of the classification margin", 0),
        Float("margin", 0.1, "how far under the threshold the score is pushed, in clean-score spreads", 0),
        Float("rel_step_size", None, "first step as a fraction of eps (default 0.5), cosine-decayed", 0,
              open_low=True, optional=True),
    )

    def __init__(self, *, steps: int = 50, restarts: int = 1, lam: float = 1.0, kappa: float = 2.0,
                 margin: float = 0.1, rel_step_size: float | None = None) -> None:
        DetectorAwarePGD.SETTINGS.apply(self, locals())

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, **kwargs: Any) -> torch.Tensor:
        """As every attack; ``model`` may also be a detector (a :class:`RejectRule`), attacked with its classifier."""
        if not isinstance(model, nn.Module) and hasattr(model, "score"):
            model = Guarded(model)
        return super().__call__(model, x, y, threat, **kwargs)

    def success(self, detector: RejectRule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: misclassified by the classifier AND accepted by the detector."""
        with torch.no_grad(), eval_mode(detector.model):
            wrong = detector.model(x).argmax(1) != y
        return wrong & ~detector.reject(x)

    def alphas(self, eps: float) -> list[float]:
        """The step size of each step at radius ``eps``: cosine decay from ``top * eps`` to ``top * eps / 50``."""
        top = self.rel_step_size if self.rel_step_size is not None else 0.5
        return [eps * (0.02 * top / 0.5 + (top - 0.02 * top / 0.5) * 0.5 * (1 + math.cos(math.pi * t / self.steps)))
                for t in range(self.steps)]

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        if targets is not None:
            raise UserError(f"attack '{self.name}' is untargeted: it takes no targets")
        problem = Problem(model, x, y, threat, None, ids, task, seed)
        with torch.no_grad():  # a sample already misclassified and accepted keeps x
            found = self._judge(problem, None, Query(x, model(x)))[0]
        return self.search(problem, range(self.restarts), found=found).x

    # ------------------------------------------------------------------ the engine's hooks
    def _start(self, p: Problem, a: Active, restart: int) -> None:
        a["xa"] = random_start(a.x, a.ids, p.threat, self.stream(p.seed, p.threat, restart))
        a["alphas"] = self.alphas(p.threat.eps)  # a list: not compacted

    def _last(self, p: Problem) -> int:
        return self.steps  # the last step's point is judged too

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        if t == self.steps:
            with torch.no_grad():
                return Query(a["xa"], p.model(a["xa"]))
        xa = a["xa"].detach().requires_grad_(True)
        logits = p.model(xa)
        true = logits.gather(1, a.y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(a.y, logits.shape[1]).bool(), -math.inf).amax(1)
        obj = (other - true).clamp_max(self.kappa)
        detector = getattr(p.model, "detector", None)
        if detector is not None:
            s = detector.score(xa, differentiable=True, logits=logits)
            obj = obj - self.lam * F.relu((s - detector.threshold) / detector.scale + self.margin)
        (grad,) = torch.autograd.grad(obj.sum(), xa)
        return Query(xa.detach(), logits.detach(), obj.detach(), grad)

    def _judge(self, p: Problem, a: Active | None, q: Query) -> tuple[torch.Tensor, torch.Tensor, None]:
        y = p.y if a is None else a.y
        detector = getattr(p.model, "detector", None)
        with torch.no_grad():
            # judged by the real forward (BPDA only shaped the gradient)
            ok = q.logits.argmax(1) != y
            if detector is not None:
                ok = ok & ~(detector.score(q.point) > detector.threshold)
        # unbroken samples keep their newest iterate (keep_last): the score ranks nothing
        return ok, torch.zeros(len(ok), dtype=q.point.dtype, device=q.point.device), None

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        threat, xo = p.threat, a.x
        with torch.no_grad():
            moved = q.point + a["alphas"][t] * ascent_direction(q.grad, threat.norm)
            moved = clip_to_bounds(xo + project(moved - xo, threat.norm, threat.eps), threat.bounds)
        # samples already broken stop moving: frozen at their successful point
        a["xa"] = torch.where(view(a.alive, moved), moved, q.point)

    def _compact_due(self, t: int) -> bool:
        return (t + 1) % self.compact_every == 0 and t + 1 < self.steps


__all__ = ["DetectorAwarePGD", "Guarded", "RejectRule"]
