"""APGD and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): PGD with momentum and a step size that adapts itself.

Section numbers and equations below refer to that paper (ICML 2020, arXiv:2003.01690).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, attack_loss, success
from robustaudit.attacks.settings import MAX_CLASSES, MAX_RESTARTS, MAX_STEPS, Bool, Choice, Float, Int, Settings
from robustaudit.core.errors import UserError
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.rng import keyed_normal, keyed_uniform
from robustaudit.core.task import Task
from robustaudit.core.threat import ThreatModel

_LOSSES = ("ce", "dlr")
_DLR_TINY = 1e-12


# ---------------------------------------------------------------------------------------- losses
def _check_logits(logits: torch.Tensor, need: int, what: str) -> None:
    if logits.dim() != 2:
        raise UserError(f"{what} needs class logits of shape (N, K), got shape {tuple(logits.shape)}")
    if logits.shape[1] < need:
        raise UserError(f"{what} needs at least {need} classes, the model has {logits.shape[1]}")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, to maximise (Sec. 4, Eq. 6). ``(N, K), (N,) -> (N,)``.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...`` the sorted
    logits: shift- and scale-invariant in the logits, unlike the margin or cross-entropy.
    """
    _check_logits(logits, 3, "the DLR loss")
    top = logits.topk(3, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(true - other) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, to maximise (Sec. 4, Eq. 7). ``(N, K), (N,), (N,) -> (N,)``.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.
    """
    _check_logits(logits, 4, "the targeted DLR loss")
    top = logits.topk(4, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


# ---------------------------------------------------------------------------------------- step size
def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which APGD may halve its step size (Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``;
    ``w_0 = 0`` is left out. Computed in hundredths so that no float rounding moves a checkpoint
    (``0.41 * 100`` is ``41.000000000000004`` in floats, whose ceiling is 42).

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    out: list[int] = []
    prev, cur = 0, 22  # p_{j-1}, p_j in hundredths
    while cur <= 100:
        w = -(-cur * steps // 100)  # exact ceil(cur / 100 * steps)
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return out


class StepSizeControl:
    """APGD's per-sample step-size rule (Sec. 3.2), all state as ``(N,)`` tensors: no host sync.

    Call :meth:`observe` with the loss of every new iterate and :meth:`checkpoint` at each checkpoint
    ``w_j``. The step size of a sample halves at ``w_j`` when

    1. (condition 1) the loss increased in fewer than ``rho * (w_j - w_{j-1})`` of the steps since
       ``w_{j-1}`` — the paper's strict ``<``, or
    2. (condition 2) the step size was not halved at ``w_{j-1}`` and the best loss ``f_max`` did not
       improve since then.

    A sample whose step halves restarts from its best point ``x_max``, so its next step is measured
    against ``f_max``.

    Args:
        loss0: ``(N,)`` the loss at the starting point ``x^(0)``.
        eta0: the initial step size (APGD: ``2 * eps``).
        rho: the fraction of successful steps below which the step size halves.
    """

    def __init__(self, loss0: torch.Tensor, eta0: float, rho: float) -> None:
        self.rho = float(rho)
        self.eta = torch.full_like(loss0, float(eta0))
        self.prev = loss0.clone()  # the loss of the point the next step starts from
        self.best = loss0.clone()  # f_max
        self.best_last = loss0.clone()  # f_max at the last checkpoint (w_0 = 0: the start)
        # at w_0 no halving has happened, so condition 2 can already hold at w_1
        self.reduced_last = torch.zeros_like(loss0, dtype=torch.bool)
        self.increases = torch.zeros_like(loss0, dtype=torch.int32)

    def observe(self, loss: torch.Tensor) -> torch.Tensor:
        """Count the step that produced ``loss`` ``(N,)``; returns ``(N,)`` bool: a new ``f_max``."""
        self.increases = self.increases + (loss > self.prev).to(torch.int32)
        self.prev = loss
        improved = loss > self.best
        self.best = torch.where(improved, loss, self.best)
        return improved

    def checkpoint(self, window: int) -> torch.Tensor:
        """Apply the rule over the last ``window = w_j - w_{j-1}`` steps; returns ``(N,)`` bool: halved."""
        oscillating = self.increases.to(self.eta.dtype) < self.rho * window  # condition 1
        stalled = ~self.reduced_last & (self.best <= self.best_last)  # condition 2
        halve = oscillating | stalled
        self.eta = torch.where(halve, self.eta / 2, self.eta)
        self.reduced_last = halve
        self.best_last = self.best.clone()
        self.increases = torch.zeros_like(self.increases)
        self.prev = torch.where(halve, self.best, self.prev)
        return halve

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only samples ``rows`` (compaction of the active set)."""
        for name in ("eta", "prev", "best", "best_last", "reduced_last", "increases"):
            setattr(self, name, getattr(self, name)[rows])


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


class APGD(Attack):
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
        n = x.shape[0]
        best = x.clone()
        best_obj = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            if not self._restart_on(
                model,
                x,
                y,
                threat,
                targets,
                targets,
                ids,
                self.stream(seed, threat, restart),
                task,
                best,
                best_obj,
                found,
            ):
                break
        return best

    def _restart_on(
        self, model, x, y, threat, loss_targets, success_targets, ids, key, task, best, best_obj, found
    ) -> bool:
        """One restart on the samples still to attack; ``False`` when none is left."""
        # one host sync per restart: restarts only work on samples not yet broken
        todo = (~found).nonzero().squeeze(1) if self.early_stop else torch.arange(len(x), device=x.device)
        if todo.numel() == 0:
            return False
        self._restart(
            model, x, y, threat, loss_targets, success_targets, ids, key, task, todo, best, best_obj, found
        )
        return True

    def _restart(
        self, model, x, y, threat, loss_targets, success_targets, ids, key, task, todo, best, best_obj, found
    ) -> None:
        """One run of Algorithm 1 on samples ``todo``; updates ``best``, ``best_obj``, ``found`` in place."""
        view = (-1, *[1] * (x.dim() - 1))
        idx = todo
        xs, ys = x[idx], y[idx]
        lt = loss_targets[idx] if loss_targets is not None else None
        st = success_targets[idx] if success_targets is not None else None
        b_x, b_obj, b_found = best[idx], best_obj[idx], found[idx]
        alive = torch.ones(len(idx), dtype=torch.bool, device=x.device)

        def record(logits: torch.Tensor, obj: torch.Tensor, point: torch.Tensor) -> None:
            # masked updates only: no host sync
            nonlocal b_x, b_obj, b_found, alive
            hit = success(task, logits, ys, st) & alive & ~b_found
            better = (obj > b_obj) & ~b_found & alive
            take = hit | better
            b_x = torch.where(take.view(view), point, b_x)
            b_obj = torch.where(take, obj, b_obj)
            b_found = b_found | hit
            if self.early_stop:
                alive = alive & ~hit

        def proj(point: torch.Tensor) -> torch.Tensor:
            return clip_to_bounds(xs + project(point - xs, threat.norm, threat.eps), threat.bounds)

        xa = _start(xs, ids[idx.cpu()], threat, key)
        logits, obj, grad = self._grad(model, xa, ys, lt, st is not None, task)
        record(logits, obj, xa)
        ctrl = StepSizeControl(obj, 2 * threat.eps, self.rho)  # Sec. 3.2: eta^(0) = 2 eps
        x_max, g_max, x_prev = xa, grad, xa
        marks = set(checkpoints(self.steps))
        last_mark = 0
        for it in range(1, self.steps + 1):
            # Eq. 2; the first step (x^(0) -> x^(1)) has no momentum
            a = 1.0 if it == 1 else self.alpha
            z = proj(xa + ctrl.eta.view(view) * ascent_direction(grad, threat.norm))
            moved = proj(xa + a * (z - xa) + (1 - a) * (xa - x_prev))
            x_prev, xa = xa, torch.where(alive.view(view), moved, xa)
            if it < self.steps:
                logits, obj, grad = self._grad(model, xa, ys, lt, st is not None, task)
            else:  # the last iterate needs a score, not a gradient
                with torch.no_grad():
                    logits = model(xa)
                    obj = self._objective(task, logits, ys, lt, st is not None)
            record(logits, obj, xa)
            improved = ctrl.observe(obj)
            x_max = torch.where(improved.view(view), xa, x_max)
            if it == self.steps:
                break
            g_max = torch.where(improved.view(view), grad, g_max)
            if it in marks:
                halve = ctrl.checkpoint(it - last_mark)
                last_mark = it
                # restart from x_max, whose gradient is known: no extra pass (Algorithm 1, line 14)
                xa = torch.where(halve.view(view), x_max, xa)
                grad = torch.where(halve.view(view), g_max, grad)
            if self.early_stop and it % self.compact_every == 0:
                # write back, then drop the samples that are done (the one sync every few steps)
                best[idx], best_obj[idx], found[idx] = b_x, b_obj, b_found
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return
                if keep.numel() < len(idx):
                    idx, xs, ys = idx[keep], xs[keep], ys[keep]
                    lt = lt[keep] if lt is not None else None
                    st = st[keep] if st is not None else None
                    xa, x_prev, grad, x_max, g_max = (
                        xa[keep],
                        x_prev[keep],
                        grad[keep],
                        x_max[keep],
                        g_max[keep],
                    )
                    b_x, b_obj, b_found, alive = b_x[keep], b_obj[keep], b_found[keep], alive[keep]
                    ctrl.keep(keep)
        best[idx], best_obj[idx], found[idx] = b_x, b_obj, b_found


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
        n = x.shape[0]
        with torch.no_grad():
            clean = model(x)
        _check_logits(clean, 4, "apgd-t")
        best = x.clone()
        best_obj = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
        # a sample misclassified at x is adversarial already: x is its result
        found = success(task, clean, y, None)
        # rank the wrong classes by clean logit, the true class last
        order = clean.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True, stable=True)
        for rank in range(min(self.n_target_classes, clean.shape[1] - 1)):
            for restart in range(self.restarts):
                key = self.stream(seed, threat, rank * self.restarts + restart)
                if not self._restart_on(
                    model, x, y, threat, order[:, rank], None, ids, key, task, best, best_obj, found
                ):
                    return best
        return best


__all__ = ["APGD", "APGDTargeted", "StepSizeControl", "checkpoints", "dlr_loss", "dlr_loss_targeted"]
