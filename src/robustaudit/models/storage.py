"""What a model's tensors must be for an audit, said in one line before anything runs: real data (not the
``meta`` device) in float32 (not ``.half()``), and a forward that stays on the input's device.

Without these checks each case ends in a raw torch error deep inside the first forward or the first
``model.to(device)`` ("Cannot copy out of meta tensor", "mat1 and mat2 must have the same dtype", "Found
no NVIDIA driver"), which names neither the model nor the fix.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from robustaudit.core.errors import UserError

__all__ = ["check_storage", "device_failure"]

#: Parameter dtypes refused: the audit feeds float32 images and scores in float32 (``--precision`` runs
#: the attacks in half precision under autocast, with float32 weights).
_HALF = (torch.float16, torch.bfloat16)

#: What torch says when a forward sends a tensor to a device that is absent, or not the audit's.
_DEVICE_ERRORS = re.compile(
    r"Found no NVIDIA driver|Torch not compiled with CUDA|no CUDA GPUs are available|CUDA driver version"
    r"|Expected all tensors to be on the same device|MPS backend (is )?not available|invalid device ordinal"
    r"|Attempting to deserialize object on a CUDA device")


def check_storage(module: nn.Module, name: str) -> None:
    """Refuse, in one line, a model whose parameters or buffers live on the ``meta`` device (shapes without
    data) or whose floating-point parameters are float16 / bfloat16."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.device.type == "meta" for t in tensors):
        raise UserError(f"model '{name}' has its weights on the 'meta' device (shapes without data): "
                        "materialize it first (model.to_empty(device='cpu') then load_state_dict)")
    half = next((p.dtype for p in module.parameters() if p.dtype in _HALF), None)
    if half is not None:
        kind = str(half).removeprefix("torch.")
        raise UserError(f"model '{name}' has {kind} weights: audits take a float32 model (call .float() on it; "
                        "--precision fp16/bf16 runs the attacks in half precision, the verdict stays fp32)")


def device_failure(exc: BaseException, name: str) -> UserError | None:
    """One line when ``exc`` (raised in ``name``'s forward) says the forward moved a tensor to an absent
    device or to another device than the input's (``.to("cuda")`` on a CPU machine); else ``None``."""
    text = str(exc)
    if not _DEVICE_ERRORS.search(text):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return UserError(f"model '{name}' moves tensors to another device in forward (a hard-coded .to('cuda') or "
                     f".cuda()?): use the input's device (x.device) instead; torch said: {first}")
