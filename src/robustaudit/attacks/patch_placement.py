"""Placement of an adversarial patch on images (see :mod:`robustaudit.attacks.patch`): the affine map of the
patch onto each image (centre, rotation, scale, brightness and contrast jitter, from keyed uniform draws),
the patch's resolution for an area share, and the check that images have room for a patch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustaudit.core.errors import UserError

SHAPES = ("square", "circle")
#: Largest area share: a larger patch (rotated) no longer fits inside the image.
MAX_AREA = 0.5
#: Smallest image side a patch makes sense on: on 8×8 digits a 10% patch is 2.5 pixels wide.
MIN_SIDE = 16
#: Uniform draws per placement: centre x, centre y, angle, scale, brightness, contrast.
_DRAWS = 6


class Placement:
    """Per-sample placements of a patch on ``(N, C, H, W)`` images, from uniform draws ``u (N, 6)``.

    ``mask`` ``(N, 1, H, W)`` is 1 on the pixels the patch covers (at most ``floor(eps H W)``), 0 elsewhere;
    ``grid`` ``(N, H, W, 2)`` maps each pixel to patch coordinates in [-1, 1] (for ``grid_sample``);
    ``brightness`` / ``contrast`` ``(N, 1, 1, 1)`` the jitter of the patch's pixels.
    """

    def __init__(self, u: torch.Tensor, size: tuple[int, int], eps: float, *, shape: str, rotation: float,
                 scale_min: float, brightness: float, contrast: float) -> None:
        h, w = size
        n = u.shape[0]
        dev, dt = u.device, torch.float32
        budget = math.floor(eps * h * w + 1e-9)
        # half extent at scale 1: the shape's area is eps * H * W
        half0 = math.sqrt(eps * h * w) / 2 if shape == "square" else math.sqrt(eps * h * w / math.pi)
        scale = scale_min + (1.0 - scale_min) * u[:, 3]
        half = half0 * scale  # (N,)
        reach = half * (math.sqrt(2.0) if shape == "square" else 1.0)  # radius of the shape under any rotation
        cx = _centre(u[:, 0], reach, w)
        cy = _centre(u[:, 1], reach, h)
        angle = (2 * u[:, 2] - 1) * math.radians(rotation)
        ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=dt) + 0.5,
                                torch.arange(w, device=dev, dtype=dt) + 0.5, indexing="ij")
        dx = xs[None] - cx[:, None, None]
        dy = ys[None] - cy[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        # rotate image offsets by -angle into the patch's frame, in units of its half extent
        pu = (cos * dx + sin * dy) / half[:, None, None]
        pv = (-sin * dx + cos * dy) / half[:, None, None]
        radius = torch.maximum(pu.abs(), pv.abs()) if shape == "square" else torch.sqrt(pu * pu + pv * pv)
        inside = radius <= 1.0
        # the area guarantee: keep at most `budget` pixels, the innermost ones (stable sort: deterministic)
        flat = torch.where(inside, radius, torch.full_like(radius, float("inf"))).reshape(n, -1)
        keep = flat.argsort(dim=1, stable=True)[:, :budget]
        chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, keep, True)
        self.mask = (chosen & inside.reshape(n, -1)).reshape(n, 1, h, w).to(dt)
        self.grid = torch.stack([pu, pv], dim=-1)
        self.brightness = ((2 * u[:, 4] - 1) * brightness).reshape(n, 1, 1, 1)
        self.contrast = (1 + (2 * u[:, 5] - 1) * contrast).reshape(n, 1, 1, 1)

    def apply(self, x: torch.Tensor, patch: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        """Paste ``patch`` ``(C, R, R)`` (or one per sample, ``(N, C, R, R)``) onto ``x`` ``(N, C, H, W)``.

        Differentiable in ``patch``; pixels outside the mask are returned bit for bit.
        """
        n = x.shape[0]
        p = patch if patch.dim() == 4 else patch.unsqueeze(0).expand(n, *patch.shape)
        warped = F.grid_sample(p.to(x.dtype), self.grid.to(x.dtype), mode="bilinear", padding_mode="border",
                               align_corners=False)
        mid = (bounds[0] + bounds[1]) / 2
        lit = ((warped - mid) * self.contrast.to(x.dtype) + mid + self.brightness.to(x.dtype) * (bounds[1] - bounds[0]))
        lit = lit.clamp(bounds[0], bounds[1])
        m = self.mask.to(x.dtype)
        # where(), not x * (1 - m) + lit * m: outside the mask the input must come back unchanged exactly
        return torch.where(m > 0, lit, x)


def _centre(u: torch.Tensor, reach: torch.Tensor, side: int) -> torch.Tensor:
    """A centre coordinate in ``[reach, side - reach]`` (the middle when the shape is wider than that)."""
    lo = torch.clamp(reach, max=side / 2)
    return lo + u * (side - 2 * lo)


def patch_resolution(eps: float, size: tuple[int, int], shape: str) -> int:
    """Side ``R`` of the patch's pixel grid ``(C, R, R)``: one patch pixel per image pixel at scale 1."""
    h, w = size
    extent = math.sqrt(eps * h * w) if shape == "square" else 2 * math.sqrt(eps * h * w / math.pi)
    return max(2, math.ceil(extent))


def check_image_size(size: tuple[int, int], eps: float, what: str = "attack 'patch'") -> None:
    """UserError unless images of ``size`` have room for a patch of area share ``eps``."""
    h, w = size
    if min(h, w) < MIN_SIDE:
        side = math.sqrt(eps * h * w)
        raise UserError(f"{what}: {h}x{w} images are too small for a patch (at eps={eps:g} it is {side:.1f} "
                        f"pixels wide); use larger images, e.g. --data digits32 (the digits at 32x32) with "
                        f"--model digits32-cnn")
    if not 0 < eps <= MAX_AREA:
        raise UserError(f"{what}: eps is the patch's share of the image area and must be in (0, {MAX_AREA:g}], "
                        f"got {eps:g}")
