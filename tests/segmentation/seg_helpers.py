"""Shared pieces of the segmentation tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch
from torch import nn

#: classes of :func:`tiny_segmenter`
K = 4


def tiny_segmenter() -> nn.Module:
    """A small, fixed, fully convolutional net: ``(N, 1, H, W) -> (N, K, H, W)`` logits, sharp enough that
    attacks at small eps flip pixels (its weights are scaled up from a seeded init)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, K, 3, padding=1))
    with torch.no_grad():
        net[0].weight.mul_(5)
        net[2].weight.mul_(3)
    return net.eval()
