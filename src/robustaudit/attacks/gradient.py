"""First-order white-box attacks: FGSM, PGD and the iterative variants built on PGD.

PGD writes its step on the iterative engine (:mod:`robustaudit.attacks.engine`: early stopping,
active-set compaction, best iterate, restarts); the variants change only what PGD exposes as hooks:

* ``alpha`` — the default step size (BIM, ILLC, MI-FGSM use their papers' budgets);
* ``_step_direction(grad, norm, state)`` — the step direction, with a per-restart ``state`` dict of
  per-sample tensors that the engine compacts with the active set (MI-FGSM keeps its momentum there);
* ``_outcome(task, logits, y, targets)`` — when a sample is done and how to rank iterates that are not
  (ILLC stops at the least-likely class but still prefers a misclassified iterate over a correct one).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, attack_loss, success
from robustaudit.attacks.settings import MAX_RESTARTS, MAX_STEPS, Bool, Choice, Float, Int, Settings
from robustaudit.attacks.engine import Active, IterativeSearch, Problem, Query, view
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.rng import keyed_normal, keyed_uniform
from robustaudit.core.task import Task
from robustaudit.core.threat import ThreatModel

_LOSSES = ("ce", "margin")
_LOSS = Choice("loss", "ce", "ce (cross-entropy) or margin (C&W-style logit margin)", _LOSSES)


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


#: The step and start settings of the PGD families (classification and segmentation), in their order.
STEP_SETTINGS = (
    Float("step_size", None, "absolute step (default: rel_step_size * eps)", 0, open_low=True, optional=True),
    Float("rel_step_size", None, "step as a fraction of eps (default 2.5 / steps)", 0, open_low=True, optional=True),
    Bool("random_start", True, "start uniformly inside the ball rather than at x"),
)


def start_in_ball(self: Attack, p: Problem, a: Active, restart: int) -> None:
    """The engine's ``_start`` hook of the PGD family: the iterate ``a["xa"]`` starts at a keyed uniform
    point of the ball (``random_start``) or at the clean input."""
    if self.random_start:
        a["xa"] = random_start(a.x, a.ids, p.threat, self.stream(p.seed, p.threat, restart))
    else:
        a["xa"] = a.x.clone()


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps along the gradient.

    Linf uses the gradient's sign; L2 the normalised gradient (the "fast gradient method").

    Example:
        >>> adv = FGSM()(model, x, y, ThreatModel("linf", 0.1))   # x: (N, C, H, W) in [0, 1]
    """

    name = "fgsm"
    norms = ("linf", "l2")
    SETTINGS = Settings(_LOSS)

    def __init__(self, *, loss: str = "ce") -> None:
        FGSM.SETTINGS.apply(self, locals())

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        _, _, grad = _input_grad(model, x, y, targets, task, self.loss)
        return clip_to_bounds(x + threat.eps * ascent_direction(grad, threat.norm), threat.bounds)


class PGD(Attack, IterativeSearch):
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
    SETTINGS = Settings(
        Int("steps", 50, "iterations per restart", 1, MAX_STEPS),
        Int("restarts", 1, "random restarts, on samples still unbroken", 1, MAX_RESTARTS),
        *STEP_SETTINGS,
        _LOSS,
        Bool("early_stop", True, "freeze samples once adversarial"),
        Int("compact_every", 5, "steps between drops of finished samples from the batch (a host sync)", 1, MAX_STEPS),
        exclusive=(("step_size", "rel_step_size"),),
    )

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
        PGD.SETTINGS.apply(self, locals())

    def alpha(self, eps: float) -> float:
        """The absolute step size used at radius ``eps``."""
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        return rel * eps

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        problem = Problem(model, x, y, threat, targets, ids, task, seed)
        return self.search(problem, range(self.restarts)).x

    # ------------------------------------------------------------------ the engine's hooks
    _start = start_in_ball

    def _last(self, p: Problem) -> int:
        return self.steps  # steps gradient queries, then the last iterate is scored

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        if t < self.steps:
            logits, obj, grad = _input_grad(p.model, a["xa"], a.y, a.targets, p.task, self.loss)
            return Query(a["xa"], logits, obj, grad)
        with torch.no_grad():  # the last iterate has not been scored yet
            logits = p.model(a["xa"])
            return Query(a["xa"], logits, attack_loss(p.task, logits, a.y, a.targets, self.loss))

    def _judge(self, p: Problem, a: Active, q: Query) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        done, tier = self._outcome(p.task, q.logits, a.y, a.targets)
        return done, q.obj, tier

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        threat, xs = p.threat, a.x
        moved = q.point + self.alpha(threat.eps) * self._step_direction(q.grad, threat.norm, a.state)
        moved = clip_to_bounds(xs + project(moved - xs, threat.norm, threat.eps), threat.bounds)
        a["xa"] = torch.where(view(a.alive, moved), moved, q.point)

    def _compact_due(self, t: int) -> bool:
        # after the (t+1)-th step, before the next query; never after the last step
        return (t + 1) % self.compact_every == 0 and t + 1 < self.steps

    def _direction(self, grad: torch.Tensor, norm: str) -> torch.Tensor:
        """The step direction from the input gradient; overridden by momentum variants."""
        return ascent_direction(grad, norm)

    def _step_direction(self, grad: torch.Tensor, norm: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """The step direction with per-restart ``state``: a dict of tensors with one row per active
        sample (``(n_active, ...)``), which the engine compacts whenever it drops finished samples.

        The default ignores ``state`` and calls :meth:`_direction`; stateful rules (momentum) override this.
        """
        return self._direction(grad, norm)

    def _outcome(
        self, task: Task, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Judge iterates: ``(done (N,) bool, tier (N,) int64 or None)``.

        ``done`` samples stop moving and keep this iterate. Among iterates that are not done, a higher
        ``tier`` wins over a higher objective (``None``: rank by objective only). The default is the
        attack's success criterion with no tiers.
        """
        return success(task, logits, y, targets), None


class BIM(PGD):
    """Basic Iterative Method (Kurakin et al. 2017): PGD from the clean input, no random start.

    Each step moves ``step_size`` along the sign of the gradient (Linf; the normalised gradient for L2)
    and is clipped to the eps-ball and the bounds. The paper's budget is 1/255 per step for
    ``min(eps*255 + 4, 1.25*eps*255)`` steps, i.e. a total travel of about ``1.25 * eps`` — a recipe
    tied to 8-bit images. We keep the total travel and fix the step count: ``steps=10`` and a step of
    ``1.25 * eps / steps`` by default, so a run can reach the boundary of the ball from the clean point
    and still move along it. Deterministic (no random draws); stops on samples once misclassified and
    keeps the best iterate like PGD.

    Settings (keyword-only): ``steps``, ``step_size`` (absolute) or ``rel_step_size`` (fraction of
    eps), ``loss`` (``ce`` | ``margin``), ``early_stop``, ``compact_every`` — as for PGD.

    Example:
        >>> adv = BIM(steps=10)(model, x, y, ThreatModel("linf", 0.1))   # x: (N, C, H, W) -> same shape
    """

    name = "bim"
    norms = ("linf", "l2")
    randomized = False
    SETTINGS = PGD.SETTINGS.pick(PGD.SETTINGS["steps"].but(default=10), "step_size", "rel_step_size", "loss",
                                 "early_stop", "compact_every")

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        loss: str = "ce",
        early_stop: bool = True,
        compact_every: int = 5,
    ) -> None:
        BIM.SETTINGS.apply(self, locals())
        self.restarts, self.random_start = 1, False  # the paper's: one run from the clean input

    def alpha(self, eps: float) -> float:
        """The absolute step: ``step_size``, else ``rel_step_size * eps``, else ``1.25 * eps / steps``."""
        if self.step_size is None and self.rel_step_size is None:
            return 1.25 * eps / self.steps
        return super().alpha(eps)


class ILLC(BIM):
    """Iterative Least-Likely Class method (Kurakin et al. 2017): BIM towards the least-likely class.

    The cross-entropy to the class the model finds least likely on the clean input is descended.
    Success is counted as in the paper: the sample is misclassified (any wrong class). The search
    stops on a sample once it is classified as its least-likely class; when it never gets there, a
    misclassified iterate is preferred over a correct one, then the iterate closest to the target.
    The least-likely class is taken over the classes other than the label (a clean prediction that is
    already wrong could otherwise make the label itself the target). Explicit ``targets`` replace the
    least-likely classes. Classification only. Same settings and defaults as :class:`BIM`.

    Example:
        >>> adv = ILLC()(model, x, y, ThreatModel("linf", 0.3))   # (N, C, H, W) -> same shape
        >>> (model(adv).argmax(1) == model(x).argmin(1)).float().mean()   # most samples hit y_LL
    """

    name = "illc"
    untargeted_objective = False  # it descends towards the least-likely class

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        if targets is None:
            with torch.no_grad():
                logits = model(x)
            targets = logits.scatter(1, y[:, None], math.inf).argmin(1)
        return super()._run(model, x, y, threat, targets, ids, seed, task)

    def _outcome(self, task, logits, y, targets):  # noqa: D102 - see PGD._outcome
        return task.correct(logits, targets), (~task.correct(logits, y)).long()


class MIFGSM(PGD):
    """Momentum Iterative FGSM (Dong et al. 2018): gradient steps along an accumulated momentum.

    Per step: ``g <- decay * g + grad / ||grad||_1`` (L1 norm per sample, so every step weighs the
    same), then ``x <- clip(proj(x + step_size * dir(g)))`` with ``dir = sign`` for Linf and
    ``g / ||g||_2`` for L2. The momentum starts at zero on every restart and is kept per sample.
    Defaults follow the paper: ``steps=10``, ``decay=1.0``, step ``eps / steps`` (a total travel of
    eps), no random start. Momentum makes the examples transfer better, which is why it is the usual
    inner attack of :class:`~robustaudit.attacks.transfer.Transfer`.

    Settings (keyword-only): ``steps``, ``decay``, ``step_size`` (absolute) or ``rel_step_size``
    (fraction of eps), ``random_start``, ``restarts``, ``loss`` (``ce`` | ``margin``), ``early_stop``,
    ``compact_every``.

    Example:
        >>> adv = MIFGSM(steps=10, decay=1.0)(model, x, y, ThreatModel("linf", 0.1))   # (N, C, H, W)
    """

    name = "mifgsm"
    norms = ("linf", "l2")
    #: deterministic with the default ``random_start=False``
    randomized = False
    SETTINGS = PGD.SETTINGS.pick(
        PGD.SETTINGS["steps"].but(default=10),
        Float("decay", 1.0, "momentum decay (0: no momentum)", 0),
        "step_size", "rel_step_size", PGD.SETTINGS["random_start"].but(default=False), "restarts", "loss",
        "early_stop", "compact_every",
    )

    def __init__(
        self,
        *,
        steps: int = 10,
        decay: float = 1.0,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = False,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = True,
        compact_every: int = 5,
    ) -> None:
        MIFGSM.SETTINGS.apply(self, locals())

    def alpha(self, eps: float) -> float:
        """The absolute step: ``step_size``, else ``rel_step_size * eps``, else ``eps / steps``."""
        if self.step_size is None and self.rel_step_size is None:
            return eps / self.steps
        return super().alpha(eps)

    def _step_direction(self, grad: torch.Tensor, norm: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
        # the L1 normalisation is per sample: a sample with tiny gradients still gets full-size steps
        l1 = grad.abs().reshape(len(grad), -1).sum(dim=1).clamp_min(1e-12)
        g = grad / l1.view(-1, *[1] * (grad.dim() - 1))
        momentum = state.get("momentum")
        momentum = g if momentum is None else self.decay * momentum + g
        state["momentum"] = momentum
        return ascent_direction(momentum, norm)
