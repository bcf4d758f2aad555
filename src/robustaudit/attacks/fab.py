"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020), as AutoAttack runs it.

"Minimally distorted adversarial examples with a fast adaptive boundary attack" (ICML 2020). FAB
walks along the decision boundary towards the original point: each step linearises the boundary
between the true class and a target class, projects both the current iterate and the original point
onto that hyperplane *within the input box*, and moves to a biased combination of the two
projections; whenever the iterate is adversarial it steps back towards the original point, so the
perturbation keeps shrinking after the first success (kind ``MINIMAL_NORM``).

The box-constrained projection (:func:`hyperplane_box_projection`) is solved exactly and vectorised
over the batch: sort the coordinates' saturation points once, then read the answer off cumulative
sums (no per-sample loop, no bisection loop).
"""

from __future__ import annotations

import math

import torch

from robustaudit.attacks.base import Attack, AttackKind, success
from robustaudit.attacks.minimal import class_logits, column
from robustaudit.attacks.settings import MAX_CLASSES, MAX_RESTARTS, MAX_STEPS, Float, Int, Settings
from robustaudit.core.norms import clip_to_bounds, lp_norm
from robustaudit.core.rng import keyed_normal, keyed_uniform

__all__ = ["FABTargeted", "hyperplane_box_projection"]

#: radius of the random starts when the threat model gives none (eps = inf): the reference's defaults
_START_EPS = {"linf": 0.3, "l2": 1.0}


def hyperplane_box_projection(
    points: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str, bounds: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """The smallest step onto a hyperplane that stays in the box, per row.

    Solves ``min ||d||_p  s.t.  <w, t + d> = b,  lo <= t + d <= hi`` for every row ``t`` of ``points``
    (FAB's projection onto the hyperplane intersected with the box), ``p`` in ``linf`` or ``l2``.

    Both problems have the same shape. Flip ``w`` so that ``<w, d>`` must grow by ``g >= 0``; a
    coordinate moves in the direction ``sign(w_i)`` by ``min(lam * r_i, room_i)`` where ``room_i`` is
    the distance to the box face it heads for, ``r_i = 1`` (Linf: every free coordinate moves by the
    same ``lam``) or ``r_i = |w_i|`` (L2: the KKT point is ``clip(lam * w)``). The gain
    ``h(lam) = sum_i |w_i| min(lam r_i, room_i)`` is piecewise linear and non-decreasing, with kinks
    at ``lam_i = room_i / r_i``: sort the kinks, evaluate ``h`` at each with cumulative sums, find the
    segment where ``h`` reaches ``g`` and solve the linear piece there. When even the whole box cannot
    reach the hyperplane, the box corner closest to it is returned.

    Args:
        points: ``(M, D)`` points inside ``bounds``.
        w: ``(M, D)`` hyperplane normals.
        b: ``(M,)`` offsets.
        norm: ``linf`` or ``l2``.
        bounds: the box ``(lo, hi)``.
    Returns:
        ``(M, D)`` steps ``d``; coordinates with ``w_i = 0`` never move.

    Example:
        >>> t = torch.tensor([[0.5, 0.5]]); w = torch.tensor([[1.0, 1.0]])
        >>> hyperplane_box_projection(t, w, torch.tensor([1.6]), "linf")
        tensor([[0.3000, 0.3000]])
        >>> hyperplane_box_projection(torch.tensor([[0.9, 0.5]]), w, torch.tensor([1.8]), "linf")  # box-capped
        tensor([[0.1000, 0.3000]])
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"no box-constrained hyperplane projection for '{norm}'")
    lo, hi = bounds
    gap = b - (w * points).sum(dim=1)  # <w, d> must equal gap
    flip = torch.where(gap < 0, -1.0, 1.0).to(w.dtype)[:, None]
    ws = w * flip  # <w, d> = gap  <=>  <ws, d> = g := |gap| >= 0
    g = gap.abs()[:, None]
    a = ws.abs()
    moving = a > 0
    room = torch.where(ws > 0, hi - points, points - lo).clamp_min(0)
    room = torch.where(moving, room, torch.zeros_like(room))
    rate = torch.ones_like(a) if norm == "linf" else a
    kink = torch.where(moving, room / torch.where(moving, rate, torch.ones_like(rate)), torch.zeros_like(room))
    lam = _gain_solution(kink, a, room, rate, g, points.shape[1])
    # (lam = inf times rate = 0 gives nan on coordinates that do not move: masked out)
    step = torch.where(moving, torch.minimum(lam * rate, room), torch.zeros_like(room))
    return ws.sign() * step  # <ws, d> = g  <=>  <w, d> = gap


def _gain_solution(
    kink: torch.Tensor, a: torch.Tensor, room: torch.Tensor, rate: torch.Tensor, g: torch.Tensor, d: int
) -> torch.Tensor:
    """``lam`` ``(M, 1)`` where the piecewise-linear gain ``h(lam) = sum_i a_i min(lam rate_i, room_i)``
    reaches ``g`` ``(M, 1)``, from the kinks ``(M, D)`` (``d = D``); ``inf`` where even the whole box
    falls short (see :func:`hyperplane_box_projection`)."""
    kink_s, order = kink.sort(dim=1)
    a_s, room_s, rate_s = a.gather(1, order), room.gather(1, order), rate.gather(1, order)
    slope = a_s * rate_s
    total = slope.sum(dim=1, keepdim=True)
    sat = (a_s * room_s).cumsum(dim=1)  # gain of the coordinates saturated at kink j (j included)
    free = total - slope.cumsum(dim=1)  # slope of h beyond kink j
    gain = sat + kink_s * free  # h(kink_j)
    m = (gain < g).sum(dim=1, keepdim=True)  # kinks passed before h reaches g
    feasible = m < d
    zero = torch.zeros_like(g)
    sat_pad = torch.cat([zero, sat], dim=1)
    free_pad = torch.cat([total, free], dim=1)
    m = m.clamp_max(d)
    lam = (g - sat_pad.gather(1, m)) / free_pad.gather(1, m).clamp_min(1e-30)
    return torch.where(feasible, lam.clamp_min(0), torch.full_like(lam, math.inf))


class FABTargeted(Attack):
    """FAB-T (Croce & Hein 2020), the targeted FAB of AutoAttack: minimal Linf (or L2) adversarials.

    For each target ``t`` among the ``n_target_classes`` next most likely classes on clean data (the
    r-th highest clean logit, ``r = 2 .. n_target_classes + 1``) and each restart, from ``x_0`` (the
    clean point; restarts after the first start at a random point of radius ``min(best, eps) / 2``):

    1. linearise ``f = Z_t - Z_y`` at ``x_i``: the hyperplane ``pi = {z : f + <grad f, z - x_i> = 0}``;
    2. ``d = proj(x_i onto pi and the box) - x_i`` and ``d_0 = proj(x_0 onto pi and the box) - x_0``;
    3. the biased step ``x_{i+1} = clip((1 - alpha)(x_i + eta d) + alpha (x_0 + eta d_0))`` with
       ``alpha = min(||d|| / (||d|| + ||d_0||), alpha_max)``: the closer the current projection, the
       less pull towards the original point; ``eta > 1`` extrapolates past the hyperplane;
    4. if ``x_{i+1}`` is adversarial (misclassified: the target only guides the linearisation), keep it
       when it is the smallest so far and step back ``x_{i+1} = x_0 + beta (x_{i+1} - x_0)``.

    The smallest adversarial over every target, restart and step is returned (``x`` when none). With
    a finite ``eps``, later targets and restarts only run on samples not yet broken within ``eps``
    (AutoAttack's cascade); with ``eps = inf`` every sample runs every target. With ``targets`` given,
    FAB runs towards those classes only and success means reaching them.

    Settings (keyword-only):
        steps: iterations per target and restart.
        restarts: runs per target; the first starts at ``x``, later ones at random points.
        n_target_classes: how many target classes to try.
        alpha_max: the largest pull towards the original point.
        eta: extrapolation past the hyperplane (>= 1).
        beta: the backward step after a success (the kept fraction of the perturbation).
        start_eps: radius scale of the random starts; default ``threat.eps`` when finite, else 0.3
            (Linf) / 1.0 (L2).

    Shapes: ``x`` ``(N, C, H, W)`` in ``threat.bounds``, ``y`` ``(N,)`` -> adversarial ``(N, C, H, W)``.

    Example:
        >>> from robustaudit.core.threat import ThreatModel
        >>> from robustaudit.data.digits import digits_split
        >>> from robustaudit.models.catalog import create_model
        >>> model = create_model("digits-cnn")
        >>> x, y = digits_split("test").load(range(8))
        >>> adv = FABTargeted(steps=20, n_target_classes=3)(model, x, y, ThreatModel("linf", float("inf")))
        >>> bool((model(adv).argmax(1) != y).all())
        True
    """

    name = "fab-t"
    kind = AttackKind.MINIMAL_NORM
    norms = ("linf", "l2")
    randomized = True  # restarts after the first start at random points
    SETTINGS = Settings(
        Int("steps", 100, "iterations per target and restart", 1, MAX_STEPS),
        Int("restarts", 1, "runs per target; later ones start at random points", 1, MAX_RESTARTS),
        Int("n_target_classes", 9, "how many target classes to try", 1, MAX_CLASSES),
        Float("alpha_max", 0.1, "the largest pull towards the original point", 0, 1),
        Float("eta", 1.05, "extrapolation past the hyperplane", 1),
        Float("beta", 0.9, "kept fraction of the perturbation after a success", 0, 1, open_low=True),
        Float("start_eps", None, "radius scale of the random starts (default: eps, else 0.3 linf / 1.0 l2)", 0,
              open_low=True, optional=True),
    )

    def __init__(
        self,
        *,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        start_eps: float | None = None,
    ) -> None:
        FABTargeted.SETTINGS.apply(self, locals())

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        n = x.shape[0]
        with torch.no_grad():
            logits0 = class_logits(model, x, self.name)
        already = success(task, logits0, y, targets)
        if targets is None:
            # the r-th most likely class on clean data, r = 2 .. n_target_classes + 1
            order = logits0.argsort(dim=1, descending=True)
            ranks = range(1, min(self.n_target_classes, logits0.shape[1] - 1) + 1)
            target_list = [order[:, r] for r in ranks]
        else:
            target_list = [targets]
        if self.start_eps is not None:
            start_eps = self.start_eps
        else:
            start_eps = threat.eps if math.isfinite(threat.eps) else _START_EPS[threat.norm]
        best = x.clone()
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        for ti, tgt in enumerate(target_list):
            for restart in range(self.restarts):
                todo = ~already
                if math.isfinite(threat.eps):  # the budget is met: AutoAttack's cascade moves on
                    todo = todo & ~(best_norm <= threat.eps)
                idx = todo.nonzero().squeeze(1)  # one host sync per target and restart
                if idx.numel() == 0:
                    continue
                xs = x[idx]
                if restart == 0:
                    start = xs.clone()
                else:
                    radius = 0.5 * torch.clamp(best_norm[idx], max=start_eps)
                    key = self.stream(seed, threat, ti * self.restarts + restart)
                    start = self._random_start(xs, ids[idx.cpu()], radius, threat.norm, threat.bounds, key)
                ts = targets[idx] if targets is not None else None
                adv, nrm = self._attack_single_run(model, xs, y[idx], tgt[idx], ts, start, threat, task)
                better = nrm < best_norm[idx]
                best[idx] = torch.where(column(better, adv), adv, best[idx])
                best_norm[idx] = torch.where(better, nrm, best_norm[idx])
        return best

    @staticmethod
    def _random_start(
        x: torch.Tensor, ids: torch.Tensor, radius: torch.Tensor, norm: str, bounds: tuple[float, float], key: int
    ) -> torch.Tensor:
        """``clip(x + radius * u / ||u||)`` with ``u`` keyed per sample: uniform in the cube (Linf) or
        Gaussian (L2), as the reference's random restarts. ``radius`` ``(N,)``."""
        shape = tuple(x.shape[1:])
        if norm == "linf":
            u = 2 * keyed_uniform(ids, shape, key, device=x.device, dtype=x.dtype) - 1
        else:
            u = keyed_normal(ids, shape, key, device=x.device, dtype=x.dtype)
        u = u / column(lp_norm(u, norm).clamp_min(1e-12), u)
        return clip_to_bounds(x + column(radius, u) * u, bounds)

    def _attack_single_run(self, model, x0, y, tgt, targets, start, threat, task) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB run towards ``tgt`` ``(N,)`` from ``start``. Returns the smallest adversarial found per
        sample ``(N, C, H, W)`` (``x0`` where none) and its norm ``(N,)`` (``inf`` where none)."""
        norm, bounds = threat.norm, threat.bounds
        n = x0.shape[0]
        x0f = x0.flatten(1)
        rows = torch.arange(n, device=x0.device)
        b_x = x0.clone()
        b_norm = torch.full((n,), math.inf, device=x0.device, dtype=x0.dtype)
        xa = start
        for _ in range(self.steps):
            xg = xa.detach().requires_grad_(True)
            logits = model(xg)
            # the boundary between the true class and the target, linearised at x_i
            f = logits[rows, tgt] - logits[rows, y]
            (w,) = torch.autograd.grad(f.sum(), xg)
            with torch.no_grad():
                xa = xa.detach()
                wf = w.flatten(1)
                b = (wf * xa.flatten(1)).sum(dim=1) - f.detach()  # pi = {z : <w, z> = <w, x_i> - f}
                # project the iterate and the original point in one call
                d = hyperplane_box_projection(
                    torch.cat([xa.flatten(1), x0f]), torch.cat([wf, wf]), torch.cat([b, b]), norm, bounds
                )
                d1, d2 = d[:n].view_as(xa), d[n:].view_as(xa)
                a1 = lp_norm(d1, norm).clamp_min(1e-8)
                a2 = lp_norm(d2, norm).clamp_min(1e-8)
                # biased step: alpha = min(||d|| / (||d|| + ||d_0||), alpha_max)
                alpha = column((a1 / (a1 + a2)).clamp(0, self.alpha_max), xa)
                xa = clip_to_bounds((1 - alpha) * (xa + self.eta * d1) + alpha * (x0 + self.eta * d2), bounds)
                hit = success(task, model(xa), y, targets)
                nrm = lp_norm(xa - x0, norm)
                better = hit & (nrm < b_norm)
                b_x = torch.where(column(better, xa), xa, b_x)
                b_norm = torch.where(better, nrm, b_norm)
                # backward step after a success: x_{i+1} = x_0 + beta (x_{i+1} - x_0)
                xa = torch.where(column(hit, xa), x0 + self.beta * (xa - x0), xa)
        return b_x, b_norm
