"""``digit-scenes``: the embedded segmentation set, built from scikit-learn's digits on a textured canvas.

Each scene is a 64x64 grayscale image holding 2 to 4 handwritten digits (scikit-learn's 8x8 digits,
scaled up bilinearly to 16..26 pixels a side) over a background of smooth noise plus stripes. Every
pixel is labelled: 0 background, ``d + 1`` for digit ``d`` (11 classes, named ``"background"``,
``"0"`` .. ``"9"``), 255 (ignore) on a thin ring around each digit.

Rules (also in docs/segmentation.md, "Data"):

- Digits come from the SAME train/test split as the ``digits`` data set (:mod:`robustaudit.data.digits`):
  train scenes only from its train digits, test scenes only from its test digits, so a model trained on
  ``digits`` never saw a test scene's digits.
- Scene ``i`` of a split draws everything (background, number of digits, which digits, sizes,
  positions, brightness) from its own ``numpy.random.default_rng([SEED, split, i])``, so it does not
  depend on how many scenes are built or in which order.
- Digits do not overlap: each is placed at a uniformly drawn position whose box, grown by one pixel, is
  disjoint from the boxes placed before; after 30 failed tries that digit is left out (so a scene may
  hold fewer digits than drawn, never fewer than one).
- A digit's upscaled intensity ``a`` in [0, 1] is its alpha: pixel = ``(1 - a) * background + a *
  brightness`` (brightness drawn in [0.6, 1]). Label ``d + 1`` where ``a >= 0.5``, 255 where ``0.2 <= a
  < 0.5`` (the blurred rim, where the class is a matter of opinion: VOC marks object borders the same
  way), background elsewhere.
- Background: a level in [0, 0.1], plus 8x8 Gaussian noise upscaled bicubically, min-max scaled and
  weighted by [0.1, 0.35], plus a sine grating (period 6..16 px, any orientation) weighted by [0, 0.2],
  clipped to [0, 0.5]. Digits (brightness >= 0.6) are brighter than any background pixel only at
  their core: the rim blends into the texture, so the model has to read shape, not one threshold.

Sizes: 1000 train scenes, 200 test scenes. One channel (like ``digits``: the grayscale source has no
colour to offer); ``channels=3`` repeats it for models that expect RGB (torchvision's segmentation
models). Built in memory on first use (about half a second) and cached for the process.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from robustaudit.core.errors import UserError, unknown
from robustaudit.data.segmentation import SegmentationTensorData

SEED = 7
CANVAS = 64
SIZES = {"train": 1000, "test": 200}
NUM_CLASSES = 11
CLASS_NAMES = ["background", *[str(d) for d in range(10)]]
DIGITS_PER_SCENE = (2, 4)  # inclusive
DIGIT_SIDE = (16, 26)  # inclusive, pixels
LABEL_THRESHOLD = 0.5
RING_THRESHOLD = 0.2
PLACEMENT_TRIES = 30
_SPLIT_CODE = {"train": 0, "test": 1}
_YY, _XX = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)


def _place(rng: np.random.Generator, side: int, boxes: list[tuple[int, int, int, int]]) -> tuple[int, int] | None:
    """Top-left corner for a ``side`` x ``side`` digit whose box (grown by 1 px) misses ``boxes``."""
    for _ in range(PLACEMENT_TRIES):
        top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
        if all(top + side + 1 <= t or t + s + 1 <= top or left + side + 1 <= lf or lf + s + 1 <= left
               for t, lf, s, _ in boxes):
            return top, left
    return None


def _scene(split: str, i: int, pool: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Scene ``i`` of ``split``: image float32 ``(64, 64)`` in [0, 1], mask uint8 ``(64, 64)``, and the
    positions in ``pool`` of the digits placed."""
    rng = np.random.default_rng([SEED, _SPLIT_CODE[split], i])
    # background: level + smooth noise + stripes, clipped to [0, 0.5]
    noise = torch.from_numpy(rng.standard_normal((1, 1, 8, 8)).astype(np.float32))
    smooth = F.interpolate(noise, size=(CANVAS, CANVAS), mode="bicubic", align_corners=False)[0, 0].numpy()
    smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-6)
    level, w_noise, w_stripes = rng.uniform(0, 0.1), rng.uniform(0.1, 0.35), rng.uniform(0, 0.2)
    theta, period, phase = rng.uniform(0, np.pi), rng.uniform(6, 16), rng.uniform(0, 2 * np.pi)
    stripes = 0.5 * (1 + np.sin(2 * np.pi * (_XX * np.cos(theta) + _YY * np.sin(theta)) / period + phase))
    image = np.clip(level + w_noise * smooth + w_stripes * stripes, 0.0, 0.5).astype(np.float32)
    mask = np.zeros((CANVAS, CANVAS), dtype=np.uint8)

    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1))):
        k = int(rng.integers(len(pool)))
        side = int(rng.integers(DIGIT_SIDE[0], DIGIT_SIDE[1] + 1))
        brightness = float(rng.uniform(0.6, 1.0))
        corner = _place(rng, side, boxes)
        if corner is None:
            continue
        top, left = corner
        boxes.append((top, left, side, k))
        digit = torch.from_numpy(pool[k][None, None])
        alpha = F.interpolate(digit, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
        alpha = np.clip(alpha, 0.0, 1.0)
        region = (slice(top, top + side), slice(left, left + side))
        image[region] = (1 - alpha) * image[region] + alpha * brightness
        sub = mask[region]
        sub[alpha >= RING_THRESHOLD] = 255
        sub[alpha >= LABEL_THRESHOLD] = labels[k] + 1
    return image, mask, [b[3] for b in boxes]


@functools.lru_cache(maxsize=2)
def _build(split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, ...], ...]]:
    """All scenes of ``split``: images float32 ``(N, 1, 64, 64)``, masks uint8 ``(N, 64, 64)``, and per
    scene the indices (into ``load_digits()``) of the digits it shows."""
    from robustaudit.data.digits import _arrays, _split_indices

    x, y = _arrays()
    idx = _split_indices()[split]
    pool, labels = x[idx, 0], y[idx]
    # one thread: interpolation results must not depend on the machine's thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scenes = [_scene(split, i, pool, labels) for i in range(SIZES[split])]
    finally:
        torch.set_num_threads(threads)
    images = torch.from_numpy(np.stack([s[0] for s in scenes]))[:, None]
    masks = torch.from_numpy(np.stack([s[1] for s in scenes]))
    sources = tuple(tuple(int(idx[k]) for k in s[2]) for s in scenes)
    return images, masks, sources


def scene_sources(split: str = "test") -> tuple[tuple[int, ...], ...]:
    """Per scene of ``split``, the indices into scikit-learn's ``load_digits()`` of the digits placed
    in it (in placement order): how a test shows that test scenes use test digits only."""
    if split not in SIZES:
        raise unknown("split", split, SIZES)
    return _build(split)[2]


def digit_scenes_split(split: str = "test", *, channels: int = 1) -> SegmentationTensorData:
    """The ``"train"`` (1000) or ``"test"`` (200) scenes: ``x`` ``(N, channels, 64, 64)`` float32,
    ``y`` ``(N, 64, 64)`` int64 in ``{0..10, 255}``. Each call returns fresh tensors."""
    if split not in SIZES:
        raise unknown("split", split, SIZES)
    if channels not in (1, 3):
        raise UserError(f"dataset 'digit-scenes': channels must be 1 or 3, got {channels}")
    images, masks, _ = _build(split)
    x = images.repeat(1, channels, 1, 1) if channels == 3 else images.clone()
    return SegmentationTensorData(
        x,
        masks.clone(),
        name="digit-scenes" if channels == 1 else "digit-scenes:channels=3",
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES,
    )
