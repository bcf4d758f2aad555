"""APGD and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): PGD with momentum and a step size that adapts itself.

Section numbers and equations below refer to that paper (ICML 2020, arXiv:2003.01690).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustaudit.attacks.apgd_steps import StepSizeControl, checkpoints
from robustaudit.attacks.base import Attack, attack_loss, success
from robustaudit.attacks.settings import MAX_CLASSES, MAX_RESTARTS, MAX_STEPS, Bool, Choice, Float, Int, Settings
from robustaudit.attacks.dlr import check_logits, dlr_loss, dlr_loss_targeted
from robustaudit.attacks.engine import Active, IterativeSearch, Problem, Query, view
from robustaudit.core.errors import UserError
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.rng import keyed_normal, keyed_uniform
from robustaudit.core.task import Task
from robustaudit.core.threat import ThreatModel

_LOSSES = ("ce", "dlr")


# ---------------------------------------------------------------------------------------- attack
def _start(x: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, key: int) -> torch.Tensor:
    """APGD's random start, keyed by sample id: on the sphere of radius eps, then clipped.

    Linf: ``eps * t / ||t||_inf`` with ``t`` uniform in ``[-1, 1]^d``; L2: ``eps * g / ||g||_2`` with
    ``g`` Gaussian (as in the authors' code: starting on the boundary, where the maxima usually are).
    """
    shape = tuple(x.shape[1:])
    if threat.norm == "linf":
        t = 2 * keyed_uniform(ids, shape, key, device=x.device, dtype=x.dtype) - 1
        scale = t.reshape(len(t), -1).abs().amax(dim=1).clamp_min(1e-12)
    else:
        t = keyed_normal(ids, shape, key, device=x.device, dtype=x.dtype)
        scale = t.reshape(len(t), -1).norm(dim=1).clamp_min(1e-12)
    delta = threat.eps * t / scale.view(-1, *[1] * (x.dim() - 1))
    return clip_to_bounds(x + delta, threat.bounds)


def _check_finite_eps(name: str, threat: ThreatModel) -> None:
    if not math.isfinite(threat.eps):
        raise UserError(f"attack '{name}' needs a finite eps (it searches inside the ball), got {threat.eps}")


class APGD(Attack, IterativeSearch):
    """Auto-PGD (Croce & Hein 2020, Algorithm 1): PGD with momentum and a self-adapting step size.

    From a random start on the eps-sphere, the first step has size ``eta = 2 * eps``; then (Eq. 2)::

        z       = P(x_k + eta * dir(grad f(x_k)))
        x_{k+1} = P(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_{k-1}))

    with ``P`` the projection onto the ball and the bounds and ``dir`` the steepest-ascent direction
    of the norm (sign for Linf). At the checkpoints of :func:`checkpoints` the step size of a sample
    halves per :class:`StepSizeControl`, and such a sample restarts from its best point.

    Per sample: a sample stops moving once adversarial (``early_stop``) and its first adversarial
    iterate is kept; samples never broken get their highest-loss iterate over all restarts. Restarts
    run only on samples still unbroken. Cost: ``steps`` forward+backward passes and one forward pass
    per sample per restart, fewer for samples broken early (they leave the batch within
    ``compact_every`` steps).

    Settings (keyword-only):
        steps: iterations per restart (``N_iter``).
        restarts: random restarts.
        loss: ``ce`` (cross-entropy) or ``dlr`` (difference of logits ratio, Eq. 6; targeted Eq. 7
            when ``targets`` are given).
        rho: condition 1's threshold on the fraction of steps that increased the loss.
        alpha: momentum weight of the new step (``1 - alpha`` goes to the previous move).
        early_stop: freeze samples once adversarial and drop them every ``compact_every`` steps
            (the only host synchronisation in the loop).
        compact_every: steps between compactions of the active set.

    Example:
        >>> from robustaudit.models.catalog import create_model
        >>> from robustaudit.data.digits import digits_split
        >>> from robustaudit.core.threat import ThreatModel
        >>> model = create_model("digits-cnn")
        >>> x, y = digits_split("test").load(range(32))    # (32, 1, 8, 8) in [0, 1], (32,)
        >>> adv = APGD(steps=20, loss="dlr")(model, x, y, ThreatModel("linf", 0.2))
        >>> adv.shape
        torch.Size([32, 1, 8, 8])
    """

    name = "apgd"
    norms = ("linf", "l2")
    randomized = True
    SETTINGS = Settings(
        Int("steps", 100, "iterations per restart (N_iter)", 1, MAX_STEPS),
        Int("restarts", 1, "random restarts, on samples still unbroken", 1, MAX_RESTARTS),
        Choice("loss", "ce", "ce (cross-entropy) or dlr (difference of logits ratio)", _LOSSES),
        Float("rho", 0.75, "share of loss-increasing steps below which the step size halves", 0, 1),
        Float("alpha", 0.75, "momentum weight of the new step", 0, 1, open_low=True),
        Bool("early_stop", True, "freeze samples once adversarial"),
        Int("compact_every", 5, "steps between drops of finished samples from the batch (a host sync)", 1, MAX_STEPS),
    )

    def __init__(
        self,
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        alpha: float = 0.75,
        early_stop: bool = True,
        compact_every: int = 5,
    ) -> None:
        APGD.SETTINGS.apply(self, locals())

    # ------------------------------------------------------------------ objective
    def _objective(
        self,
        task: Task,
        logits: torch.Tensor,
        y: torch.Tensor,
        loss_targets: torch.Tensor | None,
        to_target: bool,
    ) -> torch.Tensor:
        """Per-sample loss to maximise ``(N,)``, towards ``loss_targets`` when given.

        ``to_target``: success means being classified as the target (targets given by the caller),
        so the targeted DLR opposes the target to its strongest rival rather than to the true class
        (the same loss while the true class is the rival, as it is at the start); with the true class
        only, the search stops caring once ``z_t > z_y`` even when a third class is still on top.
        """
        if self.loss == "ce":
            return attack_loss(task, logits, y, loss_targets, "ce")
        if loss_targets is None:
            return dlr_loss(logits, y)
        if to_target:
            y = logits.detach().scatter(1, loss_targets[:, None], float("-inf")).argmax(dim=1)
        return dlr_loss_targeted(logits, y, loss_targets)

    def _grad(
        self,
        model: nn.Module,
        xa: torch.Tensor,
        y: torch.Tensor,
        loss_targets: torch.Tensor | None,
        to_target: bool,
        task: Task,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward + backward: (logits ``(N, K)``, loss ``(N,)``, input gradient like ``xa``)."""
        xa = xa.detach().requires_grad_(True)
        logits = model(xa)
        obj = self._objective(task, logits, y, loss_targets, to_target)
        (grad,) = torch.autograd.grad(obj.sum(), xa)
        return logits.detach(), obj.detach(), grad

    # ------------------------------------------------------------------ search
    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        _check_finite_eps(self.name, threat)
        problem = Problem(model, x, y, threat, targets, ids, task, seed)
        # one restart per (key, loss targets); success is judged against the caller's targets
        runs = ((self.stream(seed, threat, restart), targets) for restart in range(self.restarts))
        return self.search(problem, runs).x

    # ------------------------------------------------------------------ the engine's hooks (Algorithm 1)
    def _start(self, p: Problem, a: Active, restart: tuple[int, torch.Tensor | None]) -> None:
        key, loss_targets = restart
        a["lt"] = loss_targets[a.idx] if loss_targets is not None else None
        a["xa"] = _start(a.x, a.ids, p.threat, key)

    def _last(self, p: Problem) -> int:
        return self.steps  # x^(0) .. x^(N_iter); the last needs a score, not a gradient

    def _proj(self, p: Problem, a: Active, point: torch.Tensor) -> torch.Tensor:
        xs, threat = a.x, p.threat
        return clip_to_bounds(xs + project(point - xs, threat.norm, threat.eps), threat.bounds)

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        xa, to_target = a["xa"], a.targets is not None
        if t > 0:
            # Eq. 2; the first step (x^(0) -> x^(1)) has no momentum
            m = 1.0 if t == 1 else self.alpha
            ctrl = a["ctrl"]
            z = self._proj(p, a, xa + view(ctrl.eta, xa) * ascent_direction(a["grad"], p.threat.norm))
            moved = self._proj(p, a, xa + m * (z - xa) + (1 - m) * (xa - a["x_prev"]))
            a["x_prev"], xa = xa, torch.where(view(a.alive, xa), moved, xa)
            a["xa"] = xa
        if t < self.steps:
            logits, obj, a["grad"] = self._grad(p.model, xa, a.y, a["lt"], to_target, p.task)
            return Query(xa, logits, obj)
        with torch.no_grad():
            logits = p.model(xa)
            return Query(xa, logits, self._objective(p.task, logits, a.y, a["lt"], to_target))

    def _judge(self, p: Problem, a: Active, q: Query) -> tuple[torch.Tensor, torch.Tensor, None]:
        return success(p.task, q.logits, a.y, a.targets), q.obj, None

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        xa = a["xa"]
        if t == 0:
            a["ctrl"] = StepSizeControl(q.obj, 2 * p.threat.eps, self.rho)  # Sec. 3.2: eta^(0) = 2 eps
            a["x_max"], a["g_max"], a["x_prev"] = xa, a["grad"], xa
            a["marks"], a["last_mark"] = set(checkpoints(self.steps)), 0
            return
        improved = a["ctrl"].observe(q.obj)
        a["x_max"] = torch.where(view(improved, xa), xa, a["x_max"])
        a["g_max"] = torch.where(view(improved, xa), a["grad"], a["g_max"])
        if t in a["marks"]:
            halve = a["ctrl"].checkpoint(t - a["last_mark"])
            a["last_mark"] = t
            # restart from x_max, whose gradient is known: no extra pass (Algorithm 1, line 14)
            a["xa"] = torch.where(view(halve, xa), a["x_max"], xa)
            a["grad"] = torch.where(view(halve, xa), a["g_max"], a["grad"])


class APGDTargeted(APGD):
    """APGD-T (Croce & Hein 2020, Sec. 4): APGD on the targeted DLR loss, one run per target class.

    For each target rank ``r = 1 .. n_target_classes`` (the ``r``-th highest clean logit among the
    classes other than the true one), a full APGD run (``restarts`` restarts) climbs the targeted DLR
    loss (Eq. 7) towards that class, on the samples still robust. As in AutoAttack, the target only
    steers the search: success is any misclassification. One extra forward pass on the clean inputs
    ranks the targets (samples already misclassified there are returned as they are). Cost per
    sample: up to ``n_target_classes * restarts * steps`` forward+backward passes.

    If ``targets`` are given at call time, one run per restart goes towards them and success means
    being classified as the target (the loss then opposes the target to its strongest rival class).

    Settings (keyword-only): as :class:`APGD` (without ``loss``), plus
        n_target_classes: how many of the most likely wrong classes to try (at most ``K - 1``).

    Example:
        >>> from robustaudit.models.catalog import create_model
        >>> from robustaudit.data.digits import digits_split
        >>> from robustaudit.core.threat import ThreatModel
        >>> model = create_model("digits-cnn")
        >>> x, y = digits_split("test").load(range(32))    # (32, 1, 8, 8) in [0, 1], (32,)
        >>> adv = APGDTargeted(steps=20, n_target_classes=3)(model, x, y, ThreatModel("linf", 0.2))
        >>> adv.shape
        torch.Size([32, 1, 8, 8])
    """

    name = "apgd-t"
    SETTINGS = APGD.SETTINGS.pick(
        "steps", "restarts",
        Int("n_target_classes", 9, "the most likely wrong classes tried, one run each", 1, MAX_CLASSES),
        "rho", "alpha", "early_stop", "compact_every",
    )

    def __init__(
        self,
        *,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        alpha: float = 0.75,
        early_stop: bool = True,
        compact_every: int = 5,
    ) -> None:
        APGDTargeted.SETTINGS.apply(self, locals())
        self.loss = "dlr"  # the targeted DLR loss (Eq. 7), not a setting

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        if targets is not None:
            return super()._run(model, x, y, threat, targets, ids, seed, task)
        _check_finite_eps(self.name, threat)
        with torch.no_grad():
            clean = model(x)
        check_logits(clean, 4, "apgd-t")
        # a sample misclassified at x is adversarial already: x is its result
        found = success(task, clean, y, None)
        # rank the wrong classes by clean logit, the true class last
        order = clean.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True, stable=True)
        runs = ((self.stream(seed, threat, rank * self.restarts + restart), order[:, rank])
                for rank in range(min(self.n_target_classes, clean.shape[1] - 1))
                for restart in range(self.restarts))
        return self.search(Problem(model, x, y, threat, None, ids, task, seed), runs, found=found).x


__all__ = ["APGD", "APGDTargeted", "StepSizeControl", "checkpoints", "dlr_loss", "dlr_loss_targeted"]
