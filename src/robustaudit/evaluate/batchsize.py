"""The automatic batch size: the largest batch that fits, capped so progress stays granular.

When the user gives no batch size, each model is probed once before the audit: a forward and a backward to
the input (what every gradient attack step does) on two small batches of the audit's own samples, on the
audit's device and at the attack's precision. What a sample costs in memory is the difference of the two
probes divided by the difference of their sizes (the fixed part, weights and workspaces, cancels out):

- **CUDA**: the allocator's peak (``torch.cuda.max_memory_allocated``) over each probe; the memory there is
  what ``torch.cuda.mem_get_info()`` says is free plus what PyTorch's cache holds unused.
- **CPU**: the CPU allocator keeps no peak counter and a process's resident peak is blurred by the C
  allocator reusing freed pages, so the probe counts what autograd keeps for the backward (the saved
  activations, by ``torch.autograd.graph.saved_tensors_hooks``, each storage once) and doubles it for the
  backward's transients; the memory there is the kernel's ``MemAvailable``.

On top of every sample's activations the attack keeps a few copies of its input (the clean point, the
iterate, the best iterate, the gradient, momentum): :data:`INPUT_COPIES` inputs per sample are added. The batch is
the largest power of two whose estimate stays within :data:`MEMORY_SHARE` of that memory, at most the cap:
on CUDA :data:`CUDA_CAP`; on CPU the smaller of :data:`CPU_CAP` and the batch whose forward+backward is
:data:`CPU_FLOP_BUDGET` FLOPs (three forwards' worth; a forward's FLOPs are twice the
multiply-accumulates of its convolutions and linear layers, counted by hooks during the probe, as
PyTorch's FLOP counter counts them), so that a PGD-10 batch of a ResNet-50 at 224x224 takes tens of
seconds rather than an hour between two updates of the bar and two commits of the store. Powers of two keep the choice stable when free memory drifts a little between runs.
The estimate may still be wrong; the runner halves an attack batch that runs out of memory, as before.

The digits models stay at 256 (the batch size before it was automatic), so their figures do not move.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.nn as nn

from robustaudit.core.modes import eval_mode, on_device
from robustaudit.data.base import ImageData
from robustaudit.evaluate.fastpath import FastPath, attack_view, is_out_of_memory, release_memory
from robustaudit.evaluate.options import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from robustaudit.evaluate.spec import AuditSpec
    from robustaudit.evaluate.subject import Subject

#: The largest automatic batch on CPU (the batch size before it was automatic: the digits audits keep it).
CPU_CAP = DEFAULT_BATCH_SIZE
#: The largest automatic batch on CUDA: larger batches no longer speed a GPU up on these models, and cost
#: progress and resume granularity.
CUDA_CAP = 1024
#: FLOPs of one forward+backward of one batch on CPU, at most: about 1-4 s of one core.
CPU_FLOP_BUDGET = 2e11
#: The share of the free memory the estimate may fill (the rest: the allocator's fragmentation, the
#: scoring forward, the store, other processes).
MEMORY_SHARE = 0.5
#: Copies of the input an attack keeps per sample besides the model's activations.
INPUT_COPIES = 8
#: The two probe batch sizes (memory per sample is their difference's).
PROBES = (1, 3)


@dataclass(frozen=True)
class BatchChoice:
    """The batch size an audit runs at, and why (``provenance["batch_sizing"]``)."""

    size: int
    #: ``given`` (the user's), ``auto`` (probed), ``resumed`` (the stored run's) or ``fallback``
    source: str
    reason: str
    #: per model: bytes per sample, forward FLOPs per sample, the bound each gave
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """JSON-ready built-ins."""
        out: dict[str, Any] = {"size": self.size, "source": self.source, "reason": self.reason}
        if self.models:
            out["models"] = self.models
        if self.source == "auto":
            out["seconds"] = round(self.seconds, 3)
        return out


def given(size: int) -> BatchChoice:
    """The user's batch size: it wins."""
    return BatchChoice(size, "given", "given by the user (--batch-size)")


def resumed(size: int) -> BatchChoice:
    """A resumed run keeps the batch size its stored batches were cut with (they are looked up by ids)."""
    return BatchChoice(size, "resumed", "the stored run's batch size (a resumed run cuts the same batches)")


def choose_batch_size(models: Sequence[tuple[str, nn.Module]], data: ImageData, device: torch.device,
                      fast: FastPath | None = None, *, cap: int | None = None) -> BatchChoice:
    """The largest power-of-two batch every model in ``models`` fits at on ``device`` (module docstring),
    probing each on the first samples of ``data`` (``(C, H, W)`` images in [0, 1]); ``cap`` lowers the cap
    (segmentation's). A probe that fails for a reason other than memory (a model that rejects the input, has
    no input gradients) gives the cap: the audit then reports the model's own error, or halves on memory."""
    t0 = time.perf_counter()
    limit = min(CUDA_CAP if device.type == "cuda" else CPU_CAP, cap or CPU_CAP * 64)
    free = free_memory(device)
    per_model: dict[str, dict[str, Any]] = {}
    size, why = limit, f"the cap for {device.type} ({limit})"
    for name, model in models:
        info = _probe_model(model, data, device, fast or FastPath())
        bound, reason = _bound(info, free, limit, data, device)
        info["bound"] = bound
        per_model[name] = info
        if bound < size:
            size, why = bound, f"{reason} ({name})"
    failed = [f"{name} ({info['error']})" for name, info in per_model.items() if "error" in info]
    if failed:
        why += "; probe failed, the cap assumed for " + ", ".join(failed)
    return BatchChoice(size, "auto", why, per_model, time.perf_counter() - t0)


def _bound(info: dict[str, Any], free: int | None, limit: int, data: ImageData, device: torch.device
           ) -> tuple[int, str]:
    """The batch one model allows and the phrase that says why."""
    if "error" in info:
        return limit, f"the cap for {device.type} ({limit})"
    bound, reason = limit, f"the cap for {device.type} ({limit})"
    flops = info.get("forward_flops")
    if device.type != "cuda" and flops:
        by_flops = _pow2(CPU_FLOP_BUDGET / (3 * flops))
        if by_flops < bound:
            bound, reason = by_flops, f"{CPU_FLOP_BUDGET:.0e} FLOPs of forward+backward per batch on CPU"
    if free is not None:
        input_bytes = 4 * _numel(data.sample_shape)
        per_sample = info["bytes_per_sample"] + INPUT_COPIES * input_bytes
        by_memory = _pow2(MEMORY_SHARE * free / max(per_sample, 1))
        if by_memory < bound:
            bound, reason = by_memory, (f"memory: {per_sample / 2**20:.1f} MiB per sample, "
                                        f"{free / 2**30:.1f} GiB free")
    return bound, reason


def _pow2(value: float) -> int:
    """The largest power of two <= ``value``, at least 1."""
    n = 1
    while n * 2 <= value:
        n *= 2
    return n


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def free_memory(device: torch.device) -> int | None:
    """Bytes an audit may still take on ``device`` (module docstring); ``None`` when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _probe_model(model: nn.Module, data: ImageData, device: torch.device, fast: FastPath) -> dict[str, Any]:
    """``bytes_per_sample`` of a forward+backward to the input and ``forward_flops`` per sample, or ``error``."""
    n = min(len(data), PROBES[1])
    x, _ = data.load(range(n))
    out: dict[str, Any] = {}
    with on_device(model, device), eval_mode(model):
        try:
            view = attack_view(model, fast, device)
            sizes = sorted({min(p, n) for p in PROBES})
            used = []
            for p in sizes:
                with _macs(model) as macs:
                    used.append(_probe_bytes(view, x[:p].to(device), device))
                out["forward_flops"] = 2 * macs[0] // p if macs[0] else None
            if len(used) == 2 and used[1] > used[0]:
                out["bytes_per_sample"] = int((used[1] - used[0]) / (sizes[1] - sizes[0]))
            else:  # a single sample to probe with (or no growth): the whole probe per sample, an over-estimate
                out["bytes_per_sample"] = int(used[-1] / sizes[-1])
        except Exception as exc:  # noqa: BLE001 - a failed probe falls back to the cap; the runner reports it
            if is_out_of_memory(exc):
                release_memory(device)
            out = {"error": next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)}
    return out


@contextmanager
def _macs(model: nn.Module) -> Iterator[list[int]]:
    """Multiply-accumulates of the convolutions and linear layers of ``model`` run inside the block (what
    PyTorch's FLOP counter counts, halved), by forward hooks: ``[total]``. A functional ``F.conv2d`` in a
    custom forward is not seen (the memory bound still holds); the counter itself costs seconds on first use."""
    total = [0]

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        if isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features
        else:  # a convolution: each output element sums in_channels / groups x kernel inputs
            kernel = 1
            for k in module.kernel_size:
                kernel *= int(k)
            total[0] += output.numel() * (module.in_channels // module.groups) * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def _probe_bytes(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Memory of one forward + backward to the input ``x (P, C, H, W)``: the CUDA allocator's peak above
    what was allocated before, or on CPU twice the bytes autograd saved for the backward."""
    x = x.detach().clone().requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _forward_backward(model, x)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with _saved_bytes() as saved:
        _forward_backward(model, x)
    return 2 * saved[0]


def _forward_backward(model: nn.Module, x: torch.Tensor) -> None:
    """A forward and a gradient to the input, as an attack step takes it; the loss is a scalar read from any
    output (logits ``(P, K)`` or per-pixel ``(P, K, H, W)``), so it serves both tasks."""
    out = model(x)
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        out = out[0]
    loss = out.float().logsumexp(1).sum()
    torch.autograd.grad(loss, x)


@contextmanager
def _saved_bytes() -> Iterator[list[int]]:
    """Count the bytes of the tensors autograd saves for the backward inside the block (each storage
    once): ``[total]``."""
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in seen:
                seen.add(key)
                total[0] += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, functional)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def sized(spec: AuditSpec, subject: Subject, device: torch.device, store_path: str | Path | None = None,
          *, cap: int | None = None) -> tuple[AuditSpec, BatchChoice]:
    """``spec`` with its batch size settled, and the choice: the user's when given; a resumed run's stored
    one (``store_path``: a rank's store, else ``spec.out``'s); else :func:`choose_batch_size` over the
    subject's models on ``device`` (``cap``: segmentation's)."""
    from robustaudit.evaluate.resume import stored_batch_size

    if spec.batch_size is not None:
        return spec, given(spec.batch_size)
    if spec.resume and spec.out is not None:
        stored = stored_batch_size(spec.out, store_path)
        if stored is not None:
            return replace(spec, batch_size=stored), resumed(stored)
    choice = choose_batch_size([(e.name, e.module) for e in subject.entries], subject.data, device, spec.fast,
                               cap=cap)
    return replace(spec, batch_size=choice.size), choice


def throughput(records: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``provenance["throughput"]``: per model row of the matrix, the samples its attacks attacked, their
    seconds and images per second (attacked samples / attack seconds, summed over its attack columns and
    eps; the worst case is left out, its cells are the columns' own). A model whose attacks took no
    measurable time has ``images_per_second`` ``None``."""
    from robustaudit.evaluate.aggregate import WORST_CASE

    out: dict[str, dict[str, Any]] = {}
    if records.empty or "n_attacked" not in records:
        return out
    rows = records[records["attack"] != WORST_CASE]
    for model, group in rows.groupby("model", sort=False):
        attacked = pd.to_numeric(group["n_attacked"], errors="coerce").fillna(0).sum()
        seconds = pd.to_numeric(group["seconds"], errors="coerce").fillna(0).sum()
        out[str(model)] = {"attacked_samples": int(attacked), "attack_seconds": round(float(seconds), 3),
                           # four significant digits: 0.1234 images/s for a ResNet-50 on a CPU core, 12,340 on a GPU
                           "images_per_second": float(f"{attacked / seconds:.4g}") if seconds > 0 else None}
    return out
