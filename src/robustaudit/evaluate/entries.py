"""What the runner is given: the model rows and attack columns of an audit, a progress sink, the device and
the eps grid, validated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel


@dataclass
class ModelEntry:
    """One row group of the matrix: a display name, the module, and what the report says about it."""

    name: str
    module: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackEntry:
    """One attack column: a display name (unique in the audit) and the attack object."""

    name: str
    attack: Attack


class Progress(Protocol):
    """What the runner reports progress to (the CLI passes a rich progress bar)."""

    def start(self, description: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...


class NoProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; otherwise a device that must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{spec}' requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device '{spec}' requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    return dev


def sort_eps(eps: Sequence[float]) -> list[float]:
    """Validated, de-duplicated, ascending eps grid."""
    out: list[float] = []
    for e in eps:
        ThreatModel("linf", e)  # validates: >= 0, a number
        if e == float("inf"):
            raise UserError("the eps grid needs finite radii (inf is only a minimal-norm attack's budget)")
        if float(e) not in out:
            out.append(float(e))
    if not out:
        raise UserError("the eps grid is empty")
    return sorted(out)
