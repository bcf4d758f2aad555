"""Adversarial training objectives: PGD-AT, TRADES, MART, Fast-AT and Free-AT.

Each class is a :class:`~robustaudit.defenses.training.Defense`: it builds the adversarial examples
of one minibatch (in eval mode, as our attacks do, so dropout does not randomise the inner search)
and returns the loss the loop minimises. The pure loss formulas (:func:`trades_loss`,
:func:`mart_loss`) are separate functions so that tests can check them against the papers'
reference implementations on a fixed batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustaudit.attacks.engine import Active, IterativeSearch, Problem, Query
from robustaudit.attacks.gradient import PGD, random_start
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.rng import keyed_normal
from robustaudit.core.task import CLASSIFICATION
from robustaudit.core.threat import ThreatModel
from robustaudit.defenses.training import (
    BatchContext,
    Defense,
    check_steps,
    check_weight,
)

# ----------------------------------------------------------------------------------------- formulas


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES' outer loss (Zhang et al. 2019, reference ``trades.py``).

    ``CE(f(x), y) + beta * mean_i KL(softmax f(x_i) || softmax f(x'_i))`` with logits ``(B, K)`` and
    labels ``(B,)``. As in the reference, gradients flow through both distributions.
    """
    natural = F.cross_entropy(logits_nat, y)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="sum") / len(y)
    return natural + beta * robust


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART's loss (Wang et al. 2020, reference ``mart.py``), logits ``(B, K)``, labels ``(B,)``.

    ``BCE(x', y) + beta * mean_i KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i))`` where the boosted CE is
    ``CE(f(x'), y) - log(1 - max_{k != y} p_k(x'))``: it also pushes down the strongest wrong class.
    The KL term weighs misclassified (low ``p_y``) samples more. Constants (1.0001, 1e-12, 1.0000001)
    are the reference's, kept for parity.
    """
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    boosted = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    return boosted + beta * (kl * (1.0000001 - true_probs)).sum() / len(y)


class _Ascent(IterativeSearch):
    """The inner maximisation of TRADES and MART on the engine: every sample takes every step (no
    early stop, no best iterate: the last iterate is the result), from ``x + 0.001 * N(0, 1)``."""

    early_stop = False
    keep_last = True

    def __init__(self, steps: int, alpha: float, key: int, objective: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.steps, self.alpha, self.key, self.objective = steps, alpha, key, objective

    def _start(self, p: Problem, a: Active, restart: int) -> None:
        noise = keyed_normal(a.ids, tuple(a.x.shape[1:]), self.key, device=a.x.device, dtype=a.x.dtype)
        a["xa"] = a.x + 0.001 * noise  # not clipped: the reference codes start here

    def _last(self, p: Problem) -> int:
        return self.steps

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        xa = a["xa"]
        if t == self.steps:  # the result: nothing to score
            return Query(xa)
        xa.requires_grad_(True)
        (grad,) = torch.autograd.grad(self.objective(p.model(xa)), xa)
        return Query(xa.detach(), grad=grad)

    def _judge(self, p: Problem, a: Active, q: Query) -> tuple[torch.Tensor, torch.Tensor, None]:
        n = len(q.point)
        return torch.zeros(n, dtype=torch.bool, device=q.point.device), q.point.new_zeros(n), None

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        threat, x = p.threat, a.x
        xa = q.point + self.alpha * ascent_direction(q.grad, threat.norm)
        a["xa"] = clip_to_bounds(x + project(xa - x, threat.norm, threat.eps), threat.bounds)


def ascend(
    model: nn.Module,
    x: torch.Tensor,
    ids: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    rel_step_size: float,
    key: int,
    objective: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Projected steepest ascent of ``objective(logits)`` (a scalar) from ``x + 0.001 * N(0, 1)``.

    The inner maximisation of TRADES and MART as their reference code runs it: a tiny Gaussian
    start (keyed by sample id), no early stop, every step projected to the ball and the bounds.
    ``x`` ``(B, C, H, W)`` -> ``(B, C, H, W)``. The model is put in eval mode meanwhile.
    """
    search = _Ascent(steps, rel_step_size * threat.eps, key, objective)
    problem = Problem(model, x.detach(), None, threat, None, ids.cpu(), CLASSIFICATION)
    with eval_mode(model), torch.enable_grad():
        return search.search(problem, range(1)).x.detach()


def _rel_step(value: float | None, steps: int, name: str) -> float:
    if value is None:
        return 2.5 / steps  # as our PGD: the run can cross the ball and still move along its surface
    if check_weight(f"{name}: rel_step_size", value) == 0:
        raise UserError(f"{name}: rel_step_size must be > 0")
    return float(value)


# ---------------------------------------------------------------------------------------- defenses


class PGDAT(Defense):
    """PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples.

    Settings: ``steps`` (default the config's ``attack_steps``, 10), ``rel_step_size`` (default
    ``2.5 / steps``). The inner PGD starts uniformly in the ball and runs all its steps (no early
    stop: a barely-broken example is a weaker training signal).
    """

    name = "pgd-at"
    adversarial = True

    def __init__(self, *, steps: int = 10, rel_step_size: float | None = None) -> None:
        self.steps = check_steps("pgd-at: steps", steps)
        self.rel_step_size = rel_step_size
        kwargs = {} if rel_step_size is None else {"rel_step_size": check_weight("pgd-at: rel_step_size", rel_step_size)}
        self._attack = PGD(steps=self.steps, early_stop=False, **kwargs)

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        # seed + epoch: the key the shipped digits-cnn-pgdat weights were trained with
        adv = self._attack(model, x, y, ctx.threat, ids=ctx.ids, seed=ctx.seed + ctx.epoch)
        logits = model(adv)
        return F.cross_entropy(logits, y), logits


class TRADES(Defense):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``.

    ``x'`` maximises the KL term by ``steps`` sign-gradient steps from ``x + 0.001 * N(0, 1)``.
    Settings: ``beta`` (default 6, the paper's CIFAR-10 choice), ``steps``, ``rel_step_size``.
    Reported training accuracy is on ``x'``.
    """

    name = "trades"
    adversarial = True

    def __init__(self, *, beta: float = 6.0, steps: int = 10, rel_step_size: float | None = None) -> None:
        self.beta = check_weight("trades: beta", beta)
        self.steps = check_steps("trades: steps", steps)
        self.rel_step_size = rel_step_size
        self._rel = _rel_step(rel_step_size, self.steps, "trades")

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, ctx: BatchContext) -> torch.Tensor:
        """The inner maximisation: ``(B, C, H, W)`` -> ``(B, C, H, W)`` inside ``ctx.threat``."""
        with torch.no_grad(), eval_mode(model):
            p_nat = F.softmax(model(x), dim=1)

        def kl(logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits, dim=1), p_nat, reduction="sum")

        return ascend(model, x, ctx.ids, ctx.threat, steps=self.steps, rel_step_size=self._rel,
                      key=ctx.key("trades"), objective=kl)

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        adv = self.adversarial_examples(model, x, ctx)
        logits_nat, logits_adv = model(x), model(adv)
        return trades_loss(logits_nat, logits_adv, y, self.beta), logits_adv


class MART(Defense):
    """MART (Wang et al. 2020): boosted CE on ``x'`` plus a KL term weighted by ``1 - p_y(x)``.

    ``x'`` is a cross-entropy PGD example from ``x + 0.001 * N(0, 1)`` (as in the reference code).
    Settings: ``beta`` (the paper's lambda; default 5 — the reference code's default is 6),
    ``steps``, ``rel_step_size``.
    """

    name = "mart"
    adversarial = True

    def __init__(self, *, beta: float = 5.0, steps: int = 10, rel_step_size: float | None = None) -> None:
        self.beta = check_weight("mart: beta", beta)
        self.steps = check_steps("mart: steps", steps)
        self.rel_step_size = rel_step_size
        self._rel = _rel_step(rel_step_size, self.steps, "mart")

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        adv = ascend(model, x, ctx.ids, ctx.threat, steps=self.steps, rel_step_size=self._rel,
                     key=ctx.key("mart"), objective=lambda logits: F.cross_entropy(logits, y, reduction="sum"))
        logits_nat, logits_adv = model(x), model(adv)
        return mart_loss(logits_nat, logits_adv, y, self.beta), logits_adv


class FastAT(Defense):
    """Fast adversarial training (Wong et al. 2020): one FGSM step from a uniform random start.

    The step is ``alpha * eps`` (default 1.25 eps, the paper's), projected back to the ball. A guard
    watches for catastrophic overfitting: after every epoch the loop measures PGD-10 accuracy at the
    training eps on ``guard_size`` held-out training samples; when it falls more than ``guard_drop``
    below its best, training stops and the best epoch's weights are restored (``guard_size=0``
    turns the guard off).
    """

    name = "fast-at"
    adversarial = True

    def __init__(self, *, alpha: float = 1.25, guard_size: int = 100, guard_drop: float = 0.2) -> None:
        self.alpha = check_weight("fast-at: alpha", alpha)
        if isinstance(guard_size, bool) or not isinstance(guard_size, int) or guard_size < 0:
            raise UserError(f"fast-at: guard_size must be an integer >= 0, got {guard_size!r}")
        self.guard_size = guard_size
        self.guard_drop = check_weight("fast-at: guard_drop", guard_drop)

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        threat = ctx.threat
        start = random_start(x, ctx.ids, threat, ctx.key("fast-at"))
        with eval_mode(model), torch.enable_grad():
            xs = start.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xs), y, reduction="sum"), xs)
        delta = start - x + self.alpha * threat.eps * ascent_direction(grad, threat.norm)
        adv = clip_to_bounds(x + project(delta, threat.norm, threat.eps), threat.bounds).detach()
        logits = model(adv)
        return F.cross_entropy(logits, y), logits


class FreeAT(Defense):
    """Free adversarial training (Shafahi et al. 2019): each minibatch replayed ``replays`` times.

    One backward pass gives both the parameter gradient (an optimizer step) and the input gradient,
    which moves a perturbation by ``eps`` along its sign; the perturbation persists across replays
    and across minibatches (one ``(batch_size, C, H, W)`` tensor, as in the reference), so the
    adversary gets stronger at no extra cost. The loop runs ``ceil(epochs / replays)`` epochs, so
    the number of gradient computations matches ``epochs`` of standard training.
    """

    name = "free-at"
    adversarial = True

    def __init__(self, *, replays: int = 4) -> None:
        self.replays = check_steps("free-at: replays", replays)
        self._delta: torch.Tensor | None = None

    def epochs(self, requested: int) -> int:  # noqa: D102 - see Defense.epochs
        return max(1, math.ceil(requested / self.replays))

    def train_batch(self, model, opt, x, y, ctx):  # noqa: D102 - see Defense.train_batch
        b, threat = len(y), ctx.threat
        if self._delta is None or len(self._delta) < b or self._delta.shape[1:] != x.shape[1:]:
            self._delta = torch.zeros_like(x)
        delta = project(self._delta[:b], threat.norm, threat.eps)  # eps grows during warm-up
        loss_sum, correct = 0.0, 0
        for _ in range(self.replays):
            d = delta.clone().requires_grad_(True)
            logits = model(clip_to_bounds(x + d, threat.bounds))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # one pass: parameter gradients and d.grad
            opt.step()
            delta = project(d.detach() + threat.eps * ascent_direction(d.grad, threat.norm), threat.norm, threat.eps)
            loss_sum += loss.item() * b
            correct += int((logits.argmax(1) == y).sum())
        self._delta[:b] = delta
        return loss_sum / self.replays, round(correct / self.replays)

    def loss(self, model, x, y, ctx):  # noqa: D102 - unused: train_batch does the replays
        raise NotImplementedError("free-at trains in train_batch")
