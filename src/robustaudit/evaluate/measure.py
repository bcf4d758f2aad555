"""One model's own cost figures, measured in this process: parameters, FLOPs per input, latency, weight
bytes and the CUDA peak (docs/cost.md; the conventions in :mod:`robustaudit.evaluate.cost`). Re-exported by
:mod:`robustaudit.evaluate.cost`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.modes import eval_mode

#: How the report names the FLOP counter and its convention (stored beside the figures).
FLOP_COUNTER = ("torch.utils.flop_counter.FlopCounterMode: FLOPs = 2 x MACs of convolutions and matrix "
                "products; element-wise ops (activations, normalization, pooling, additions) not counted")
#: Latency runs: warm-up runs excluded, then timed runs until ``_MIN_RUNS`` and ``_BUDGET_S`` seconds
#: are both reached (or ``_MAX_RUNS``): enough for a stable median, bounded for a large model.
_WARMUP, _MIN_RUNS, _MAX_RUNS, _BUDGET_S = 2, 5, 20, 0.5


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(all, trainable)`` parameter counts; a parameter shared by two layers counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def flops_per_input(model: nn.Module, sample_shape: Sequence[int], device: torch.device | str = "cpu") -> int:
    """FLOPs of one forward of one input of shape ``sample_shape`` (``(C, H, W)``), by PyTorch's counter.

    The counter reports 2 FLOPs per multiply-accumulate of convolutions and matrix products and ignores
    element-wise ops (see :data:`FLOP_COUNTER`); MACs per input are this number halved. The input is a
    constant 0.5 image (a network without data-dependent control flow costs the same on any input).
    """
    from torch.utils.flop_counter import FlopCounterMode  # only when measuring

    x = torch.full((1, *sample_shape), 0.5, device=device)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync the clock stops before the work is done
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeded_batch(sample_shape: Sequence[int], batch_size: int, device: torch.device | str) -> torch.Tensor:
    """A seeded uniform batch ``(batch_size, *sample_shape)`` in [0, 1] (latency and memory inputs)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand((batch_size, *sample_shape), generator=g).to(device)


def measure_latency(model: nn.Module, sample_shape: Sequence[int], batch_size: int,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Median seconds of one ``torch.no_grad`` forward of a batch ``(batch_size, *sample_shape)``.

    ``_WARMUP`` untimed runs first (allocator, lazy init, cuDNN autotuning), then timed runs until at
    least ``_MIN_RUNS`` runs and ``_BUDGET_S`` seconds (at most ``_MAX_RUNS``). The model must already be
    on ``device``. Returns ``median_seconds_per_batch``, ``batch_size``, ``runs``, ``warmup_runs``, and
    on CPU the torch thread count (latency depends on it).
    """
    dev = torch.device(device)
    x = seeded_batch(sample_shape, batch_size, dev)
    times: list[float] = []
    with eval_mode(model), torch.no_grad():
        for _ in range(_WARMUP):
            model(x)
        _sync(dev)
        while len(times) < _MAX_RUNS and (len(times) < _MIN_RUNS or sum(times) < _BUDGET_S):
            t0 = time.perf_counter()
            model(x)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return {"median_seconds_per_batch": statistics.median(times), "batch_size": int(batch_size), "runs": len(times),
            "warmup_runs": _WARMUP, "threads": torch.get_num_threads() if dev.type == "cpu" else None}


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers (each tensor once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def cuda_peak_memory(model: nn.Module, sample_shape: Sequence[int], batch_size: int, device: torch.device) -> int:
    """Peak CUDA bytes of the model alone at ``batch_size``: its weights plus the most that one
    ``torch.no_grad`` forward (input included) allocated on top of what was allocated before it."""
    _sync(device)
    before = torch.cuda.memory_allocated(device)  # the weights and whatever else lives on the device
    torch.cuda.reset_peak_memory_stats(device)
    x = seeded_batch(sample_shape, batch_size, device)
    with eval_mode(model), torch.no_grad():
        model(x)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del x
    return int(peak - before) + weights_bytes(model)
