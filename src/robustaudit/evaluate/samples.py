"""The audited samples, loaded once and cached, and the model's forward with the checks of its clean outputs
(classifier logits ``(N, K)``, segmentation logits ``(N, K, H, W)``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.errors import UserError
from robustaudit.data.base import ImageData
from robustaudit.evaluate.fastpath import to_device
from robustaudit.models.storage import device_failure

#: Inputs kept in host memory between attacks when they fit; larger sets are reloaded per batch.
_CACHE_BYTES = 1 << 30


class Samples:
    """The audited samples of one dataset, loaded once and cached when small enough: on the GPU when the
    audit runs on one and the set fits in a quarter of its free memory (no host copy per batch then),
    else on the host."""

    def __init__(self, data: ImageData, ids: list[int], batch_size: int, device: torch.device | None = None) -> None:
        self.data = data
        self.ids = ids
        self.batch_size = batch_size
        c, h, w = data.sample_shape
        size = len(ids) * c * h * w * 4
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if size <= _CACHE_BYTES else None
        self.device = device if device is not None and device.type == "cuda" and _fits_on(device, size) else None

    def batches(self, ids: Sequence[int]) -> list[list[int]]:
        return [list(ids[i : i + self.batch_size]) for i in range(0, len(ids), self.batch_size)]

    def load(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)``, ``y (B,)`` (segmentation: masks ``(B, H, W)``) for sample ids ``ids``: on the host, or on the GPU when resident."""
        if self._cache is not None and all(i in self._cache for i in ids):
            xs, ys = zip(*(self._cache[i] for i in ids))
            return torch.stack(xs), torch.stack(ys)
        x, y = self.data.load(list(ids))
        if self.device is not None:  # resident on the GPU: copied once, from pinned memory
            x, y = to_device(x, self.device), to_device(y, self.device)
        if self._cache is not None:
            for k, i in enumerate(ids):
                self._cache[i] = (x[k], y[k])
        return x, y


def _fits_on(device: torch.device, size: int) -> bool:
    """Whether ``size`` bytes of inputs may live on ``device`` for the audit: a quarter of its free memory."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:  # pragma: no cover - a CUDA build without a usable device
        return False
    return size <= free // 4


def check_outputs(logits: Any, data: ImageData, model: str) -> None:
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"model '{model}' returned {type(logits).__name__}, expected a logits tensor")
    if logits.dim() != 2:
        raise UserError(
            f"model '{model}' returned shape {tuple(logits.shape)}; a classifier must return logits (N, K)"
        )
    k = logits.shape[1]
    # labels of a tensor file may cover only some classes: more outputs than seen labels is fine
    # unless the data names its classes
    if k < data.num_classes or (k > data.num_classes and data.class_names is not None):
        raise UserError(
            f"model '{model}' has {k} outputs but data '{data.name}' has {data.num_classes} classes "
            f"(labels 0..{data.num_classes - 1})"
        )
    if not torch.isfinite(logits).all():
        raise UserError(f"model '{model}' returned NaN or infinite logits on clean data")


def model_forward(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return model(x)
    except UserError:
        raise
    except Exception as exc:  # a user's model failing is a user-facing error, not our traceback
        raise device_failure(exc, name) or UserError(
            f"model '{name}' raised {type(exc).__name__} in forward: {exc}{_channel_hint(exc, x)}") from None


#: torch's conv error for an input of the wrong channel count
_CHANNELS = re.compile(r"to have (\d+) channels, but got (\d+) channels")


def _channel_hint(exc: Exception, x: torch.Tensor) -> str:
    """What to do when the model takes another channel count than the data gives (a grayscale model on
    RGB images): the data readers that can change it."""
    found = _CHANNELS.search(str(exc))
    if found is None or x.dim() != 4 or int(found.group(2)) != x.shape[1]:
        return ""
    want = int(found.group(1))
    return (f" (the model takes {want}-channel images, the data gives {x.shape[1]}: read an ImageFolder with "
            f"'imagefolder:ROOT:channels={want}', or convert the images)" if want in (1, 3) else "")


def check_segmentation_outputs(logits: Any, y: torch.Tensor, data: ImageData, model: str) -> int:
    """Refuse a model whose outputs are not per-pixel logits ``(N, K, H, W)`` matching the masks;
    returns ``K``."""
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"model '{model}' returned {type(logits).__name__}, expected a logits tensor")
    if logits.dim() == 2:
        raise UserError(f"model '{model}' returns one score vector per image {tuple(logits.shape)} but data "
                        f"'{data.name}' is a segmentation set (a class per pixel): use a segmentation model, or "
                        "classification data")
    if logits.dim() != 4 or tuple(logits.shape[2:]) != tuple(y.shape[1:]):
        raise UserError(f"model '{model}' returned shape {tuple(logits.shape)}; a segmentation model must return "
                        f"logits (N, K, H, W) at the masks' size {tuple(y.shape[1:])}")
    k = int(logits.shape[1])
    if k < data.num_classes:
        raise UserError(f"model '{model}' has {k} output classes but data '{data.name}' has {data.num_classes} "
                        f"(labels 0..{data.num_classes - 1})")
    if not torch.isfinite(logits).all():
        raise UserError(f"model '{model}' returned NaN or infinite logits on clean data")
    return k
