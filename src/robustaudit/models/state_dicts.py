"""Weights: read a state_dict from ``.safetensors`` or a ``torch.save`` file (unwrapping training
checkpoints and ``module.`` prefixes) and load it strictly, every mismatch explained in one line."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustaudit.core.errors import UserError
from robustaudit.models.files import describe_pickle, first_line, sniff, torch_load_safe
from robustaudit.models.wrappers import type_name

__all__ = ["CHECKPOINT_KEYS", "existing_file", "is_state_dict", "load_state_dict", "read_state_dict"]

# Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def existing_file(path: str | os.PathLike[str], role: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise UserError(f"{role} must be a path, got {path!r}")
    resolved = Path(path)
    if not resolved.exists():
        raise UserError(f"{role} '{path}' not found")
    if not resolved.is_file():
        raise UserError(f"{role} '{path}' is not a file")
    return resolved


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a ``torch.save`` file, unwrapping checkpoints."""
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _strip_prefixes(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(
                f"could not read weights file '{path}' (corrupt or truncated safetensors?): "
                f"{first_line(err)}"
            ) from None
    if kind in ("torchscript", "export"):
        label = "TorchScript" if kind == "torchscript" else "torch.export"
        raise UserError(
            f"weights file '{path}' is a {label} model, not weights: "
            "give it as the model and drop --weights"
        )
    if kind == "python":
        raise UserError(
            f"weights file '{path}' is Python code; "
            "--weights takes a .safetensors or state_dict .pt file"
        )
    obj = torch_load_safe(path, "weights file")
    if obj is None:
        raise UserError(
            f"weights file {describe_pickle(path)}, not a state_dict; give it as the model with "
            "--trust-pickle, or save model.state_dict() and pass that"
        )
    return _strip_prefixes(_unwrap_state_dict(obj, path))


def is_state_dict(obj: object) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    # `_extra_state` entries may hold any object a module chose to save.
    return all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        for k, v in obj.items()
    )


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if is_state_dict(obj):
        return dict(obj)  # type: ignore[call-overload]
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in itertools.islice(obj, 8)) + (
            ", ..." if len(obj) > 8 else ""
        )
        raise UserError(
            f"weights file '{path}' is a dict ({keys or 'empty'}) but not a state_dict; "
            "expected parameter names -> tensors, or a checkpoint with them under "
            f"{' or '.join(repr(k) for k in CHECKPOINT_KEYS)}"
        )
    raise UserError(f"weights file '{path}' holds {type_name(obj)}, not a state_dict")


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def load_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Load strictly; explain any mismatch in one line before torch's multi-line message can."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first_keys(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first_keys(unexpected)})")
        raise UserError(f"weights '{path}' do not fit the model: keys {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
            continue
        if nn.parameter.is_lazy(want):
            continue  # shape decided by the weights themselves
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(
                f"weights '{path}' do not fit the model: '{key}' has shape {tuple(got.shape)} "
                f"in the file but {tuple(want.shape)} in the model"
            )
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"weights '{path}' do not fit the model: {first_line(err)}") from None


def _first_keys(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
