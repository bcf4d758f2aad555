"""Minimal-norm white-box attacks: Carlini & Wagner L2 and DeepFool (kind ``MINIMAL_NORM``).

A minimal-norm attack looks for the *smallest* perturbation that changes the decision, rather than the
most damaging point inside a fixed ball. How the radius of the threat model is read:

- ``eps = inf``: unbounded. The result is each sample's smallest adversarial found, so one run gives a
  whole robustness curve (robust at ``r`` when no adversarial was found or its norm exceeds ``r``).
- finite ``eps``: the same search; the smallest adversarial found is returned and, when it is larger
  than ``eps``, the base class projects it into the ball (the result is then the best point inside).

A sample for which nothing adversarial was found comes back as ``x`` itself, bit for bit; so does a
sample that is already adversarial at ``x`` (its minimal norm is 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, AttackKind, success
from robustaudit.attacks.settings import MAX_CLASSES, MAX_SEARCH, MAX_STEPS, Bool, Float, Int, Settings
from robustaudit.core.errors import UserError
from robustaudit.core.norms import clip_to_bounds, lp_norm
from robustaudit.core.task import Task

__all__ = ["CarliniWagnerL2", "DeepFool"]


# ---------------------------------------------------------------------------------------- helpers
def column(v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(N,)`` to broadcast against ``ref`` ``(N, ...)``."""
    return v.view(-1, *[1] * (ref.dim() - 1))


def class_logits(model: nn.Module, x: torch.Tensor, owner: str) -> torch.Tensor:
    """``model(x)``, checked to be classification logits ``(N, K)`` with ``K >= 2``."""
    logits = model(x)
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise UserError(
            f"attack '{owner}' needs classification logits of shape (N, K >= 2), got {tuple(logits.shape)}"
        )
    return logits


# ---------------------------------------------------------------------------------------- C&W L2
class CarliniWagnerL2(Attack):
    """Carlini & Wagner (2017) L2 attack: the smallest L2 perturbation found by Adam in tanh space.

    For each sample it minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = mid + half * tanh(w)`` (the
    change of variables keeps ``x'`` inside the bounds without clipping), with the hinge
    ``f(x') = max(Z_y - max_{j != y} Z_j + confidence, 0)`` untargeted or
    ``f(x') = max(max_{j != t} Z_j - Z_t + confidence, 0)`` targeted (the paper's ``f_6`` on logits
    ``Z``). The constant ``c`` is searched per sample: starting at ``initial_const`` it is multiplied by
    10 while no adversarial was found, and bisected between the largest failing and the smallest
    succeeding value afterwards. The smallest-L2 adversarial over every step and every constant is kept.

    Each constant restarts Adam from ``w = atanh(x)``. With ``abort_early`` a sample stops optimising
    once its own objective improved by less than 0.01% over a tenth of ``steps`` (the reference checks
    the batch's summed objective; per sample keeps the result independent of the batch).

    Settings (keyword-only):
        steps: Adam iterations per constant (the reference uses up to 10000; 1000 is plenty on small
            nets, 100 is a quick look).
        binary_search_steps: constants tried per sample. From 10 on, the last one repeats the
            smallest successful constant (as the reference does).
        lr: Adam's step size.
        initial_const: the first constant ``c``.
        confidence: the margin ``kappa`` an adversarial must clear (0: any misclassification).
        abort_early: stop a sample's Adam run when its objective stalls.

    Shapes: ``x`` ``(N, C, H, W)`` in ``threat.bounds``, ``y`` ``(N,)`` -> adversarial ``(N, C, H, W)``.

    Example:
        >>> import torch
        >>> from robustaudit.core.threat import ThreatModel
        >>> from robustaudit.data.digits import digits_split
        >>> from robustaudit.models.catalog import create_model
        >>> model = create_model("digits-cnn")
        >>> x, y = digits_split("test").load(range(8))
        >>> attack = CarliniWagnerL2(steps=100, binary_search_steps=5, initial_const=0.1)
        >>> adv = attack(model, x, y, ThreatModel("l2", float("inf")))  # unbounded: the smallest found
        >>> adv.shape
        torch.Size([8, 1, 8, 8])
        >>> bool((model(adv).argmax(1) != y).all())
        True
        >>> norms = (adv - x).flatten(1).norm(dim=1)   # each sample's smallest adversarial L2 norm
    """

    name = "cw"
    kind = AttackKind.MINIMAL_NORM
    norms = ("l2",)

    #: the upper bound on ``c`` until the first success (the reference's sentinel)
    UPPER = 1e10
    SETTINGS = Settings(
        Int("steps", 1000, "Adam iterations per constant", 1, MAX_STEPS),
        Int("binary_search_steps", 9, "constants tried per sample", 1, MAX_SEARCH),
        Float("lr", 0.01, "Adam's step size", 0, open_low=True),
        Float("initial_const", 1e-3, "the first constant c", 0, open_low=True),
        Float("confidence", 0.0, "margin kappa an adversarial must clear (0: any misclassification)", 0),
        Bool("abort_early", True, "stop a sample's Adam run when its objective stalls"),
    )

    def __init__(
        self,
        *,
        steps: int = 1000,
        binary_search_steps: int = 9,
        lr: float = 0.01,
        initial_const: float = 1e-3,
        confidence: float = 0.0,
        abort_early: bool = True,
    ) -> None:
        CarliniWagnerL2.SETTINGS.apply(self, locals())

    # ------------------------------------------------------------------ objective pieces
    def _hinge(self, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, task: Task) -> torch.Tensor:
        """C&W's ``f_6``: how far the logits are from (confidently) adversarial. ``(N, K) -> (N,)``."""
        if targets is None:  # Z_y - max_{j != y} Z_j + kappa
            gap = task.margin(logits, y)
        else:  # max_{j != t} Z_j - Z_t + kappa
            gap = -task.margin(logits, targets)
        return torch.clamp(gap + self.confidence, min=0)

    def _hit(self, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, task: Task) -> torch.Tensor:
        """Adversarial with the required confidence: the true logit raised (or the target's lowered)
        by ``confidence`` must still lose. ``(N, K) -> (N,)`` bool."""
        if self.confidence == 0:
            return success(task, logits, y, targets)
        cls = y if targets is None else targets
        sign = 1.0 if targets is None else -1.0
        shifted = logits.scatter_add(1, cls[:, None], torch.full_like(logits[:, :1], sign * self.confidence))
        return success(task, shifted, y, targets)

    # ------------------------------------------------------------------ search
    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        n = x.shape[0]
        lo, hi = threat.bounds
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        with torch.no_grad():
            already = success(task, class_logits(model, x, self.name), y, targets)
        # C&W's change of variables for the box: x' = mid + half * tanh(w); 0.999999 keeps atanh finite
        w0 = torch.atanh(((x - mid) / half).clamp(-1, 1) * 0.999999)
        best = x.clone()
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, self.UPPER)
        todo = (~already).nonzero().squeeze(1)  # the one host sync before the search
        if todo.numel() == 0:
            return best
        repeat = self.binary_search_steps >= 10
        for outer in range(self.binary_search_steps):
            if repeat and outer == self.binary_search_steps - 1:
                const = upper.clone()  # the reference's last try: the smallest constant that worked
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            self._minimise(model, x, y, targets, task, w0, mid, half, const, todo, best, best_norm, found)
            # C&W's search over the constant c, per sample: success -> smaller c, failure -> larger c
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < self.UPPER, (lower + upper) / 2, const * 10)
        return best

    def _minimise(self, model, x, y, targets, task, w0, mid, half, const, todo, best, best_norm, found) -> None:
        """One Adam run at the current constants on samples ``todo``; updates ``best``, ``best_norm``
        and ``found`` (any adversarial at this constant) in place."""
        idx = todo
        xs, ys, w0s, cs = x[idx], y[idx], w0[idx], const[idx]
        ts = targets[idx] if targets is not None else None
        x_rec = torch.tanh(w0s) * half + mid  # the start point as tanh sees it: the distance term's anchor
        mod = torch.zeros_like(xs)  # the optimised variable: w = w0 + mod
        m1, m2 = torch.zeros_like(xs), torch.zeros_like(xs)  # Adam's moments (elementwise, hence per sample)
        b_x, b_norm = best[idx], best_norm[idx]
        b_found = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
        alive = torch.ones(len(idx), dtype=torch.bool, device=x.device)
        prev = torch.full((len(idx),), math.inf, device=x.device, dtype=x.dtype)  # objective at the last check
        run_norm = torch.full_like(prev, math.inf)  # smallest adversarial norm of this Adam run
        prev_norm = run_norm.clone()  # ... at the last check
        check_every = math.ceil(self.steps / 10)
        for step in range(self.steps):
            mod = mod.detach().requires_grad_(True)
            xa = torch.tanh(w0s + mod) * half + mid
            logits = model(xa)
            # C&W objective: ||x' - x||_2^2 + c * f(x')
            dist = (xa - x_rec).pow(2).flatten(1).sum(1)
            loss = dist + cs * self._hinge(logits, ys, ts, task)
            (grad,) = torch.autograd.grad(loss.sum(), mod)
            with torch.no_grad():
                xa, logits, loss = xa.detach(), logits.detach(), loss.detach()
                # keep the smallest adversarial seen (masked: no host sync)
                hit = self._hit(logits, ys, ts, task) & alive
                nrm, b_x, b_norm, b_found = _keep_smallest(xa, xs, hit, b_x, b_norm, b_found)
                run_norm = torch.where(hit, torch.minimum(run_norm, nrm), run_norm)
                # Adam (Kingma & Ba 2015, Alg. 1) with bias correction; frozen samples do not move
                m1, m2, upd = _adam_step(m1, m2, grad, step + 1, self.lr)
                mod = torch.where(column(alive, mod), mod - upd, mod)
            if self.abort_early and step % check_every == 0:
                # C&W's early abort, per sample: stop when the objective did not improve by 0.01% over a
                # tenth of the steps -- unless the smallest adversarial did: right after the first
                # crossing the objective often sits above its pre-crossing value while Adam is still
                # shrinking the perturbation, and stopping there breaks the minimal-norm promise
                progress = (loss <= 0.9999 * prev) | (run_norm < 0.9999 * prev_norm)
                alive = alive & progress
                prev, prev_norm = loss, run_norm
                if step > 0:  # the checks double as the compaction points (the only host syncs)
                    best[idx], best_norm[idx], found[idx] = b_x, b_norm, b_found
                    keep = alive.nonzero().squeeze(1)
                    if keep.numel() == 0:
                        return
                    if keep.numel() < len(idx):
                        idx, xs, ys, w0s, cs = idx[keep], xs[keep], ys[keep], w0s[keep], cs[keep]
                        ts = ts[keep] if ts is not None else None
                        x_rec, mod, m1, m2 = x_rec[keep], mod[keep], m1[keep], m2[keep]
                        b_x, b_norm, b_found = b_x[keep], b_norm[keep], b_found[keep]
                        alive, prev, prev_norm, run_norm = alive[keep], prev[keep], prev_norm[keep], run_norm[keep]
        with torch.no_grad():  # the last update has not been scored yet
            xa = torch.tanh(w0s + mod) * half + mid
            hit = self._hit(model(xa), ys, ts, task) & alive
            _, b_x, b_norm, b_found = _keep_smallest(xa, xs, hit, b_x, b_norm, b_found)
        best[idx], best_norm[idx], found[idx] = b_x, b_norm, b_found


def _keep_smallest(
    xa: torch.Tensor, xs: torch.Tensor, hit: torch.Tensor, b_x: torch.Tensor, b_norm: torch.Tensor,
    b_found: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the smallest adversarial seen (masked: no host sync): candidates ``xa`` ``(B, ...)`` around
    ``xs``, ``hit`` ``(B,)`` where adversarial; returns ``(L2 norms (B,), b_x, b_norm, b_found)``."""
    nrm = lp_norm(xa - xs, "l2")
    better = hit & (nrm < b_norm)
    b_x = torch.where(column(better, xa), xa, b_x)
    b_norm = torch.where(better, nrm, b_norm)
    b_found = b_found | hit
    return nrm, b_x, b_norm, b_found


def _adam_step(
    m1: torch.Tensor, m2: torch.Tensor, grad: torch.Tensor, t: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (Kingma & Ba 2015, Alg. 1) with bias correction at step ``t`` (from 1): the new
    moments and the update, all shaped like ``grad``."""
    b1, b2, tiny = 0.9, 0.999, 1e-8
    m1 = b1 * m1 + (1 - b1) * grad
    m2 = b2 * m2 + (1 - b2) * grad * grad
    upd = lr * (m1 / (1 - b1**t)) / ((m2 / (1 - b2**t)).sqrt() + tiny)
    return m1, m2, upd


# ---------------------------------------------------------------------------------------- DeepFool
class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al. 2016): step to the closest linearised decision boundary.

    At each iterate ``x_i`` every candidate class ``k`` (the ``candidates - 1`` most likely other classes
    on clean data) gives a linearised boundary ``f_k + <w_k, r> = 0`` with ``f_k = Z_k - Z_y`` and
    ``w_k = grad f_k`` (Alg. 2). The closest one, ``l = argmin_k |f_k| / ||w_k||_q`` with ``q`` the dual
    norm (2 for L2, 1 for Linf), gives the step ``r_i = |f_l| / ||w_l||_2^2 * w_l`` (L2, Alg. 2) or
    ``r_i = |f_l| / ||w_l||_1 * sign(w_l)`` (Linf, §3.3 with ``p = inf``). Steps accumulate, and the
    iterate is ``x_{i+1} = clip(x + (1 + overshoot) * sum_j r_j)`` (the overshoot applied at every
    step, as in foolbox). A sample stops at its first adversarial iterate; samples still correct after
    ``steps`` come back unchanged.

    Targeted (``targets`` given): one boundary, between the target and the strongest other class.

    Settings (keyword-only):
        steps: the maximum number of linearisations.
        overshoot: relative overshoot past the boundary (the paper's 0.02).
        candidates: classes considered, the true class included (top-k by clean logit, as foolbox).
        compact_every: drop finished samples from the batch every this many steps (a host sync).

    Shapes: ``x`` ``(N, C, H, W)`` in ``threat.bounds``, ``y`` ``(N,)`` -> adversarial ``(N, C, H, W)``.

    Example:
        >>> from robustaudit.core.threat import ThreatModel
        >>> from robustaudit.data.digits import digits_split
        >>> from robustaudit.models.catalog import create_model
        >>> model = create_model("digits-cnn")
        >>> x, y = digits_split("test").load(range(8))
        >>> adv = DeepFool(steps=50)(model, x, y, ThreatModel("linf", float("inf")))
        >>> bool((model(adv).argmax(1) != y).all())
        True
    """

    name = "deepfool"
    kind = AttackKind.MINIMAL_NORM
    norms = ("l2", "linf")
    SETTINGS = Settings(
        Int("steps", 50, "the maximum number of linearisations", 1, MAX_STEPS),
        Float("overshoot", 0.02, "relative overshoot past the boundary", 0),
        Int("candidates", 10, "classes considered, the true class included", 2, MAX_CLASSES),
        Int("compact_every", 5, "steps between drops of finished samples from the batch (a host sync)", 1, MAX_STEPS),
    )

    def __init__(
        self,
        *,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        compact_every: int = 5,
    ) -> None:
        DeepFool.SETTINGS.apply(self, locals())

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        n = x.shape[0]
        with torch.no_grad():
            logits0 = class_logits(model, x, self.name)
        if targets is None:
            # the true class first, then the most likely others on clean data (foolbox's top-k)
            k = min(self.candidates, logits0.shape[1])
            ranked = logits0.scatter(1, y[:, None], math.inf).argsort(dim=1, descending=True)[:, :k]
        else:
            ranked = None
        best = x.clone()
        idx = torch.arange(n, device=x.device)
        xs, ys, xa = x, y, x.clone()
        ts = targets
        cls = ranked
        p_total = torch.zeros_like(x)
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        b_x = best
        for step in range(self.steps + 1):
            xg = xa.detach().requires_grad_(True)
            logits = model(xg)
            hit = success(task, logits.detach(), ys, ts) & alive
            b_x = torch.where(column(hit, xa), xa, b_x)  # the first adversarial iterate is the result
            alive = alive & ~hit
            if step == self.steps:
                break
            f, grads = self._boundaries(logits, xg, ys, ts, cls)
            step_r = self._step(f, grads, threat.norm)
            with torch.no_grad():
                p_total = p_total + torch.where(column(alive, step_r), step_r, torch.zeros_like(step_r))
                moved = clip_to_bounds(xs + (1 + self.overshoot) * p_total, threat.bounds)
                xa = torch.where(column(alive, xa), moved, xa)
            if (step + 1) % self.compact_every == 0 and step + 1 < self.steps:
                best[idx] = b_x  # write back, then drop the finished samples (the one host sync)
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return best
                if keep.numel() < len(idx):
                    idx, xs, ys, xa, p_total = idx[keep], xs[keep], ys[keep], xa[keep], p_total[keep]
                    ts = ts[keep] if ts is not None else None
                    cls = cls[keep] if cls is not None else None
                    b_x, alive = b_x[keep], alive[keep]
        best[idx] = b_x
        return best

    @staticmethod
    def _boundaries(
        logits: torch.Tensor, xg: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
        cls: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linearised boundaries at ``xg``: values ``f`` ``(M, B)`` and gradients ``(M, B, C, H, W)``.

        Untargeted: ``f_k = Z_k - Z_y`` for the candidates ``cls[:, 1:]``. Targeted: the single
        ``f = Z_t - max_{j != t} Z_j``. One forward, one backward per boundary.
        """
        if targets is None:
            z = logits.gather(1, cls)
            f = z[:, 1:] - z[:, :1]
        else:
            rival = logits.detach().scatter(1, targets[:, None], -math.inf).argmax(dim=1)
            f = logits.gather(1, targets[:, None]) - logits.gather(1, rival[:, None])
        grads = []
        for j in range(f.shape[1]):
            (g,) = torch.autograd.grad(f[:, j].sum(), xg, retain_graph=j + 1 < f.shape[1])
            grads.append(g)
        return f.detach(), torch.stack(grads, dim=1)

    @staticmethod
    def _step(f: torch.Tensor, grads: torch.Tensor, norm: str) -> torch.Tensor:
        """The step to the closest linearised boundary. ``(M, B), (M, B, ...) -> (M, ...)``."""
        flat = grads.flatten(2)
        # distance to boundary k in the attacked norm: |f_k| / ||w_k||_q with q the dual norm
        dual = flat.norm(p=2, dim=2) if norm == "l2" else flat.abs().sum(dim=2)
        dist = f.abs() / (dual + 1e-8)
        pick = dist.argmin(dim=1)
        rows = torch.arange(len(f), device=f.device)
        d = dist[rows, pick] + 1e-4  # a hair past the boundary for numerical stability (as foolbox)
        w = grads[rows, pick]
        if norm == "l2":  # Alg. 2: |f| / ||w||_2^2 * w
            return column(d / (w.flatten(1).norm(p=2, dim=1) + 1e-8), w) * w
        return column(d, w) * w.sign()  # Linf (§3.3, q = 1): |f| / ||w||_1 * sign(w)
