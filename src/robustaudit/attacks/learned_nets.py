"""The learned attacks' networks: the perturbation generator, AdvGAN's discriminator, the bound into the
threat model's ball, seeded construction and a weight fingerprint (see :mod:`robustaudit.attacks.learned`).

The generator (:class:`PerturbationNet`) is shape-agnostic: a stem convolution, one to three stride-2
convolutions (by the image size), two residual blocks, bilinear upsampling back to the exact input size
with a skip connection from the stem, and a 3×3 output convolution. GroupNorm (per sample) rather than
BatchNorm, so a sample's perturbation never depends on its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.core.errors import UserError

_TINY = 1e-12

# ---------------------------------------------------------------------------------------------- networks
def downsamplings(height: int, width: int) -> int:
    """Stride-2 stages for an ``H × W`` input: 1 below 24 pixels, 2 below 96, else 3 (4×4 inputs: 0)."""
    side = min(height, width)
    if side < 8:
        return 0
    return 1 if side < 24 else 2 if side < 96 else 3


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), _norm(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), _norm(channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h + self.body(h))


class PerturbationNet(nn.Module):
    """The generator: ``(N, C, H, W)`` in [0, 1] -> an unbounded perturbation direction ``(N, C, H, W)``.

    A stem convolution at full resolution, ``down`` stride-2 stages (channels doubled once, to
    ``2 * width``), two residual blocks at the lowest resolution, a 1×1 convolution back to ``width``
    channels, bilinear upsampling to the exact input size, the stem's features added (skip) and a 3×3
    output convolution. Only the stem and the output convolution run at full resolution, so the cost per
    image stays a few times a small classifier's (8×8: 2.7 M MACs, 32×32: 17 M at ``width=32``).

    Args:
        channels: input (and output) channels ``C``.
        width: feature channels at full resolution (``2 * width`` below it).
        down: stride-2 stages (see :func:`downsamplings`).
    """

    def __init__(self, channels: int, *, width: int = 32, down: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), _norm(width), nn.ReLU())
        layers: list[nn.Module] = []
        c = width
        for _ in range(down):
            layers += [nn.Conv2d(c, 2 * width, 3, stride=2, padding=1), _norm(2 * width), nn.ReLU()]
            c = 2 * width
        self.down = nn.Sequential(*layers)
        self.res = nn.Sequential(_Residual(c), _Residual(c))
        self.reduce = nn.Conv2d(c, width, 1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x * 2 - 1)  # centred inputs
        h = self.reduce(self.res(self.down(skip)))  # channels reduced before upsampling: linear, so cheaper
        if h.shape[-2:] != skip.shape[-2:]:  # exact input size back, odd sizes included
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(F.relu(h + skip))


class Discriminator(nn.Module):
    """AdvGAN's discriminator: ``(N, C, H, W)`` -> one real/fake logit ``(N,)``; stride-2 convolutions
    then global average pooling, so any input size works."""

    def __init__(self, channels: int, *, width: int = 32, down: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(max(1, down)):
            layers += [nn.Conv2d(c, 2 * width, 3, stride=2, padding=1), _norm(2 * width), nn.LeakyReLU(0.2)]
            c = 2 * width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1).mean(dim=(2, 3))).squeeze(1)


def bound(raw: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Map a generator's output ``(N, ...)`` into the ``norm`` ball of radius ``eps`` (smoothly)."""
    if norm == "linf":
        return eps * torch.tanh(raw)
    if norm == "l2":
        n = raw.reshape(raw.shape[0], -1).norm(dim=1).clamp_min(_TINY)
        scale = eps * torch.tanh(n) / n
        return raw * scale.reshape(-1, *([1] * (raw.dim() - 1)))
    raise UserError(f"learned attacks support norms linf, l2, not '{norm}'")


def _seeded(build: Callable[[], nn.Module], key: int) -> nn.Module:
    """``build()`` with PyTorch's default initialisation drawn from the seed ``key``, under a forked global
    RNG: the caller's random state is the same afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key)
        return build()


def state_sha256(model: nn.Module) -> str:
    """sha256 over a model's state_dict (names, shapes, bytes): which weights a generator was fit against."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()
