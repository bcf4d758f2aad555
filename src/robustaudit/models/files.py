"""Reading model and weight files without trusting them: tell a file's kind by its content, hash it,
and ``torch.load`` it with ``weights_only=True`` so a pickle never runs code unless the user allowed it.

Shared by the loaders in :mod:`robustaudit.models.loading`; every failure is a one-line
:class:`~robustaudit.core.errors.UserError` naming the file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from robustaudit.core.errors import UserError
from robustaudit.core.hashing import file_sha256  # re-exported: one hash for every weights file

__all__ = ["describe_pickle", "file_sha256", "first_line", "sniff", "torch_load_safe"]


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message: errors here are one line by contract."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def sniff(path: Path) -> str:
    """Tell a file's kind by its content (the extension only breaks ties).

    Returns ``"python"``, ``"safetensors"``, ``"torchscript"``, ``"export"`` or ``"torch"`` (a
    ``torch.save`` file, or anything unrecognised: ``torch.load`` will say what is wrong with it).
    """
    suffix = path.suffix.lower()
    if suffix == ".py":
        return "python"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"
        # Every PyTorch archive puts its records under one top folder; what matters is below it.
        inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
        if "constants.pkl" in inner or any(name.startswith("code/") for name in inner):
            return "torchscript"
        if "archive_format" in inner or suffix == ".pt2":
            return "export"
        return "torch"
    if suffix == ".safetensors" or _looks_like_safetensors(path):
        return "safetensors"
    if suffix == ".pt2":
        return "export"
    return "torch"


def _looks_like_safetensors(path: Path) -> bool:
    # The format: an 8-byte little-endian header length, then that many bytes of JSON.
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def torch_load_safe(path: Path, role: str) -> Any:
    """``torch.load(weights_only=True)``; returns ``None`` when the file holds other pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _could_be_pickle(path):
            raise UserError(
                f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
                "it is neither a zip archive (torch.save) nor a pickle"
            ) from None
        if "weights only load failed" in str(err).lower():
            return None
        raise UserError(
            f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
            f"{first_line(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated zips, bad magic numbers, EOF: all a bad file
        if _broken_zip(path):  # torch's own words for it are about miniz and its central directory
            raise UserError(
                f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
                "a zip archive cut short or damaged (torch.save, TorchScript and .pt2 files are zip archives)"
            ) from None
        raise UserError(
            f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
            f"{first_line(err)}"
        ) from None


def _broken_zip(path: Path) -> bool:
    """A file that starts like a zip archive but cannot be opened as one (cut short, or damaged)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _could_be_pickle(path: Path) -> bool:
    """Whether ``path`` may hold pickled objects: a zip archive (``torch.save``) or a stream that opens
    with pickle's PROTO opcode (the legacy format); random bytes are then "corrupt", not "a pickle"."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _pickled_classes(path: Path) -> list[str]:
    """The classes a ``torch.save`` archive would import when unpickled, read without unpickling."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - only for the message; old non-zip files are not inspectable
        return []


def describe_pickle(path: Path) -> str:
    classes = _pickled_classes(path)
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    what = (
        "a pickled model"
        if any(".nn.modules." in c for c in classes) or not classes
        else "pickled Python objects"
    )
    return f"'{path}' is {what}" + (f" ({shown})" if shown else "")
