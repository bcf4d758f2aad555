"""Labelled image sets addressable by index, and the checks every image batch passes.

Every :class:`ImageData` hands out images as float32 tensors in ``[0, 1]`` of shape ``(B, C, H, W)``
and labels as int64 tensors of shape ``(B,)``. A user's mistake in the data (wrong dtype, rank or
layout, NaN pixels, out-of-range values or labels, mismatched lengths) is a :class:`UserError` with one
line naming the data set and the offending sample, never an ``assert`` or a traceback from deep inside
an attack.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from robustaudit.core.errors import UserError

# Pixels a hair outside [0, 1] come from float rounding in a user's preprocessing (e.g. x / 255 done
# in float16); they are clamped. Anything further out is a real scaling mistake and is reported.
RANGE_TOLERANCE = 1e-6

Describe = Callable[[int], str]  # data-set index -> file name (or ""), for messages


def _shape(t: torch.Tensor | tuple[int, ...]) -> str:
    dims = tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _sample(position: int, ids: Sequence[int] | None, describe: Describe | None = None) -> str:
    """Name the sample at ``position`` of a batch by its index in the data set (and file, if known)."""
    sid = int(ids[position]) if ids is not None else position
    where = describe(sid) if describe is not None else ""
    return f"sample {sid}{f' ({where})' if where else ''}"


def _to_tensor(value: object, what: str, where: str) -> torch.Tensor:
    """``value`` as a dense tensor holding data; anything else (strings, sparse or meta tensors,
    non-numeric arrays) is a :class:`UserError` here rather than a torch error deep inside a check."""
    if isinstance(value, torch.Tensor):
        return _plain_tensor(value.detach(), what, where)
    if isinstance(value, np.ndarray):
        # bool, integers, floats, complex: what torch can hold. Strings, dates, records and objects not.
        if value.dtype.kind not in "biufc":
            raise UserError(
                f"{where}: {what} is a numpy array of dtype {value.dtype}; expected a numeric array"
            )
        if not value.dtype.isnative:  # e.g. '>f4' from a big-endian machine: torch refuses it
            value = value.astype(value.dtype.newbyteorder("="))
        # ascontiguousarray turns 0-d into 1-d: keep the shape so rank messages tell the truth
        array = np.ascontiguousarray(value).reshape(value.shape)
        try:
            return torch.from_numpy(array)
        except TypeError:  # a numeric dtype torch lacks (float128, complex256)
            raise UserError(
                f"{where}: {what} has numpy dtype {value.dtype}, which torch cannot hold; "
                "save float32 images and int64 labels"
            ) from None
    try:
        return _plain_tensor(torch.as_tensor(value), what, where)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{where}: {what} must be a tensor or numpy array, got {type(value).__name__}"
        ) from exc


def _plain_tensor(t: torch.Tensor, what: str, where: str) -> torch.Tensor:
    if t.is_meta:
        raise UserError(f"{where}: {what} is a tensor on the 'meta' device, which holds no values")
    if t.is_quantized:
        raise UserError(f"{where}: {what} is a quantized tensor; save t.dequantize() instead")
    if t.layout != torch.strided:
        raise UserError(
            f"{where}: {what} is a {str(t.layout).replace('torch.', '')} tensor; save a dense one (t.to_dense())"
        )
    return t


def check_images(
    x: object, where: str, *, ids: Sequence[int] | None = None, describe: Describe | None = None
) -> torch.Tensor:
    """Validate a batch of images and return it as float32 in ``[0, 1]``, shape ``(N, C, H, W)``.

    ``where`` names the data set in messages; ``ids`` maps batch positions to data-set indices and
    ``describe(index)`` may add a file name. Values within ``RANGE_TOLERANCE`` of ``[0, 1]`` are clamped.
    """
    x = _to_tensor(x, "x", where)
    if not x.is_floating_point():
        hint = " (use x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise UserError(
            f"{where}: images must be floats in [0, 1], got dtype {str(x.dtype).replace('torch.', '')}{hint}"
        )
    if x.ndim == 3:
        raise UserError(
            f"{where}: images must be 4-D (N, C, H, W), got 3-D {_shape(x)}; "
            "for grayscale (N, H, W) use x.unsqueeze(1)"
        )
    if x.ndim != 4:
        raise UserError(f"{where}: images must be 4-D (N, C, H, W), got {x.ndim}-D {_shape(x)}")
    n, c, h, w = x.shape
    if w in (1, 3) and c > 4 and h > 4:  # (N, H, W, C) read as NCHW
        raise UserError(
            f"{where}: images of shape {_shape(x)} look channels-last (N, H, W, C); "
            "robustaudit expects (N, C, H, W): use x.permute(0, 3, 1, 2)"
        )
    if n == 0:
        raise UserError(f"{where}: no images (empty batch)")
    if 0 in (c, h, w):
        raise UserError(f"{where}: images of shape {_shape(x)} hold no pixels (a dimension of size 0)")
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    flat = x.reshape(n, -1)
    finite = torch.isfinite(flat)
    bad = ~finite.all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        nan = int(torch.isnan(flat).sum())
        inf = int((~finite).sum()) - nan
        counts = " and ".join(f"{k} {kind}" for k, kind in ((nan, "NaN"), (inf, "Inf")) if k)
        raise UserError(
            f"{where}: {_sample(first, ids, describe)} has NaN or Inf pixels ({counts} pixels "
            f"in {int(bad.sum())} of {n} samples)"
        )
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    out = (lo < -RANGE_TOLERANCE) | (hi > 1 + RANGE_TOLERANCE)
    if bool(out.any()):
        first = int(out.nonzero()[0, 0])
        vmin, vmax = float(lo.min()), float(hi.max())
        hint = " (pixels in [0, 255]? divide by 255)" if vmax > 1 and vmax <= 255 and vmin >= 0 else ""
        raise UserError(
            f"{where}: {_sample(first, ids, describe)} has pixels outside [0, 1] "
            f"(data range [{vmin:.4g}, {vmax:.4g}]); images must be floats in [0, 1]{hint}"
        )
    if bool((lo < 0).any()) or bool((hi > 1).any()):
        x = x.clamp(0.0, 1.0)
    return x


def check_labels(
    y: object,
    num_classes: int | None,
    where: str,
    *,
    ids: Sequence[int] | None = None,
    describe: Describe | None = None,
) -> torch.Tensor:
    """Validate labels and return them as int64 of shape ``(N,)``, each in ``[0, num_classes)``.

    With ``num_classes=None`` only the lower bound is checked (the caller infers ``max(y) + 1``).
    """
    y = _to_tensor(y, "y", where)
    dtype = str(y.dtype).replace("torch.", "")
    if y.is_floating_point():
        values = y.reshape(-1).double()
        whole = torch.isfinite(values) & (values == values.round())
        if values.numel() and not bool(whole.all()):
            pos = int((~whole).nonzero()[0, 0])
            # the sample is only meaningful for 1-D labels; for other shapes the rank check below speaks
            at = f"{_sample(pos, ids, describe)} has label {float(values[pos]):g}; " if y.ndim == 1 else ""
            raise UserError(
                f"{where}: labels must be integer class indices, got {dtype} with non-integer values "
                f"({at}{int((~whole).sum())} such labels)"
            )
        raise UserError(
            f"{where}: labels must be integer class indices, got dtype {dtype} (use y.long(): they are whole numbers)"
        )
    if y.dtype == torch.bool or y.is_complex():
        raise UserError(f"{where}: labels must be integer class indices, got dtype {dtype}")
    if y.ndim != 1:
        hint = "; one-hot labels? use y.argmax(1)" if y.ndim == 2 and y.shape[1] > 1 else ""
        raise UserError(f"{where}: labels must be 1-D (N,), got shape {_shape(y)}{hint}")
    y = y.to(torch.int64)
    if y.numel() and bool((y < 0).any()):
        first = int((y < 0).nonzero()[0, 0])
        raise UserError(f"{where}: {_sample(first, ids, describe)} has negative label {int(y[first])}")
    if num_classes is not None and y.numel() and bool((y >= num_classes).any()):
        first = int((y >= num_classes).nonzero()[0, 0])
        raise UserError(
            f"{where}: {_sample(first, ids, describe)} has label {int(y[first])}, "
            f"outside [0, {num_classes}) for {num_classes} classes"
        )
    return y


def _check_num_classes(num_classes: object, where: str) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UserError(f"{where}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_class_names(class_names: Iterable[str] | None, num_classes: int, where: str) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise UserError(f"{where}: {len(names)} class names given for {num_classes} classes")
    return names


def _index_tensor(indices: Sequence[int] | torch.Tensor, n: int, where: str) -> torch.Tensor:
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise IndexError(f"{where}: index {bad} out of range for {n} samples")
    return idx


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
            num_classes = _check_num_classes(num_classes, name)
        y = check_labels(y, num_classes, name)
        if len(x) != len(y):
            raise UserError(f"{name}: {len(x)} images but {len(y)} labels; x and y must have the same length")
        self.name = name
        self.num_classes = num_classes if num_classes is not None else int(y.max()) + 1
        self.class_names = _check_class_names(class_names, self.num_classes, name)
        self.sample_shape = tuple(int(d) for d in x.shape[1:])  # type: ignore[assignment]
        self.x = x
        self.y = y.to(x.device)

    def __len__(self) -> int:
        return len(self.y)

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images and ``(B,)`` int64 labels; copies, safe to modify."""
        idx = _index_tensor(indices, len(self), self.name).to(self.x.device)
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
            num_classes = _check_num_classes(num_classes, name)
        self._n = n
        first, _ = self._item(0)
        self.sample_shape = tuple(int(d) for d in first.shape)  # type: ignore[assignment]
        self.num_classes = num_classes if num_classes is not None else self._scan_num_classes()
        self.class_names = _check_class_names(class_names, self.num_classes, name)

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
        where = f"{self.name}: {_sample(index, None, self.describe)}"
        try:
            item = self.dataset[index]
        except OSError as exc:  # unreadable / truncated image files (PIL raises OSError subclasses)
            if type(exc).__name__ == "UnidentifiedImageError":  # PIL's text quotes a file object's repr
                raise UserError(f"{where}: cannot read it: not an image file, or a corrupt one") from exc
            raise UserError(f"{where}: cannot read it: {exc}") from exc
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UserError(f"{where}: dataset items must be (image, label) pairs, got {type(item).__name__}")
        image, label = item
        if not isinstance(image, (torch.Tensor, np.ndarray)):
            raise UserError(
                f"{where}: image is a {type(image).__name__}, expected a tensor (C, H, W); "
                "add transforms.ToTensor() to the dataset"
            )
        image = _to_tensor(image, "image", where)
        if image.ndim == 2:
            raise UserError(
                f"{where}: image must be 3-D (C, H, W), got {_shape(image)}; use image.unsqueeze(0)"
            )
        if image.ndim != 3:
            raise UserError(f"{where}: image must be 3-D (C, H, W), got {image.ndim}-D {_shape(image)}")
        return image, _label_of(label, where)

    def __len__(self) -> int:
        return self._n

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images and ``(B,)`` int64 labels, read and validated now."""
        idx = _index_tensor(indices, self._n, self.name).tolist()
        if not idx:
            return torch.empty((0, *self.sample_shape)), torch.empty((0,), dtype=torch.int64)
        images, labels = [], []
        for i in idx:
            image, label = self._item(i)
            if tuple(image.shape) != self.sample_shape:
                raise UserError(
                    f"{self.name}: {_sample(i, None, self.describe)} has shape {_shape(image)} but sample 0 "
                    f"has {_shape(self.sample_shape)}; images must all have one size: {self._size_hint}"
                )
            images.append(image)
            labels.append(label)
        x = check_images(torch.stack(images), self.name, ids=idx, describe=self.describe)
        y = check_labels(torch.tensor(labels), self.num_classes, self.name, ids=idx, describe=self.describe)
        return x, y


def _materialise(loader: Iterable, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for b, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UserError(
                f"{name}: batch {b} of the DataLoader is not an (x, y) pair but {type(batch).__name__}"
            )
        xs.append(_to_tensor(batch[0], "x", name))
        y = _to_tensor(batch[1], "y", name)
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
        # imported here: the segmentation module imports this one
        from robustaudit.data.segmentation import SegmentationTensorData

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

    ``n <= 0`` is a :class:`UserError`; ``n > len(data)`` gives all samples, with a warning.
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
    return list(range(int(n)))
