"""sha256 of what an audit's numbers depend on: weight files, tensors, a module's weights.

One function each, used everywhere: model loading and the catalog check a weights file against its
card with :func:`file_sha256`; the resume fingerprint identifies weights handed over in Python, and the
detectors' fit cache keys a model, with :func:`state_dict_sha256`; a resumed run checks its data
batch by batch with :func:`tensors_sha256`.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["file_sha256", "state_dict_sha256", "tensors_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    import torch

    # viewed as bytes so every dtype (bfloat16 included, which numpy lacks) hashes the same way
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and raw bytes (the data check of a resumed run)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes, bytes): the weights of a model that was
    not read from a file. Non-tensor entries (extra state) count by their ``repr``."""
    import torch

    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(_tensor_bytes(value))
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()
