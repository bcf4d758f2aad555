"""Labelled image data: the embedded digits, CIFAR-10 / MNIST / ImageFolder readers, tensor files, and
segmentation sets (digit-scenes, segfolder, VOC).

Everything hands out :class:`ImageData`: ``load(indices) -> (x, y)`` with ``x`` float32 in [0, 1] of
shape ``(B, C, H, W)`` and ``y`` int64 of shape ``(B,)`` (segmentation: ``(B, H, W)`` masks, 255 =
ignore, ``task == "segmentation"``). ``open_dataset(spec)`` opens one by name
(``robustaudit list datasets``); ``as_image_data`` adapts what a Python caller passes in.
"""

from robustaudit.data.base import (
    DatasetData,
    ImageData,
    TensorData,
    as_image_data,
    subset,
)
from robustaudit.data.digit_scenes import digit_scenes_split
from robustaudit.data.digits import DIGITS_TEST_SIZE, DIGITS_TRAIN_SIZE, digits_split
from robustaudit.data.registry import dataset_names, open_dataset
from robustaudit.data.segmentation import SegmentationData, SegmentationTensorData

__all__ = [
    "DIGITS_TEST_SIZE",
    "DIGITS_TRAIN_SIZE",
    "DatasetData",
    "ImageData",
    "SegmentationData",
    "SegmentationTensorData",
    "TensorData",
    "as_image_data",
    "dataset_names",
    "digit_scenes_split",
    "digits_split",
    "open_dataset",
    "subset",
]
