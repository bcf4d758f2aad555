"""Keyed randomness: every random draw depends on (seed, sample id, attack, eps, restart) only.

Results then do not depend on batch size, batch order, resuming or how samples are split across
processes: sample 17 gets the same random start wherever it lands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_MASK63 = (1 << 63) - 1


def stream_key(*parts: object) -> int:
    """A stable 63-bit integer for a tuple of parts (no Python ``hash``: it is salted per process)."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & _MASK63


def _sample_seed(key: int, sample_id: int) -> int:
    # splitmix64 finaliser: decorrelates neighbouring ids under the same key
    z = (key + (sample_id + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


def _keyed(ids, sample_shape, key, draw, device, dtype) -> torch.Tensor:
    id_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    out = torch.empty((len(id_list), *sample_shape), dtype=torch.float32)
    g = torch.Generator()
    for row, sid in enumerate(id_list):
        g.manual_seed(_sample_seed(key, int(sid)))
        out[row] = draw(tuple(sample_shape), generator=g)
    return out.to(device=device, dtype=dtype)


def keyed_uniform(
    ids: Sequence[int] | torch.Tensor,
    sample_shape: Sequence[int],
    key: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform ``[0, 1)`` noise of shape ``(len(ids), *sample_shape)``, row ``i`` keyed by ``ids[i]``.

    Draws on the CPU (one generator per sample) and moves the result once: called once per restart,
    never per step.
    """
    return _keyed(ids, sample_shape, key, torch.rand, device, dtype)


def keyed_normal(
    ids: Sequence[int] | torch.Tensor,
    sample_shape: Sequence[int],
    key: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of shape ``(len(ids), *sample_shape)``, row ``i`` keyed by ``ids[i]``."""
    return _keyed(ids, sample_shape, key, torch.randn, device, dtype)
