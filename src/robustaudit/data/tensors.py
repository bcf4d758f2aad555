"""Tensor files: a ``.pt`` dict ``{"x": (N, C, H, W) float in [0, 1], "y": (N,) int}`` or a ``.npz``
with arrays ``x`` and ``y``. An optional ``class_names`` entry (list / string array) names the classes.

Both are read without executing code: ``torch.load(weights_only=True)`` and
``np.load(allow_pickle=False)``. uint8 images are refused rather than silently rescaled: the file
should hold what the model sees.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from robustaudit.core.errors import UserError
from robustaudit.data.base import ImageData, tensor_data

SUFFIXES = (".pt", ".pth", ".npz")


def _read(path: Path) -> dict:
    if path.suffix in (".pt", ".pth"):
        try:
            with warnings.catch_warnings():
                # torch's note about validating sparse tensors; a sparse x is refused with one line anyway
                warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if not _could_be_pickle(path):
                raise UserError(
                    f"cannot read {path}: not a torch.save file (neither a zip archive nor a pickle), or corrupt"
                ) from exc
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # wording differs across torch versions
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"{path}: refused: it holds Python objects{what}, not only tensors; "
                "save plain tensors with torch.save({'x': x, 'y': y}, path)"
            ) from exc
        except Exception as exc:  # torch.load on arbitrary bytes raises anything (IndexError...)
            raise UserError(f"cannot read {path}: not a torch.save file, or truncated") from exc
        if isinstance(obj, (tuple, list)) and len(obj) == 2:
            obj = {"x": obj[0], "y": obj[1]}
        if not isinstance(obj, dict):
            raise UserError(f"{path}: expected a dict with keys 'x' and 'y', got {type(obj).__name__}")
        return obj
    with open(path, "rb") as f:
        # np.load falls back to unpickling anything that is not a zip; check first for a clear message
        if f.read(4) != b"PK\x03\x04":
            raise UserError(f"cannot read {path}: not an .npz file (expected a zip archive from np.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle, which stays off
        raise UserError(f"{path}: arrays must be numeric (object arrays are refused): {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path}: not an .npz file or truncated ({exc})") from exc


def _could_be_pickle(path: Path) -> bool:
    """A ``torch.save`` zip archive, or a stream opening with pickle's PROTO opcode (the legacy format):
    only those can hold Python objects; anything else is a corrupt file, not a refused one."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def open_tensors(path: str | Path, *, name: str | None = None) -> ImageData:
    """Images and labels from a ``.pt`` or ``.npz`` file: ``x`` ``(N, C, H, W)``, ``y`` ``(N,)`` (or
    ``(N, H, W)`` masks of class indices, 255 = ignore: a segmentation set)."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: expected a .pt or .npz file holding 'x' and 'y'")
    if not path.is_file():
        raise UserError(f"tensor file {path} does not exist")
    obj = _read(path)
    missing = [k for k in ("x", "y") if k not in obj]
    if missing:
        raise UserError(
            f"{path}: missing key(s) {', '.join(missing)}; expected 'x' (N, C, H, W) and 'y' (N,), "
            f"found {sorted(map(str, obj))}"
        )
    names = _class_names(obj.get("class_names"), path)
    return tensor_data(  # y of shape (N, H, W): segmentation masks
        obj["x"],
        obj["y"],
        name=name or f"tensors:{path}",
        num_classes=len(names) if names else None,
        class_names=names,
    )


def _class_names(value: object, path: Path) -> list[str] | None:
    """The optional ``class_names`` entry as a list of strings: a list/tuple or a 1-D array of them."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, (str, bytes, int)) for n in value):
        shown = f"{type(value).__name__}" + (f" of shape {value.shape}" if isinstance(value, np.ndarray) else "")
        raise UserError(f"{path}: 'class_names' must be a list of strings (one per class), got {shown}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in value]
