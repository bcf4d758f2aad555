"""The embedded default data set: scikit-learn's handwritten digits, with a fixed train/test split.

``sklearn.datasets.load_digits()`` ships inside the scikit-learn wheel (nothing is downloaded): 1797
grayscale 8x8 images with pixel values 0..16 and labels 0..9. Images are scaled by 1/16 into
``[0, 1]`` and shaped ``(N, 1, 8, 8)``.

The split is defined here, not by ``train_test_split``, so that it never changes across library
versions: for each class ``c`` in ascending order, take the indices of its samples in ascending order,
draw ``permutation(count_c)`` from ONE ``numpy.random.RandomState(0)`` shared by all classes in turn
(the legacy generator's stream is frozen by numpy's compatibility policy), and put the first
``round(0.2 * count_c)`` permuted samples in the test split. Both splits are sorted by the original
index, so classes are interleaved and the first ``n`` samples are a fair subsample.

Sizes: test 359 (per class 36 36 35 37 36 36 36 36 35 36), train 1438.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from robustaudit.core.errors import unknown
from robustaudit.data.image import TensorData

TEST_FRACTION = 0.2
SPLITS = ("train", "test")
# Computed by _split_indices() and checked by a test; hard-coded so that importing costs nothing.
DIGITS_TEST_SIZE = 359
DIGITS_TRAIN_SIZE = 1438


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images float32 ``(1797, 1, 8, 8)`` in [0, 1], labels int64 ``(1797,)``. Read-only."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    for a in (x, y):
        a.setflags(write=False)  # the cache is shared: nobody may modify it in place
    return x, y


@functools.lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    """Sorted sample indices of each split (see the module docstring for the rule)."""
    _, y = _arrays()
    rng = np.random.RandomState(0)
    test = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        order = rng.permutation(len(members))
        test.append(members[order[: round(TEST_FRACTION * len(members))]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return {"test": test_idx, "train": train_idx}


def digits_split(split: str = "test") -> TensorData:
    """The ``"train"`` or ``"test"`` split of the digits: ``x`` ``(N, 1, 8, 8)`` float32, ``y`` ``(N,)``.

    Name ``"digits"``, 10 classes named ``"0"`` .. ``"9"``. Each call returns fresh tensors.
    """
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    x, y = _arrays()
    idx = _split_indices()[split]
    return TensorData(
        torch.tensor(x[idx]),
        torch.tensor(y[idx]),
        name="digits",
        num_classes=10,
        class_names=[str(c) for c in range(10)],
    )


#: Side of the upsampled digits: large enough for patches and physical-world transforms (an 8×8 image
#: has no room for a patch that is not most of the digit).
DIGITS32_SIZE = 32


@functools.lru_cache(maxsize=1)
def _arrays32() -> np.ndarray:
    """All 1797 digits upsampled to ``(1797, 1, 32, 32)`` float32 in [0, 1]. Read-only."""
    import torch.nn.functional as F

    x, _ = _arrays()
    # bilinear with half-pixel centres (align_corners=False): each 8×8 pixel becomes a smooth 4×4 area.
    # Bilinear weights are convex, so values stay in [0, 1] (bicubic would overshoot and need clamping).
    up = F.interpolate(torch.from_numpy(x.copy()), size=(DIGITS32_SIZE, DIGITS32_SIZE), mode="bilinear",
                       align_corners=False).numpy()
    up.setflags(write=False)
    return up


def digits32_split(split: str = "test") -> TensorData:
    """The digits upsampled to 32×32: ``x`` ``(N, 1, 32, 32)`` float32, ``y`` ``(N,)``, name ``"digits32"``.

    The same images, labels and train/test split as :func:`digits_split` (sample ``i`` of either split is
    the same digit), each image resized 8×8 -> 32×32 by ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``. No new information: the 4× resolution gives adversarial patches, rotations and
    blurs room to act on the digit.
    """
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    _, y = _arrays()
    idx = _split_indices()[split]
    return TensorData(
        torch.tensor(_arrays32()[idx]),
        torch.tensor(y[idx]),
        name="digits32",
        num_classes=10,
        class_names=[str(c) for c in range(10)],
    )
