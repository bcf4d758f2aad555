"""The GPU fast path: the precision attacks run at, TF32, channels_last, ``torch.compile``, and
halving a batch that runs out of memory.

Precision semantics (DESIGN.md): ``precision`` is the precision that *produces the adversarial
points*. The attack gets the model wrapped in :class:`AutocastModel` (autocast for its forward; the
backward of an autocast op runs in the dtype of its forward, so the backward is autocast too) and
reads float32 logits, so no attack code changes. The runner's clean pass and its scoring of the final
adversarial points use the bare model in float32: the verdict is always fp32, and an iterate that only
a bf16 forward judged adversarial counts as robust (the safe direction). ``tf32`` decides whether
"float32" matmuls and convolutions on NVIDIA GPUs may use TF32 (10-bit mantissa): off by default, so
fp32 means fp32; it is set explicitly for the audit and restored afterwards.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustaudit.core.errors import UserError, suggest
from robustaudit.evaluate.plan import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: fp16 has a 5-bit exponent: input gradients of a confident model underflow to zero in its backward.
#: A static scale on the logits' gradient (undone in float32 at the input) keeps them representable;
#: sign-based and normalised steps would not care, gradient-magnitude attacks (DeepFool, C&W) would.
FP16_GRAD_SCALE = 1024.0


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line :class:`UserError`."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        hint = suggest(str(precision).lower(), PRECISIONS) if isinstance(precision, str) else ""
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}{hint}")
    return precision


@dataclass(frozen=True)
class FastPath:
    """How attacks run on the device; none of it changes what a sample's verdict means.

    precision: ``fp32``, ``bf16`` or ``fp16`` autocast for the attack's forward and backward.
    tf32: allow TF32 for float32 matmuls/convolutions on CUDA (the scoring included).
    compile: ``torch.compile`` the model the attack gets (eager fallback, with a warning, on failure).
    channels_last: NHWC weights and inputs for 4-D inputs; ``None``: on CUDA only.
    """

    precision: str = "fp32"
    tf32: bool = False
    compile: bool = False
    channels_last: bool | None = None

    def validate(self, device: torch.device) -> FastPath:
        """Refuse what ``device`` cannot do (one line each); returns ``self``."""
        check_precision(self.precision)
        if self.precision == "fp16" and device.type == "cpu":
            raise UserError("--precision fp16 needs a GPU: on CPU fp16 matmuls are emulated (slower than fp32) "
                            "and there is no loss scaling; use --precision bf16 on CPU")
        if self.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                            "use fp16 or fp32")
        return self

    def uses_channels_last(self, device: torch.device, sample_shape: tuple[int, ...]) -> bool:
        """NHWC for image inputs ``(C, H, W)``: on CUDA by default (tensor cores want it), never on
        other shapes."""
        want = device.type == "cuda" if self.channels_last is None else self.channels_last
        return bool(want) and len(sample_shape) == 3

    def provenance(self, device: torch.device, sample_shape: tuple[int, ...]) -> dict[str, Any]:
        """The ``provenance["precision"]`` block: what produced the points and what judged them."""
        return {
            "attack": self.precision,
            "verdict": "fp32",
            # TF32 is a CUDA switch: on other devices it does not apply (None), it is not "off"
            "tf32": self.tf32 if device.type == "cuda" else None,
            "compile": self.compile,
            "channels_last": self.uses_channels_last(device, tuple(sample_shape)),
        }

    def fingerprint(self, device: torch.device) -> dict[str, Any]:
        """What changes the numbers, for the resume fingerprint: only what differs from the default, so
        stores written before these options existed still resume."""
        out: dict[str, Any] = {}
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.compile:
            out["compile"] = True
        if self.tf32 and device.type == "cuda":
            out["tf32"] = True
        return out

    def summary(self, device: torch.device) -> str:
        """One line for the report's provenance table."""
        tf32 = ("on" if self.tf32 else "off") if device.type == "cuda" else f"n/a on {device.type}"
        return (f"adversarial points found at {self.precision}"
                f"{' (autocast)' if self.precision != 'fp32' else ''}, verdict re-checked at fp32; TF32 {tf32}"
                f"{'; torch.compile' if self.compile else ''}")


@contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Set TF32 for CUDA matmuls and cuDNN convolutions to ``enabled`` and restore both on exit (a
    caller's process keeps its own choice). Harmless without CUDA."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class AutocastModel(nn.Module):
    """The model as an attack sees it under ``bf16`` / ``fp16``: forward under ``torch.autocast``,
    logits returned in float32 (so losses, margins and comparisons run in float32).

    Under fp16 the logits' gradient is scaled by :data:`FP16_GRAD_SCALE` on its way into the network
    and unscaled in float32 at the input, so the input gradient is the true one without underflowing
    in between. Keeps the model as ``.model`` (BPDA looks through wrappers for ``preprocess``).

    Shapes: ``x (N, C, H, W)`` float32 -> logits ``(N, K)`` float32.
    """

    def __init__(self, model: nn.Module, precision: str, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.training = model.training
        self.precision = check_precision(precision)
        self.device_type = device_type

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.precision == "fp32":
            return self.model(x, *args, **kwargs)
        scale = FP16_GRAD_SCALE if self.precision == "fp16" else 1.0
        if scale != 1.0 and x.requires_grad:
            x = _ScaleGrad.apply(x, 1.0 / scale)  # float32 here: the unscaling loses nothing
        with torch.autocast(self.device_type, dtype=_DTYPES[self.precision]):
            out = self.model(x, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            if scale != 1.0 and out.requires_grad:
                out = _ScaleGrad.apply(out, scale)
            out = out.float()
        return out


class CompiledModel(nn.Module):
    """``torch.compile(model)`` with an eager fallback: compilation happens at the first call, so a
    failure shows there; it is reported once (a warning) and the eager model serves from then on. A
    failure of the eager model itself is the model's own error and propagates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training
        self.failed: str | None = None
        try:
            self._compiled = torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - no compiler for this platform: eager it is
            self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        self.failed = f"{type(exc).__name__}: {_first_line(exc)}"
        self._compiled = None
        warnings.warn(f"--compile: torch.compile failed ({self.failed}); running the model eagerly", stacklevel=3)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(x, *args, **kwargs)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried eagerly below: a model error re-raises there
                self._fallback(exc)
        return self.model(x, *args, **kwargs)


def attack_view(model: nn.Module, fast: FastPath, device: torch.device) -> nn.Module:
    """The model an attack gets: compiled and/or autocast as ``fast`` says (the bare model for fp32
    without compile)."""
    out = CompiledModel(model) if fast.compile else model
    if fast.precision != "fp32":
        out = AutocastModel(out, fast.precision, device.type)
    return out


@contextmanager
def channels_last(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Convert ``model``'s 4-D weights to channels_last and back on exit (a caller's model keeps its
    layout)."""
    if not enabled:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def to_device(x: torch.Tensor, device: torch.device, *, nhwc: bool = False) -> torch.Tensor:
    """Host -> device without a host sync on CUDA (pinned source, ``non_blocking``); NHWC when asked."""
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    if nhwc and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


#: What allocators say when memory runs out (CUDA raises torch.OutOfMemoryError; the CPU allocator a
#: RuntimeError; MPS its own wording).
_OOM = re.compile(r"out of memory|can't allocate memory|failed to allocate|MPS backend out of memory", re.IGNORECASE)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator running out of memory (any device)."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and bool(_OOM.search(str(exc))))


def release_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error, before the retry."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def halving_summary(halvings: list[dict[str, Any]]) -> str:
    """One report line for the runner's out-of-memory halvings: ``pgd on net: 512 -> 256 -> 128``."""
    chains: dict[tuple[str, str, Any], list[int]] = {}
    for h in halvings:
        chain = chains.setdefault((str(h["model"]), str(h["attack"]), h.get("rank")), [int(h["from"])])
        chain.append(int(h["to"]))
    return ("attack batches halved after running out of memory (results unchanged): "
            + "; ".join(f"{a} on {m}{'' if r is None else f' (rank {r})'}: {' -> '.join(map(str, c))}"
                        for (m, a, r), c in chains.items()))


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
