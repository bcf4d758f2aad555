"""Labelled image sets addressable by index: the :class:`ImageData` interface, sets held in memory
(:class:`TensorData`) and lazy torch ``Dataset`` sets (:class:`DatasetData`).

Every :class:`ImageData` hands out images as float32 tensors in ``[0, 1]`` of shape ``(B, C, H, W)``
and labels as int64 tensors of shape ``(B,)``, validated by :mod:`robustaudit.data.validate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from robustaudit.core.errors import UserError
from robustaudit.data.validate import (
    check_class_names,
    check_images,
    check_labels,
    check_num_classes,
    index_tensor,
    sample_text,
    shape_text,
    to_tensor,
)

__all__ = ["DatasetData", "ImageData", "TensorData"]


class ImageData(ABC):
    """A labelled image set addressable by index. Images float32 in [0,1], shape (C,H,W); labels int64.

    Attributes: ``name`` (e.g. ``"digits"``, ``"cifar10:/path"``), ``num_classes``, ``class_names``
    (a list of ``num_classes`` strings, or None), ``sample_shape`` ``(C, H, W)``, ``task``
    (``"classification"``; a segmentation set says ``"segmentation"``, its labels are masks
    ``(B, H, W)`` and ``ignore_index`` marks the pixels that count nowhere).
    """

    name: str
    num_classes: int
    class_names: list[str] | None
    sample_shape: tuple[int, int, int]
    task: str = "classification"
    ignore_index: int | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    def known_labels(self) -> torch.Tensor | None:
        """The ``(N,)`` int64 labels of every sample when they are at hand without reading any image (held in
        memory, or a dataset's ``targets`` list), else None: a lazy set is never read just to learn them."""
        return None

    @abstractmethod
    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``x`` of shape ``(B, C, H, W)``, float32 in [0, 1], and labels ``y`` of shape ``(B,)``,
        int64 in ``[0, num_classes)``, for ``B = len(indices)`` data-set indices, in that order."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, num_classes={self.num_classes}, "
            f"sample_shape={self.sample_shape})"
        )


class TensorData(ImageData):
    """Images and labels held in memory: ``x`` of shape ``(N, C, H, W)``, ``y`` of shape ``(N,)``.

    Validated once, at construction (floats in [0, 1], integer labels, matching lengths); ``load`` only
    indexes. Numpy arrays are accepted; float64/float16 images are converted to float32. The tensors
    stay on the device they came on. ``num_classes`` defaults to ``max(y) + 1``.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        *,
        name: str = "data",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        x = check_images(x, name)
        if num_classes is not None:
            num_classes = check_num_classes(num_classes, name)
        y = check_labels(y, num_classes, name)
        if len(x) != len(y):
            raise UserError(f"{name}: {len(x)} images but {len(y)} labels; x and y must have the same length")
        self.name = name
        self.num_classes = num_classes if num_classes is not None else int(y.max()) + 1
        self.class_names = check_class_names(class_names, self.num_classes, name)
        self.sample_shape = tuple(int(d) for d in x.shape[1:])  # type: ignore[assignment]
        self.x = x
        self.y = y.to(x.device)

    def __len__(self) -> int:
        return len(self.y)

    def known_labels(self) -> torch.Tensor:
        """The ``(N,)`` int64 labels, held in memory."""
        return self.y

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images and ``(B,)`` int64 labels; copies, safe to modify."""
        idx = index_tensor(indices, len(self), self.name).to(self.x.device)
        return self.x[idx], self.y[idx]


def _label_of(value: object, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        if value.is_floating_point() or value.dtype == torch.bool:
            raise UserError(f"{where}: label must be an integer class index, got a {value.dtype} tensor")
        return int(value.item())
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise UserError(
        f"{where}: label must be an integer class index, got {type(value).__name__} {value!r:.40}"
    )


class DatasetData(ImageData):
    """A torch ``Dataset`` whose items are ``(image, label)``: image a tensor ``(C, H, W)``, label an int.

    Lazy: images are read on ``load`` and every loaded batch is validated (rank, size, dtype, range,
    labels). ``num_classes`` defaults to ``len(dataset.classes)``, else ``max(dataset.targets) + 1``,
    else ``max(label) + 1`` over one pass through the data set (which reads every item once).
    ``size_hint`` is appended to the message for images of differing sizes (how to resize them).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        name: str = "data",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        size_hint: str = "resize them in the dataset's transform",
    ) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as exc:
            raise UserError(f"{name}: the dataset has no len(); pass a DataLoader over it instead") from exc
        if n == 0:
            raise UserError(f"{name}: the dataset is empty")
        self.dataset = dataset
        self.name = name
        self._size_hint = size_hint
        declared = getattr(dataset, "classes", None)
        if (
            class_names is None
            and isinstance(declared, (list, tuple))
            and all(isinstance(c, str) for c in declared)
            and (num_classes is None or len(declared) == num_classes)
        ):
            class_names = list(declared)
        if num_classes is None:
            num_classes = self._declared_num_classes(declared)
        if num_classes is not None:
            num_classes = check_num_classes(num_classes, name)
        self._n = n
        first, _ = self._item(0)
        self.sample_shape = tuple(int(d) for d in first.shape)  # type: ignore[assignment]
        self.num_classes = num_classes if num_classes is not None else self._scan_num_classes()
        self.class_names = check_class_names(class_names, self.num_classes, name)

    def _declared_num_classes(self, declared: object) -> int | None:
        if isinstance(declared, (list, tuple)) and declared:
            return len(declared)
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and len(targets):
            return int(check_labels(targets, None, f"{self.name} (targets)").max()) + 1
        return None

    def _scan_num_classes(self) -> int:
        labels = [self._item(i)[1] for i in range(self._n)]
        return int(check_labels(torch.tensor(labels), None, self.name, describe=self.describe).max()) + 1

    def describe(self, index: int) -> str:
        """The file behind ``index`` when the dataset lists its files (ImageFolder's ``samples``), else ""."""
        samples = getattr(self.dataset, "samples", None)
        if isinstance(samples, (list, tuple)) and 0 <= index < len(samples):
            entry = samples[index]
            return str(entry[0]) if isinstance(entry, (list, tuple)) else str(entry)
        return ""

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        where = f"{self.name}: {sample_text(index, None, self.describe)}"
        try:
            item = self.dataset[index]
        except OSError as exc:  # unreadable / truncated image files (PIL raises OSError subclasses)
            if type(exc).__name__ == "UnidentifiedImageError":  # PIL's text quotes a file object's repr
                raise UserError(f"{where}: cannot read it: not an image file, or a corrupt one") from exc
            raise UserError(f"{where}: cannot read it: {exc}") from exc
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = (f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list))
                   else type(item).__name__)
            raise UserError(f"{where}: dataset items must be (image, label) pairs, got {got}")
        image, label = item
        if not isinstance(image, (torch.Tensor, np.ndarray)):
            raise UserError(
                f"{where}: image is a {type(image).__name__}, expected a tensor (C, H, W); "
                "add transforms.ToTensor() to the dataset"
            )
        image = to_tensor(image, "image", where)
        if image.ndim == 2:
            raise UserError(
                f"{where}: image must be 3-D (C, H, W), got {shape_text(image)}; use image.unsqueeze(0)"
            )
        if image.ndim != 3:
            raise UserError(f"{where}: image must be 3-D (C, H, W), got {image.ndim}-D {shape_text(image)}")
        return image, _label_of(label, where)

    def __len__(self) -> int:
        return self._n

    def known_labels(self) -> torch.Tensor | None:
        """The dataset's ``targets`` (ImageFolder's and torchvision's sets keep one label per sample in memory)
        as ``(N,)`` int64 when they are valid labels of every sample, else None (nothing is read to learn them)."""
        targets = getattr(self.dataset, "targets", None)
        if targets is None or isinstance(targets, (str, bytes)):
            return None
        try:
            labels = check_labels(targets, self.num_classes, self.name)
        except (TypeError, ValueError, RuntimeError):  # not labels to trust: the loaded batches say what is wrong
            return None
        return labels if labels.ndim == 1 and len(labels) == self._n else None

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images and ``(B,)`` int64 labels, read and validated now."""
        idx = index_tensor(indices, self._n, self.name).tolist()
        if not idx:
            return torch.empty((0, *self.sample_shape)), torch.empty((0,), dtype=torch.int64)
        images, labels = [], []
        for i in idx:
            image, label = self._item(i)
            if tuple(image.shape) != self.sample_shape:
                raise UserError(
                    f"{self.name}: {sample_text(i, None, self.describe)} has shape {shape_text(image)} but sample 0 "
                    f"has {shape_text(self.sample_shape)}; images must all have one size: {self._size_hint}"
                )
            images.append(image)
            labels.append(label)
        x = check_images(torch.stack(images), self.name, ids=idx, describe=self.describe)
        y = check_labels(torch.tensor(labels), self.num_classes, self.name, ids=idx, describe=self.describe)
        return x, y
