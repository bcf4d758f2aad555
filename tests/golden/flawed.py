"""A model with a planted flaw for the golden ``--checks full`` audit: the shipped ``digits-cnn`` behind
a 2-bit input quantization. ``torch.round`` has a zero gradient almost everywhere, so gradient attacks
see no signal (the obfuscated-gradient case of Athalye et al. 2018) and the full checks must answer
with BPDA and Square."""

from __future__ import annotations

import torch
from torch import nn


class Quantized(nn.Module):
    """``(N, 1, 8, 8)`` in [0, 1] -> logits ``(N, 10)`` of ``inner`` on the input rounded to 4 levels."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 3) / 3)


def make_quantized() -> nn.Module:
    from robustaudit.models.catalog import create_model

    return Quantized(create_model("digits-cnn"))
