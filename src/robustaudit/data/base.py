"""What a Python caller hands over, made an :class:`ImageData`: :func:`as_image_data` (an ``(x, y)`` pair,
a ``Dataset``, a ``DataLoader``...), :func:`tensor_data` (classification or segmentation by the labels'
shape) and :func:`subset`.

The image sets and the checks live in :mod:`robustaudit.data.image` and :mod:`robustaudit.data.validate`;
they are re-exported here, where the engine has always imported them from.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from robustaudit.core.errors import UserError
from robustaudit.data.image import DatasetData, ImageData, TensorData
from robustaudit.data.segmentation import SegmentationTensorData
from robustaudit.data.validate import RANGE_TOLERANCE, Describe, check_images, check_labels, to_tensor

__all__ = [
    "RANGE_TOLERANCE",
    "ClassCoverage",
    "DatasetData",
    "Describe",
    "ImageData",
    "TensorData",
    "as_image_data",
    "check_images",
    "check_labels",
    "class_coverage",
    "is_mask_batch",
    "subset",
    "tensor_data",
]


def _materialise(loader: Iterable, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for b, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UserError(
                f"{name}: batch {b} of the DataLoader is not an (x, y) pair but {type(batch).__name__}"
            )
        xs.append(to_tensor(batch[0], "x", name))
        y = to_tensor(batch[1], "y", name)
        ys.append(y if y.ndim == 3 else y.reshape(-1))  # (B, H, W) masks keep their shape
    if not xs:
        raise UserError(f"{name}: the DataLoader yielded no batches")
    if len({tuple(x.shape[1:]) for x in xs}) > 1:
        raise UserError(
            f"{name}: DataLoader batches have different image sizes; resize them in the dataset's transform"
        )
    return torch.cat(xs), torch.cat(ys)


def is_mask_batch(y: object) -> bool:
    """Labels of shape ``(N, H, W)``: segmentation masks rather than one class per image."""
    return isinstance(y, (torch.Tensor, np.ndarray)) and y.ndim == 3


def tensor_data(x: object, y: object, *, name: str, num_classes: int | None = None,
                class_names: Sequence[str] | None = None) -> ImageData:
    """A :class:`TensorData`, or a ``SegmentationTensorData`` when ``y`` holds ``(N, H, W)`` masks."""
    if is_mask_batch(y):
        return SegmentationTensorData(x, y, name=name, num_classes=num_classes, class_names=class_names)
    return TensorData(x, y, name=name, num_classes=num_classes, class_names=class_names)


def as_image_data(data: object, *, name: str = "data", num_classes: int | None = None) -> ImageData:
    """Accept what a user hands over and return an :class:`ImageData`.

    - an :class:`ImageData`: returned as is (``num_classes``, when given, must match its own);
    - an ``(x, y)`` tuple/list of tensors or numpy arrays, ``x`` ``(N, C, H, W)`` floats in [0, 1],
      ``y`` ``(N,)`` integers: a :class:`TensorData`; ``y`` ``(N, H, W)`` (a class per pixel, 255 =
      ignore): a segmentation set (``robustaudit.data.segmentation.SegmentationTensorData``), also for
      the two forms below;
    - a ``TensorDataset`` of two tensors: a :class:`TensorData` over them;
    - a map-style torch ``Dataset`` of ``(image (C, H, W), label)`` items: a lazy :class:`DatasetData`;
    - a ``DataLoader`` (or an ``IterableDataset``) yielding ``(x, y)`` batches: iterated ONCE and held in
      memory as a :class:`TensorData`, so its order (shuffled or not) is frozen from then on and sample
      ids are positions in that first pass.

    ``num_classes`` defaults to what the source declares (``len(dataset.classes)``), else ``max(y) + 1``.
    """
    if isinstance(data, ImageData):
        if num_classes is not None and num_classes != data.num_classes:
            raise UserError(
                f"{data.name}: has {data.num_classes} classes but num_classes={num_classes} was given"
            )
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise UserError(
                f"{name}: expected an (x, y) pair, got a {type(data).__name__} of length {len(data)}"
            )
        return tensor_data(data[0], data[1], name=name, num_classes=num_classes)
    if isinstance(data, DataLoader):
        declared = getattr(data.dataset, "classes", None)
        names = list(declared) if isinstance(declared, (list, tuple)) and declared else None
        count = num_classes if num_classes is not None else (len(names) if names else None)
        x, y = _materialise(data, name)
        return tensor_data(
            x, y, name=name, num_classes=count, class_names=names if names and len(names) == count else None
        )
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return tensor_data(data.tensors[0], data.tensors[1], name=name, num_classes=num_classes)
    if isinstance(data, IterableDataset):
        return as_image_data(DataLoader(data, batch_size=256), name=name, num_classes=num_classes)
    if isinstance(data, Dataset):
        return DatasetData(data, name=name, num_classes=num_classes)
    raise UserError(
        f"{name}: cannot use a {type(data).__name__} as data; expected an (x, y) pair of tensors, "
        "a torch Dataset, a DataLoader or an ImageData"
    )


def subset(data: ImageData, n: int | None) -> list[int]:
    """Indices of the first ``n`` samples of ``data`` (all when ``n`` is None).

    ``n <= 0`` is a :class:`UserError`; ``n > len(data)`` gives all samples, with a warning. A warning
    too when the labels are at hand (:meth:`ImageData.known_labels`) and the first ``n`` cover far fewer
    classes than the data holds (:attr:`ClassCoverage.unrepresentative`: data ordered by class).
    """
    total = len(data)
    if n is None:
        return list(range(total))
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise UserError(f"number of samples must be an integer, got {n!r}")
    if n <= 0:
        raise UserError(f"number of samples must be positive, got {n}")
    if n > total:
        warnings.warn(f"{data.name} has only {total} samples; using all of them instead of {n}", stacklevel=2)
        return list(range(total))
    ids = list(range(int(n)))
    coverage = class_coverage(data, ids)
    if coverage is not None and coverage.unrepresentative:
        warnings.warn(coverage.warning(data.name), stacklevel=2)
    return ids


#: How many standard deviations below the classes a random sample would cover a selection must fall to be
#: called unrepresentative. The digits' own order (a fair one) falls at most 2.3 below, at n = 22; a
#: class-sorted folder of 10 classes falls 6.5 below at n = 20, ImageNet's validation set 40 below at 1000.
UNREPRESENTATIVE_SD = 4.0


@dataclass(frozen=True)
class ClassCoverage:
    """How many classes ``n`` selected samples hold (``covered``) against all samples (``present``), and
    what a uniformly random sample of ``n`` would hold: ``expected`` on average, ``spread`` an upper bound
    on its standard deviation."""

    n: int
    covered: int
    present: int
    expected: float
    spread: float

    @property
    def unrepresentative(self) -> bool:
        """Far fewer classes than chance explains: a shuffled set's prefix may miss a rare class, a set
        ordered by class misses most of them."""
        return self.covered < self.expected - UNREPRESENTATIVE_SD * self.spread

    def warning(self, name: str) -> str:
        """The one-line warning about the first ``n`` samples of data set ``name``."""
        return (f"the first {self.n} samples of {name} cover {self.covered} of its {self.present} classes "
                f"({self.covered / self.present:.0%}; a random {self.n} would cover about {self.expected:.0f}): "
                "the data looks ordered by class, and the audit describes those classes only; shuffle it or "
                "audit a larger n")


def class_coverage(data: ImageData, ids: Sequence[int]) -> ClassCoverage | None:
    """The classes that samples ``ids`` of ``data`` hold, beside a random sample of as many; None when the
    labels are not at hand without reading the data (a lazy set, segmentation masks) or ``ids`` is empty."""
    labels = data.known_labels()
    if labels is None or not len(ids) or not len(labels):
        return None
    labels = labels.detach().cpu()
    counts = torch.bincount(labels).tolist()
    total, n = len(labels), len(ids)
    covered = int(torch.unique(labels[torch.as_tensor(list(ids), dtype=torch.int64)]).numel())
    # class c is absent from a random n of the N samples with probability q = C(N - N_c, n) / C(N, n); the
    # covered count is the sum over classes of (1 - q), and since these absences are negatively correlated
    # (sampling without replacement) the sum of their variances q(1 - q) bounds its variance from above
    expected, variance = 0.0, 0.0
    for size in counts:
        if size:
            q = math.exp(_log_choose(total - size, n) - _log_choose(total, n)) if total - size >= n else 0.0
            expected, variance = expected + 1.0 - q, variance + q * (1.0 - q)
    return ClassCoverage(n, covered, sum(1 for size in counts if size), expected, math.sqrt(variance))


def _log_choose(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)
