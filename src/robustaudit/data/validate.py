"""The checks every image batch passes, and the one-line messages that name the offending sample.

Images come out float32 in ``[0, 1]`` of shape ``(N, C, H, W)``, labels int64 ``(N,)``, segmentation
masks int64 ``(N, H, W)``. A user's mistake in the data (wrong dtype, rank or layout, NaN pixels,
out-of-range values or labels, mismatched lengths) is a :class:`UserError` with one line naming the
data set and the sample, never an ``assert`` or a traceback from deep inside an attack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from robustaudit.core.errors import UserError
from robustaudit.core.task import IGNORE_INDEX

# Pixels a hair outside [0, 1] come from float rounding in a user's preprocessing (e.g. x / 255 done
# in float16); they are clamped. Anything further out is a real scaling mistake and is reported.
RANGE_TOLERANCE = 1e-6

Describe = Callable[[int], str]  # data-set index -> file name (or ""), for messages


def shape_text(t: torch.Tensor | tuple[int, ...]) -> str:
    dims = tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)
    return "(" + ", ".join(str(d) for d in dims) + ")"


def sample_text(position: int, ids: Sequence[int] | None, describe: Describe | None = None) -> str:
    """Name the sample at ``position`` of a batch by its index in the data set (and file, if known)."""
    sid = int(ids[position]) if ids is not None else position
    where = describe(sid) if describe is not None else ""
    return f"sample {sid}{f' ({where})' if where else ''}"


def to_tensor(value: object, what: str, where: str) -> torch.Tensor:
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
    x = to_tensor(x, "x", where)
    if not x.is_floating_point():
        hint = " (use x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise UserError(
            f"{where}: images must be floats in [0, 1], got dtype {str(x.dtype).replace('torch.', '')}{hint}"
        )
    if x.ndim == 3:
        raise UserError(
            f"{where}: images must be 4-D (N, C, H, W), got 3-D {shape_text(x)}; "
            "for grayscale (N, H, W) use x.unsqueeze(1)"
        )
    if x.ndim != 4:
        raise UserError(f"{where}: images must be 4-D (N, C, H, W), got {x.ndim}-D {shape_text(x)}")
    n, c, h, w = x.shape
    if w in (1, 3) and c > 4 and h > 4:  # (N, H, W, C) read as NCHW
        raise UserError(
            f"{where}: images of shape {shape_text(x)} look channels-last (N, H, W, C); "
            "robustaudit expects (N, C, H, W): use x.permute(0, 3, 1, 2)"
        )
    if n == 0:
        raise UserError(f"{where}: no images (empty batch)")
    if 0 in (c, h, w):
        raise UserError(f"{where}: images of shape {shape_text(x)} hold no pixels (a dimension of size 0)")
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
            f"{where}: {sample_text(first, ids, describe)} has NaN or Inf pixels ({counts} pixels "
            f"in {int(bad.sum())} of {n} samples)"
        )
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    out = (lo < -RANGE_TOLERANCE) | (hi > 1 + RANGE_TOLERANCE)
    if bool(out.any()):
        first = int(out.nonzero()[0, 0])
        vmin, vmax = float(lo.min()), float(hi.max())
        hint = " (pixels in [0, 255]? divide by 255)" if vmax > 1 and vmax <= 255 and vmin >= 0 else ""
        raise UserError(
            f"{where}: {sample_text(first, ids, describe)} has pixels outside [0, 1] "
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
    y = to_tensor(y, "y", where)
    dtype = str(y.dtype).replace("torch.", "")
    if y.is_floating_point():
        values = y.reshape(-1).double()
        whole = torch.isfinite(values) & (values == values.round())
        if values.numel() and not bool(whole.all()):
            pos = int((~whole).nonzero()[0, 0])
            # the sample is only meaningful for 1-D labels; for other shapes the rank check below speaks
            at = f"{sample_text(pos, ids, describe)} has label {float(values[pos]):g}; " if y.ndim == 1 else ""
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
        raise UserError(f"{where}: labels must be 1-D (N,), got shape {shape_text(y)}{hint}")
    y = y.to(torch.int64)
    if y.numel() and bool((y < 0).any()):
        first = int((y < 0).nonzero()[0, 0])
        raise UserError(f"{where}: {sample_text(first, ids, describe)} has negative label {int(y[first])}")
    if num_classes is not None and y.numel() and bool((y >= num_classes).any()):
        first = int((y >= num_classes).nonzero()[0, 0])
        raise UserError(
            f"{where}: {sample_text(first, ids, describe)} has label {int(y[first])}, "
            f"outside [0, {num_classes}) for {num_classes} classes"
        )
    return y


def check_num_classes(num_classes: object, where: str) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UserError(f"{where}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def check_class_names(class_names: Iterable[str] | None, num_classes: int, where: str) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise UserError(f"{where}: {len(names)} class names given for {num_classes} classes")
    return names


def index_tensor(indices: Sequence[int] | torch.Tensor, n: int, where: str) -> torch.Tensor:
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise IndexError(f"{where}: index {bad} out of range for {n} samples")
    return idx


def check_masks(
    y: object,
    num_classes: int | None,
    where: str,
    *,
    ignore_index: int = IGNORE_INDEX,
    ids: Sequence[int] | None = None,
    describe: Describe | None = None,
) -> torch.Tensor:
    """Validate a batch of masks and return it as int64 ``(N, H, W)``.

    Values must be whole numbers in ``[0, num_classes)`` or ``ignore_index``; with ``num_classes=None``
    only negatives are refused. ``ids``/``describe`` name the offending sample as in ``check_labels``.
    """
    y = to_tensor(y, "masks", where)
    dtype = str(y.dtype).replace("torch.", "")
    if y.dtype == torch.bool or y.is_complex():
        raise UserError(f"{where}: masks must hold integer class indices, got dtype {dtype}")
    if y.is_floating_point():
        flat = y.reshape(-1).double()
        if flat.numel() and not bool((torch.isfinite(flat) & (flat == flat.round())).all()):
            raise UserError(f"{where}: masks must hold integer class indices, got {dtype} with non-integer values")
        raise UserError(f"{where}: masks must hold integer class indices, got dtype {dtype} (use y.long())")
    if y.ndim == 4 and y.shape[1] == 1:
        raise UserError(f"{where}: masks must be (N, H, W), got {shape_text(y)}; use y.squeeze(1)")
    if y.ndim != 3:
        raise UserError(f"{where}: masks must be 3-D (N, H, W), got {y.ndim}-D {shape_text(y)}")
    y = y.to(torch.int64)
    flat = y.reshape(len(y), -1)
    negative = (flat < 0).any(dim=1)
    if bool(negative.any()):
        first = int(negative.nonzero()[0, 0])
        raise UserError(f"{where}: {sample_text(first, ids, describe)} has a negative class index {int(flat[first].min())}")
    if num_classes is not None:
        outside = (flat >= num_classes) & (flat != ignore_index)
        rows = outside.any(dim=1)
        if bool(rows.any()):
            first = int(rows.nonzero()[0, 0])
            value = int(flat[first][outside[first]][0])
            raise UserError(
                f"{where}: {sample_text(first, ids, describe)} has class index {value} in its mask, outside "
                f"[0, {num_classes}) for {num_classes} classes (and not the ignore index {ignore_index})"
            )
    return y
