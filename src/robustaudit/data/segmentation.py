"""Segmentation data: images with per-pixel class masks (``digit-scenes``, ``segfolder:ROOT``, ``voc:ROOT``).

Every :class:`SegmentationData` hands out images as float32 tensors in ``[0, 1]`` of shape
``(B, C, H, W)`` and masks as int64 tensors of shape ``(B, H, W)`` holding class indices in
``[0, num_classes)`` or ``ignore_index`` (255, VOC's value for pixels that count nowhere).

Here: the interface and the in-memory set. ``digit-scenes`` (the embedded default, built from
scikit-learn's digits) lives in :mod:`robustaudit.data.digit_scenes`, the file readers (``segfolder``,
``voc``) in :mod:`robustaudit.data.segfiles`, the mask checks in :mod:`robustaudit.data.validate`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from robustaudit.core.errors import UserError
from robustaudit.core.task import IGNORE_INDEX
from robustaudit.data.image import ImageData
from robustaudit.data.validate import (
    check_class_names,
    check_images,
    check_masks,
    check_num_classes,
    index_tensor,
)

# check_masks is re-exported: it is the segmentation half of the checks
__all__ = ["SegmentationData", "SegmentationTensorData", "check_masks"]


class SegmentationData(ImageData):
    """A segmentation set: ``load(indices) -> (x (B, C, H, W) float32 in [0, 1], y (B, H, W) int64)``.

    ``y`` holds class indices in ``[0, num_classes)`` or ``ignore_index`` (255). ``task`` is
    ``"segmentation"``; ``sample_shape`` is the image's ``(C, H, W)`` (masks are ``(H, W)``).
    """

    task: str = "segmentation"
    ignore_index: int | None = IGNORE_INDEX

    @abstractmethod
    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` float32 in [0, 1] and masks ``(B, H, W)`` int64 for ``indices``."""


class SegmentationTensorData(SegmentationData):
    """Images and masks held in memory: ``x`` ``(N, C, H, W)`` floats in [0, 1], ``y`` ``(N, H, W)`` ints.

    Validated once, at construction; ``load`` only indexes. ``num_classes`` defaults to the largest
    index other than ``ignore_index`` plus one. Masks may be held as uint8 (a quarter of the memory) and
    are returned as int64.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        *,
        name: str = "data",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        x = check_images(x, name)
        if num_classes is not None:
            num_classes = check_num_classes(num_classes, name)
        masks = check_masks(y, num_classes, name, ignore_index=ignore_index)
        if len(x) != len(masks):
            raise UserError(f"{name}: {len(x)} images but {len(masks)} masks; x and y must have the same length")
        if tuple(x.shape[2:]) != tuple(masks.shape[1:]):
            raise UserError(
                f"{name}: images are {x.shape[2]}x{x.shape[3]} but masks {masks.shape[1]}x{masks.shape[2]}; "
                "each mask must have its image's height and width"
            )
        if num_classes is None:
            valid = masks[masks != ignore_index]
            if valid.numel() == 0:
                raise UserError(f"{name}: every mask pixel is the ignore index {ignore_index}; give num_classes")
            num_classes = int(valid.max()) + 1
        self.name = name
        self.num_classes = num_classes
        self.class_names = check_class_names(class_names, num_classes, name)
        self.ignore_index = ignore_index
        self.sample_shape = tuple(int(d) for d in x.shape[1:])  # type: ignore[assignment]
        self.x = x
        # uint8 storage when it holds every value (ignore 255 included): masks are the bigger half
        small = num_classes <= 256 and 0 <= ignore_index <= 255
        self.y = masks.to(torch.uint8 if small else torch.int64).to(x.device)

    def __len__(self) -> int:
        return len(self.y)

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images and ``(B, H, W)`` int64 masks; copies, safe to modify."""
        idx = index_tensor(indices, len(self), self.name).to(self.x.device)
        return self.x[idx], self.y[idx].to(torch.int64)


# ------------------------------------------------------------------------------------ file readers
