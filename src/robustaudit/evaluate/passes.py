"""What an attack spends: :class:`PassCounter` wraps the model an attack is given and counts samples through
``forward`` and samples whose output a gradient flowed back through, so every attack is counted without
touching its code (docs/cost.md). Re-exported by :mod:`robustaudit.evaluate.cost`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


class PassCounter(nn.Module):
    """The model as an attack sees it, counting what the attack spends on it.

    ``forward_passes``: samples through ``forward`` (a batch of B counts B, with or without grad).
    ``backward_passes``: samples of an output a gradient flowed back through (a hook on the output
    tensor fires once per backward / ``autograd.grad`` that reaches it, whatever the loss used of it).
    The wrapped model stays ``.model`` (as robustaudit's other wrappers keep it), so attacks that look
    through wrappers (BPDA's ``preprocess``) still find it; parameters and modes are the model's.

    Shapes: ``x (N, ...)`` -> whatever the model returns (logits ``(N, K)``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # a wrapper's own flag starts True; mirror the model's
        self.forward_passes = 0
        self.backward_passes = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``x (N, ...)`` -> ``model(x)``, counting ``N`` forward and, once a gradient reaches the
        output, ``N`` backward passes."""
        out = self.model(x, *args, **kwargs)
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self.forward_passes += n
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._backward_hook(n))
        return out

    def _backward_hook(self, n: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.backward_passes += n

        return hook

    def take(self) -> tuple[int, int]:
        """``(forward, backward)`` passes counted since the last ``take``; resets both."""
        out = (self.forward_passes, self.backward_passes)
        self.forward_passes = self.backward_passes = 0
        return out


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers that differ by at most one and sum to ``total`` (the larger first):
    how one minimal-norm run's passes are spread over the eps rows it serves."""
    q, r = divmod(int(total), parts)
    return [q + (1 if i < r else 0) for i in range(parts)]
