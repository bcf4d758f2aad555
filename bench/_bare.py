"""The floor every PGD benchmark compares with: PGD with nothing but its arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def bare_pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float,
             alpha: float, steps: int) -> torch.Tensor:
    """Linf PGD: random start, ``steps`` signed-gradient steps of ``alpha`` on the cross-entropy of
    ``forward``, projection and clamp to [0, 1], no early stop; plus the scoring forward of the last iterate
    that any PGD returning its best iterate pays. ``(N, C, H, W) -> (N, C, H, W)``."""
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(forward(xa), y), xa)
        xa = xa.detach() + alpha * grad.sign()
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        forward(xa)
    return xa.detach()
