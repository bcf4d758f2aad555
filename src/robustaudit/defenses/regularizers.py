"""Regularizers that train on clean inputs: input-gradient penalty, Jacobian penalty, label smoothing.

None of them attacks the model while training; they smooth it. Label smoothing in particular is
known to look robust under cross-entropy PGD because it flattens the loss surface the attack climbs
(gradient masking), which margin-loss and black-box attacks see through — audit such models with
those attacks too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustaudit.core.errors import UserError
from robustaudit.core.rng import keyed_normal
from robustaudit.defenses.training import Defense, check_steps, check_weight


class InputGradient(Defense):
    """Input-gradient regularization (Ross & Doshi-Velez 2018, "double backpropagation").

    Loss ``mean_i CE_i + lam * mean_i ||grad_x CE_i||_2^2``; the penalty is differentiated through
    the input gradient (``create_graph=True``), which costs about a second backward pass.
    Setting: ``lam`` (default 1.0).
    """

    name = "input-grad"

    def __init__(self, *, lam: float = 1.0) -> None:
        self.lam = check_weight("input-grad: lam", lam)

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        ce = F.cross_entropy(logits, y, reduction="none")
        # per-sample gradients: the sum's gradient w.r.t. x_i is grad CE_i (samples are independent)
        (grad,) = torch.autograd.grad(ce.sum(), xg, create_graph=True)
        penalty = grad.pow(2).flatten(1).sum(1).mean()
        return ce.mean() + self.lam * penalty, logits


class Jacobian(Defense):
    """Jacobian regularization by random projections (Hoffman, Roberts & Yaida 2019).

    ``R = 1/2 * ||J||_F^2`` with ``J = d logits / d x``, estimated as ``K / (P B) * sum_p ||v_p^T J||^2``
    over ``P`` random unit vectors ``v_p`` in logit space (``K`` classes, ``B`` samples), as in the
    reference ``JacobianReg``. Loss ``CE + lam * R``. Settings: ``lam`` (default 0.01, the paper's
    MNIST value), ``projections`` (default 1). The projections are keyed by sample id and epoch.
    """

    name = "jacobian"

    def __init__(self, *, lam: float = 0.01, projections: int = 1) -> None:
        self.lam = check_weight("jacobian: lam", lam)
        self.projections = check_steps("jacobian: projections", projections)

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        b, k = logits.shape
        j2 = logits.new_zeros(())
        for p in range(self.projections):
            v = keyed_normal(ctx.ids, (k,), ctx.key("jacobian", p), device=x.device, dtype=logits.dtype)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
            (jv,) = torch.autograd.grad(logits, xg, grad_outputs=v, create_graph=True)  # (B, C, H, W)
            j2 = j2 + k * jv.pow(2).sum() / (self.projections * b)
        return F.cross_entropy(logits, y) + self.lam * 0.5 * j2, logits


class LabelSmoothing(Defense):
    """Cross-entropy against labels smoothed by ``alpha`` (Szegedy et al. 2016): the target puts
    ``1 - alpha + alpha / K`` on the label and ``alpha / K`` on every other class. Default 0.1."""

    name = "label-smoothing"

    def __init__(self, *, alpha: float = 0.1) -> None:
        self.alpha = check_weight("label-smoothing: alpha", alpha)
        if self.alpha >= 1:
            raise UserError(f"label-smoothing: alpha must be in [0, 1), got {alpha!r}")

    def loss(self, model, x, y, ctx):  # noqa: D102 - see Defense.loss
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.alpha), logits
