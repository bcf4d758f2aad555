"""A corpus of obfuscated "defenses" on the digits CNNs (issue 16): each only hides gradients or adds
randomness, the lesson of Athalye, Carlini & Wagner 2018 and Tramer et al. 2020. Every builder wraps a
base classifier ``(N, 1, 8, 8) -> (N, 10)`` logits; preprocessing defenses expose their step as
``preprocess`` with ``forward = classifier(preprocess(x))``, the convention BPDA reads.

The hand-written adaptive attack the tests hold the audit to lives here too (:func:`adaptive_pgd`): a
margin-loss PGD that goes straight through a known preprocessing step (BPDA) and averages over the
model's randomness (EOT), written without the library's attack code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Defended(nn.Module):
    """``classifier(preprocess(x))``: the layout BPDA expects."""

    def __init__(self, preprocess: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.classifier = preprocess, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.preprocess(x))


class ScaledLogits(nn.Module):
    """Logits multiplied by ``scale`` (defensive distillation as deployed): cross-entropy saturates."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


class Quantize(nn.Module):
    """``bits``-bit input quantization: zero gradient almost everywhere."""

    def __init__(self, bits: int = 2) -> None:
        super().__init__()
        self.levels = 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(math.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


class NumpyDCT(nn.Module):
    """JPEG-like lossy compression through numpy: the 8×8 image's DCT, coefficients rounded to a step that
    grows with frequency, and back. Autograd never sees it (the output is a fresh tensor)."""

    def __init__(self, quality: float = 0.12) -> None:
        super().__init__()
        self.quality = quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().numpy().astype(np.float64)
        d = _dct_matrix(a.shape[-1])
        q = self.quality * (1 + np.add.outer(np.arange(a.shape[-2]), np.arange(a.shape[-1])) / 4)
        coef = d @ a @ d.T
        back = d.T @ (np.round(coef / q) * q) @ d
        return torch.from_numpy(np.clip(back, 0, 1)).to(x.dtype).to(x.device)


class RandomResizePad(nn.Module):
    """Test-time random resize and pad (Xie et al. 2018), scaled to 8×8 digits: each call resizes the
    batch to 8×8 or 9×9, pads it at a random offset to 9×9 and resizes back to 8×8 (the digits CNN keeps
    about 80% of its clean accuracy; a larger range destroys it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = int(torch.randint(8, 10, ()).item())
        z = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        top, left = (int(v) for v in torch.randint(0, 9 - size + 1, (2,)))
        z = F.pad(z, (left, 9 - size - left, top, 9 - size - top))
        return F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)


class LogitNoise(nn.Module):
    """Gaussian noise of standard deviation ``sigma`` added to the logits at every call."""

    def __init__(self, net: nn.Module, sigma: float) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return z + self.sigma * torch.randn_like(z)


class NoGradDenoiser(nn.Module):
    """A 3×3 smoothing denoiser mixed with the input, run under ``no_grad``: the output has no path back
    to the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            return (0.5 * x + 0.5 * blur).clamp(0, 1)


class Thermometer(nn.Module):
    """Thermometer encoding (Buckman et al. 2018): ``(N, 1, H, W) -> (N, L, H, W)``, channel k is
    ``x > k / L``; the comparisons have no gradient."""

    def __init__(self, levels: int = 8) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.levels, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) / self.levels
        return (x > k).to(x.dtype)


class ThermometerDecode(nn.Module):
    """The classifier of a thermometer-encoded input: the mean over levels (an image quantized to L
    levels) fed to ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.mean(1, keepdim=True))


def thermometer_soft(x: torch.Tensor, levels: int = 8, temperature: float = 0.02) -> torch.Tensor:
    """A differentiable stand-in for :class:`Thermometer` (sigmoid steps), the hand-written BPDA's."""
    k = torch.arange(levels, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) / levels
    return torch.sigmoid((x - k) / temperature)


#: name -> (builder of the defended model from a base classifier, the hand-written attack's view:
#: ``preprocess`` (BPDA straight through it) / ``substitute`` / ``eot`` draws per gradient)
CORPUS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "logits-x100": lambda net: ScaledLogits(net, 100.0),
    "logits-x1e4": lambda net: ScaledLogits(net, 1e4),
    "quantize-2bit": lambda net: Defended(Quantize(2), net),
    "numpy-dct": lambda net: Defended(NumpyDCT(), net),
    "random-resize-pad": lambda net: Defended(RandomResizePad(), net),
    "logit-noise": lambda net: LogitNoise(net, 2.0),
    "nograd-denoiser": lambda net: Defended(NoGradDenoiser(), net),
    "thermometer": lambda net: Defended(Thermometer(8), ThermometerDecode(net)),
}

#: How the hand-written attack handles each: "eot" draws, and BPDA straight through ``preprocess``
#: ("identity") or a soft stand-in.
VIEW: dict[str, dict[str, object]] = {
    "random-resize-pad": {"eot": 16},
    "logit-noise": {"eot": 16},
    "quantize-2bit": {"bpda": "identity"},
    "numpy-dct": {"bpda": "identity"},
    "nograd-denoiser": {"bpda": "identity"},
    "thermometer": {"bpda": "thermometer"},
}


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per sample ``(N,)``: positive when misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def adaptive_pgd(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 40,
                 restarts: int = 2, seed: int = 0) -> torch.Tensor:
    """Hand-written adaptive Linf attack on corpus model ``name``: margin-loss PGD (sign steps of 2.5·eps/
    steps, random start, best iterate), straight through the preprocessing (BPDA) and over ``eot`` draws.
    Returns ``(N,)`` bool: still classified correctly (judged once, as an audit judges)."""
    view = VIEW.get(name, {})
    draws = int(view.get("eot", 1))
    bpda = view.get("bpda")

    def logits(z: torch.Tensor) -> torch.Tensor:
        if bpda is None:
            return model(z)
        pre = model.preprocess(z.detach())
        if bpda == "identity":
            stand_in = z
        else:
            stand_in = thermometer_soft(z, model.preprocess.levels)
        return model.classifier(stand_in + (pre - stand_in).detach())

    gen = torch.Generator().manual_seed(seed)
    robust = torch.ones(len(x), dtype=torch.bool)
    alpha = 2.5 * eps / steps
    for _ in range(restarts):
        xa = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = sum(_margin(logits(xa), y).clamp_max(5.0 if bpda or draws > 1 else float("inf")).sum()
                       for _ in range(draws))
            (g,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = torch.min(torch.max(xa + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
                if draws == 1:  # the best iterate; a randomized model is judged once per restart, as an audit does
                    robust &= model(xa).argmax(1) == y
        if draws > 1:
            with torch.no_grad():
                robust &= model(xa).argmax(1) == y
    return robust
