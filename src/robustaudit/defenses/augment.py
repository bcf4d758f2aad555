"""Training-time data augmentation, keyed per sample (same draw wherever the sample lands).

Small images (at most 16×16, e.g. the 8×8 digits): a random translation by up to 1 pixel, zero fill
(the digits' background) and no flips (a flipped 2 is not a 2). Larger images: the usual CIFAR
recipe, a random crop after zero padding by 4 and a horizontal flip with probability 1/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustaudit.core.rng import keyed_uniform

SMALL = 16


def augment(x: torch.Tensor, ids: torch.Tensor, key: int) -> torch.Tensor:
    """Augment a batch ``x`` ``(B, C, H, W)`` -> ``(B, C, H, W)``; draws keyed by ``ids`` ``(B,)`` and ``key``."""
    h, w = x.shape[-2:]
    small = max(h, w) <= SMALL
    pad = 1 if small else 4
    u = keyed_uniform(ids, (3,), key, device=x.device)
    shifts = (u[:, :2] * (2 * pad + 1)).long().clamp_max(2 * pad)  # (B, 2) offsets into the padded image
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    # a handful of distinct offsets: one slice per offset beats a per-sample gather on the CPU
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if bool(mask.any()):
                out[mask] = padded[mask, :, dy : dy + h, dx : dx + w]
    if not small:
        flip = u[:, 2] < 0.5
        out[flip] = out[flip].flip(-1)
    return out
