"""First-order white-box attacks: FGSM and PGD (with the shared iterative engine later attacks reuse)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, attack_loss, check_positive, success
from robustaudit.core.errors import UserError
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.rng import keyed_normal, keyed_uniform
from robustaudit.core.task import Task
from robustaudit.core.threat import ThreatModel

_LOSSES = ("ce", "margin")


def _input_grad(
    model: nn.Module, xa: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, task: Task, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward. Returns (logits ``(N, K)``, per-sample loss ``(N,)``, grad like ``xa``)."""
    xa = xa.detach().requires_grad_(True)
    logits = model(xa)
    obj = attack_loss(task, logits, y, targets, loss)
    (grad,) = torch.autograd.grad(obj.sum(), xa)
    return logits.detach(), obj.detach(), grad


def random_start(
    x: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, key: int
) -> torch.Tensor:
    """A point drawn uniformly from the ``threat`` ball around each sample (keyed by id), clipped.

    ``(N, C, H, W) -> (N, C, H, W)``. Linf: uniform in the cube; L2/L1: uniform in the ball
    (Gaussian direction, radius ``eps * u**(1/d)``).
    """
    shape = tuple(x.shape[1:])
    if threat.norm == "linf":
        u = keyed_uniform(ids, shape, key, device=x.device, dtype=x.dtype)
        delta = (2 * u - 1) * threat.eps
    else:
        if threat.norm == "l2":
            g = keyed_normal(ids, shape, key, device=x.device, dtype=x.dtype)
        else:  # Laplace draws normalised in L1 are uniform on the L1 sphere
            u = keyed_uniform(ids, shape, key, device=x.device, dtype=x.dtype) - 0.5
            g = -u.sign() * torch.log1p(-2 * u.abs()).clamp_max(0)
        flat = g.reshape(len(g), -1)
        p = 2 if threat.norm == "l2" else 1
        direction = flat / flat.norm(p=p, dim=1, keepdim=True).clamp_min(1e-12)
        r = keyed_uniform(ids, (1,), key ^ 0x5BD1E995, device=x.device, dtype=x.dtype)
        radius = threat.eps * r.pow(1.0 / flat.shape[1])
        delta = (direction * radius).reshape(x.shape)
    return clip_to_bounds(x + delta, threat.bounds)


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps along the gradient.

    Linf uses the gradient's sign; L2 the normalised gradient (the "fast gradient method").

    Example:
        >>> adv = FGSM()(model, x, y, ThreatModel("linf", 0.1))   # x: (N, C, H, W) in [0, 1]
    """

    name = "fgsm"
    norms = ("linf", "l2")

    def __init__(self, *, loss: str = "ce") -> None:
        if loss not in _LOSSES:
            raise UserError(f"fgsm: loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        self.loss = loss

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        _, _, grad = _input_grad(model, x, y, targets, task, self.loss)
        return clip_to_bounds(x + threat.eps * ascent_direction(grad, threat.norm), threat.bounds)


class PGD(Attack):
    """Projected Gradient Descent (Madry et al. 2018) with random start, restarts and early stopping.

    Each step ``x <- clip(proj(x + step_size * dir(grad)))`` with ``dir`` the steepest-ascent
    direction of the norm (sign for Linf). A sample stops moving once it is adversarial, and the
    first adversarial iterate is kept (the best iterate); for samples never broken, the iterate of
    highest loss over all steps and restarts is returned. Restarts run only on samples still unbroken.

    Settings (keyword-only):
        steps: iterations per restart.
        restarts: random restarts (the first start is random too when ``random_start``).
        step_size: absolute step; default ``rel_step_size * eps``.
        rel_step_size: step as a fraction of eps (default 2.5 / steps, so a run can cross the ball).
        random_start: start uniformly inside the ball rather than at x.
        loss: ``ce`` (cross-entropy) or ``margin`` (C&W-style logit margin).
        early_stop: freeze samples once adversarial and drop them from the batch every
            ``compact_every`` steps (the only host synchronisation in the loop).

    Example:
        >>> adv = PGD(steps=50, restarts=2)(model, x, y, ThreatModel("linf", 0.2))
    """

    name = "pgd"
    norms = ("linf", "l2", "l1")
    randomized = True

    def __init__(
        self,
        *,
        steps: int = 50,
        restarts: int = 1,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        loss: str = "ce",
        early_stop: bool = True,
        compact_every: int = 5,
    ) -> None:
        for key, value in (("steps", steps), ("restarts", restarts), ("compact_every", compact_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"pgd: {key} must be an integer >= 1, got {value!r}")
        if step_size is not None:
            check_positive("pgd: step_size", step_size)
        if rel_step_size is not None:
            check_positive("pgd: rel_step_size", rel_step_size)
        if step_size is not None and rel_step_size is not None:
            raise UserError("pgd: give step_size or rel_step_size, not both")
        if loss not in _LOSSES:
            raise UserError(f"pgd: loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        self.steps = steps
        self.restarts = restarts
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.random_start = bool(random_start)
        self.loss = loss
        self.early_stop = bool(early_stop)
        self.compact_every = compact_every

    def alpha(self, eps: float) -> float:
        """The absolute step size used at radius ``eps``."""
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        return rel * eps

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        n = x.shape[0]
        best = x.clone()
        best_obj = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            # one host sync per restart: restarts only work on samples not yet broken
            todo = (~found).nonzero().squeeze(1) if self.early_stop else torch.arange(n, device=x.device)
            if todo.numel() == 0:
                break
            self._restart(model, x, y, threat, targets, ids, seed, task, restart, todo, best, best_obj, found)
        return best

    def _restart(self, model, x, y, threat, targets, ids, seed, task, restart, todo, best, best_obj, found):
        """One restart on samples ``todo``; updates ``best``, ``best_obj``, ``found`` in place."""
        alpha = self.alpha(threat.eps)
        idx = todo
        xs, ys = x[idx], y[idx]
        ts = targets[idx] if targets is not None else None
        if self.random_start:
            xa = random_start(xs, ids[idx.cpu()], threat, self.stream(seed, threat, restart))
        else:
            xa = xs.clone()
        b_x, b_obj, b_found = best[idx], best_obj[idx], found[idx]
        alive = torch.ones(len(idx), dtype=torch.bool, device=x.device)

        def record(logits: torch.Tensor, obj: torch.Tensor, point: torch.Tensor) -> None:
            # masked updates only: no host sync
            nonlocal b_x, b_obj, b_found, alive
            hit = success(task, logits, ys, ts) & alive & ~b_found
            better = (obj > b_obj) & ~b_found & alive
            take = hit | better
            b_x = torch.where(take.view(-1, *[1] * (xa.dim() - 1)), point, b_x)
            b_obj = torch.where(take, obj, b_obj)
            b_found = b_found | hit
            if self.early_stop:
                alive = alive & ~hit

        for step in range(self.steps):
            logits, obj, grad = _input_grad(model, xa, ys, ts, task, self.loss)
            record(logits, obj, xa)
            moved = xa + alpha * self._direction(grad, threat.norm)
            moved = clip_to_bounds(xs + project(moved - xs, threat.norm, threat.eps), threat.bounds)
            xa = torch.where(alive.view(-1, *[1] * (xa.dim() - 1)), moved, xa)
            if self.early_stop and (step + 1) % self.compact_every == 0 and step + 1 < self.steps:
                # write back, then drop the samples that are done (the one sync every few steps)
                best[idx], best_obj[idx], found[idx] = b_x, b_obj, b_found
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return
                if keep.numel() < len(idx):
                    idx, xs, ys, xa = idx[keep], xs[keep], ys[keep], xa[keep]
                    ts = ts[keep] if ts is not None else None
                    b_x, b_obj, b_found, alive = b_x[keep], b_obj[keep], b_found[keep], alive[keep]
        with torch.no_grad():  # the last iterate has not been scored yet
            logits = model(xa)
            record(logits, attack_loss(task, logits, ys, ts, self.loss), xa)
        best[idx], best_obj[idx], found[idx] = b_x, b_obj, b_found

    def _direction(self, grad: torch.Tensor, norm: str) -> torch.Tensor:
        """The step direction from the input gradient; overridden by momentum variants."""
        return ascent_direction(grad, norm)
