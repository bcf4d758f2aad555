"""Physical-world image transforms (Kurakin et al. 2016): what a print, a camera and a codec do to an image.

Each transform maps ``x`` ``(N, C, H, W)`` in [0, 1] to a tensor of the same shape, and is deterministic:
its random parameters (an angle, a shift, a gamma, noise) are drawn per sample from ``core.rng`` keyed by
(seed, transform name, sample id), so a clean image and its adversarial version get the SAME rotation,
shift or noise, and a sample gets the same one in every batch. Pixels moved in from outside the frame
(rotation, translation) are 0 (black).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustaudit.core.rng import keyed_normal, keyed_uniform, stream_key

#: ``fn(x (N, C, H, W), ids (N,), seed) -> (N, C, H, W)``
TransformFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """A named physical-world transform and the one line a report says about it."""

    name: str
    description: str
    fn: TransformFn

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
        return self.fn(x, ids, seed).clamp(0.0, 1.0)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """To 8 bits and back (what saving a PNG or printing does): ``round(255 x) / 255``."""
    return (x.clamp(0, 1) * 255).round() / 255


def jpeg(quality: int) -> TransformFn:
    """JPEG encode + decode at ``quality`` (Pillow's libjpeg, 4:2:0 chroma subsampling for colour), on the
    8-bit image. Pillow rather than ``torchvision.io``, whose codecs are deprecated."""
    import io

    import numpy as np
    from PIL import Image

    def one(image: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            return np.asarray(decoded.convert(decoded.mode), dtype=np.uint8)

    def fn(x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
        pixels = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        out = []
        for image in pixels:  # (C, H, W)
            hwc = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            back = one(np.ascontiguousarray(hwc))
            out.append(back[None] if back.ndim == 2 else back.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(out)).to(device=x.device, dtype=x.dtype) / 255

    return fn


def gaussian_blur(sigma: float) -> TransformFn:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel ``2 ceil(3 sigma) + 1``, reflect padding)."""
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    k = 2 * math.ceil(3 * sigma) + 1

    def fn(x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
        return blur(x, [k, k], [sigma, sigma])

    return fn


def resize(factor: float) -> TransformFn:
    """Down to ``factor`` of the size (bilinear, antialiased) and back up (bilinear): a low-resolution camera."""

    def fn(x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, round(h * factor)), max(1, round(w * factor))), mode="bilinear",
                              align_corners=False, antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)

    return fn


def rotate(degrees: float) -> TransformFn:
    """Rotation about the centre by an angle uniform in ``[-degrees, degrees]`` per sample (bilinear)."""
    from torchvision.transforms.v2.functional import InterpolationMode
    from torchvision.transforms.v2.functional import rotate as rot

    def fn(x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
        u = keyed_uniform(ids, (1,), stream_key(seed, "physical", "rotate", degrees))[:, 0]
        angles = ((2 * u - 1) * degrees).tolist()
        return torch.stack([rot(x[k], a, interpolation=InterpolationMode.BILINEAR, fill=0.0)
                            for k, a in enumerate(angles)])

    return fn


def translate(pixels: int) -> TransformFn:
    """A shift by whole pixels, each direction uniform in ``{-pixels, ..., pixels}`` per sample (zero fill)."""

    def fn(x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
        u = keyed_uniform(ids, (2,), stream_key(seed, "physical", "translate", pixels))
        shifts = (u * (2 * pixels + 1)).floor().long().clamp(max=2 * pixels) - pixels
        padded = F.pad(x, (pixels, pixels, pixels, pixels))
        h, w = x.shape[-2:]
        return torch.stack([padded[k, :, pixels - dy : pixels - dy + h, pixels - dx : pixels - dx + w]
                            for k, (dx, dy) in enumerate(shifts.tolist())])

    return fn


def printed_photo(noise: float = 0.02) -> TransformFn:
    """A printed and photographed image: contrast reduced by a factor uniform in [0.7, 0.9] around mid-grey
    (ink and paper do not reach black and white), a gamma log-uniform in [0.8, 1.25] (exposure), a blur of
    sigma 0.5 (focus), Gaussian sensor noise of std ``noise``, and 8-bit quantization; per-sample draws."""
    blur = gaussian_blur(0.5)

    def fn(x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
        u = keyed_uniform(ids, (2,), stream_key(seed, "physical", "photo"), device=x.device, dtype=x.dtype)
        contrast = (0.7 + 0.2 * u[:, 0]).reshape(-1, 1, 1, 1)
        gamma = torch.exp((2 * u[:, 1] - 1) * math.log(1.25)).reshape(-1, 1, 1, 1)
        y = ((x - 0.5) * contrast + 0.5).clamp(0, 1) ** gamma
        y = blur(y, ids, seed)
        z = keyed_normal(ids, tuple(x.shape[1:]), stream_key(seed, "physical", "photo-noise"), device=x.device,
                         dtype=x.dtype)
        return _quantize(y + noise * z)

    return fn


def identity() -> TransformFn:
    """No change (a reference: destroys nothing)."""
    return lambda x, ids, seed: x


def physical_transforms() -> list[Transform]:
    """The transforms of the physical-world table, mildest of each family first."""
    return [
        Transform("jpeg q=75", "JPEG at quality 75 (8-bit, Pillow/libjpeg)", jpeg(75)),
        Transform("jpeg q=30", "JPEG at quality 30", jpeg(30)),
        Transform("blur σ=0.5", "Gaussian blur, sigma 0.5 px", gaussian_blur(0.5)),
        Transform("blur σ=1", "Gaussian blur, sigma 1 px", gaussian_blur(1.0)),
        Transform("resize ×0.5", "down to half size (antialiased) and back up, bilinear", resize(0.5)),
        Transform("rotate ±5°", "rotation by an angle uniform in [-5, 5] degrees per sample, bilinear", rotate(5.0)),
        Transform("translate ±2px", "shift by -2..2 whole pixels in x and y per sample, zero fill", translate(2)),
        Transform("printed photo", "contrast x0.7-0.9, gamma 0.8-1.25, blur 0.5, noise std 0.02, 8-bit",
                  printed_photo(0.02)),
    ]
