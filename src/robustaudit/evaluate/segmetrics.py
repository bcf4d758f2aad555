"""Segmentation metrics from a dataset-level confusion matrix: mIoU, pixel accuracy, per-class IoU,
plus targeted success (share of the pixels to change reached) and per-image pixel accuracy.

Pure torch, no model. Conventions (also in docs/segmentation.md):

- The confusion matrix ``cm`` is ``(K, K)`` int64 with rows the true class and columns the predicted
  class; pixels whose label is ``ignore_index`` (255) are left out entirely, whatever was predicted there.
- ``IoU_k = cm[k, k] / (row_k + col_k - cm[k, k])``. A class whose union is empty (never in the labels,
  never predicted) has no IoU (``None`` in :func:`class_iou`) and is left out of the mean, so mIoU is the
  mean over classes that occur in the labels or the predictions. This is the convention of the VOC
  devkit and torchvision's references (which sum the matrix over the data set first, then divide), and
  not the per-image average: a dataset mIoU is not the mean of per-image mIoUs.
- ``pixel_accuracy = trace(cm) / sum(cm)``: the share of valid pixels predicted right, ``nan`` when
  there are none (:func:`robustaudit.core.task.valid_share`, the one definition). Per image alike: an
  image with no valid pixel has no pixel accuracy and is left out of per-image statistics (bootstrap
  quantiles, the choice of example panels); its confusion matrix is all zeros, so it adds nothing to the
  dataset-level one.
- Intervals: 95% percentile bootstrap over images (the images are resampled and their matrices summed
  again): pixels of one image are not independent, so an interval over pixels would be far too narrow.

Example::

    >>> pred = torch.tensor([[[0, 1], [1, 1]]]); y = torch.tensor([[[0, 1], [0, 255]]])
    >>> cm = confusion_matrix(pred, y, num_classes=2)     # tensor([[1, 1], [0, 1]])
    >>> miou(cm), pixel_accuracy(cm)                      # (0.5, 0.666...)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robustaudit.core.task import IGNORE_INDEX, image_confusion, valid_share

__all__ = [
    "bootstrap_interval",
    "class_iou",
    "confusion_matrix",
    "image_confusion",
    "miou",
    "miou_of",
    "per_image_pixel_accuracy",
    "pixel_accuracy",
    "pixel_accuracy_of",
    "targeted_success",
]

#: Bootstrap resamples of the 95% intervals.
BOOTSTRAP = 1000


def _check_pair(pred: torch.Tensor, y: torch.Tensor, what: str = "y") -> None:
    if pred.shape != y.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but {what} has {tuple(y.shape)}; both must be (N, H, W)")


def confusion_matrix(
    pred: torch.Tensor, y: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows true class, columns predicted class, over the pixels where
    ``y != ignore_index``. ``pred`` and ``y`` are integer ``(N, H, W)`` (any equal shapes work).

    Predictions outside ``[0, K)`` are a ``ValueError`` (a model with the wrong number of classes);
    so are labels outside ``[0, K)`` other than ``ignore_index``. Computed on ``pred``'s device; the
    result is on the CPU.
    """
    _check_pair(pred, y)
    valid = y != ignore_index
    t = y[valid].to(torch.int64)
    p = pred.to(y.device)[valid].to(torch.int64)
    if t.numel() == 0:
        return torch.zeros((num_classes, num_classes), dtype=torch.int64)
    lo, hi = int(torch.minimum(t.min(), p.min())), int(torch.maximum(t.max(), p.max()))
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"class index {lo if lo < 0 else hi} outside [0, {num_classes}) in pred or y")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def _iou(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cm = cm.to(torch.float64)
    hits = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - hits
    return hits / union.clamp_min(1), union > 0


def class_iou(cm: torch.Tensor) -> list[float | None]:
    """IoU of each class, ``None`` for a class with an empty union (absent from labels and predictions)."""
    iou, present = _iou(cm)
    return [float(v) if ok else None for v, ok in zip(iou.tolist(), present.tolist(), strict=True)]


def miou(cm: torch.Tensor) -> float:
    """Mean IoU over the classes with a non-empty union; ``nan`` when there is none (no valid pixels)."""
    iou, present = _iou(cm)
    return float(iou[present].mean()) if bool(present.any()) else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    """``trace(cm) / sum(cm)``: share of valid pixels predicted right; ``nan`` without valid pixels."""
    return float(pixel_accuracy_of(cm))


def pixel_accuracy_of(cm: torch.Tensor) -> torch.Tensor:
    """Pixel accuracy of each matrix, float64: ``(..., K, K) -> (...)``; NaN where a matrix is empty."""
    return valid_share(cm.diagonal(dim1=-2, dim2=-1).sum(-1), cm.sum((-1, -2)))


def miou_of(cm: torch.Tensor) -> torch.Tensor:
    """Mean IoU of each matrix over its classes present in the labels or the predictions, float64:
    ``(..., K, K) -> (...)``; NaN where a matrix is empty."""
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan)).nanmean(-1)


def bootstrap_interval(cms: torch.Tensor, key: int, resamples: int = BOOTSTRAP) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of mIoU and pixel accuracy (``"miou"``, ``"pa"``), resampling the images
    of ``cms (n, K, K)`` with a generator seeded by ``key``; a resample without valid pixels is left out."""
    n, k, _ = cms.shape
    if n == 0:
        return {"miou": (math.nan, math.nan), "pa": (math.nan, math.nan)}
    g = torch.Generator().manual_seed(key & 0x7FFFFFFFFFFFFFFF)
    idx = torch.randint(n, (resamples, n), generator=g)
    weights = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(resamples, n, dtype=torch.float64))
    summed = (weights @ cms.reshape(n, -1).double()).view(resamples, k, k)
    out = {}
    for name, values in (("miou", miou_of(summed)), ("pa", pixel_accuracy_of(summed))):
        v = values.numpy()
        out[name] = (float(np.nanquantile(v, 0.025)), float(np.nanquantile(v, 0.975)))
    return out


def targeted_success(
    pred: torch.Tensor, targets: torch.Tensor, y: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> tuple[int, int]:
    """``(reached, counted)``: target pixels where ``pred == targets``, out of the target pixels counted.

    A pixel counts when its target is not ``ignore_index`` (a target map may leave pixels free) and,
    when ``y`` is given, its label is neither ``ignore_index`` nor already its target: success is the
    share of the pixels the attack must change (Xie et al.'s DAG), so doing nothing scores 0 even when
    most labels already are the target (background on digit-scenes). All ``(N, H, W)``.
    """
    _check_pair(pred, targets, "targets")
    counted = targets != ignore_index
    if y is not None:
        _check_pair(pred, y)
        y = y.to(targets.device)
        counted = counted & (y != ignore_index) & (y != targets)
    reached = (pred.to(targets.device) == targets) & counted
    return int(reached.sum()), int(counted.sum())


def per_image_pixel_accuracy(pred: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(N,)`` float32: each image's share of valid pixels predicted right; NaN for an image with no
    valid pixel (it has no pixel accuracy: :func:`~robustaudit.core.task.valid_share`)."""
    _check_pair(pred, y)
    valid = (y != ignore_index).flatten(1)
    hits = ((pred.to(y.device) == y).flatten(1) & valid).sum(1)
    return valid_share(hits, valid.sum(1)).float()
