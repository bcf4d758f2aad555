"""What a robustness figure costs: the model's own cost, and the passes an attack spends.

Model cost (``provenance["models"][i]["cost"]`` of ``results.json``, see docs/cost.md):

- parameters: all, and the trainable ones (``requires_grad``);
- MACs and FLOPs per input, from PyTorch's own counter, :class:`torch.utils.flop_counter.FlopCounterMode`,
  over one forward of a single input. That counter reports FLOPs = 2 × MACs for convolutions and
  matrix products (and attention) and counts nothing else: element-wise ops (activations, normalization,
  pooling, additions) are left out, so both figures are lower bounds dominated by the layers that
  matter. MACs are the counter's FLOPs halved; no counter of our own.
- latency: the median seconds of one forward of a batch (batch size stated) under ``torch.no_grad`` on
  the audit's device, warm-up runs excluded, CUDA synchronized around each timed run;
- peak memory of the model alone at that batch size: on CUDA, ``max_memory_allocated`` after
  ``reset_peak_memory_stats`` around one forward, plus the weights; on CPU, in a process of its own per
  model (:class:`MemoryProbe`), so one model's figure is never another's high-water mark.

Attack cost (the records): :class:`PassCounter` wraps the model an attack is given and counts samples
through ``forward`` and samples whose output a gradient flowed back through, so every attack is counted
without touching its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.modes import on_device
from robustaudit.evaluate.measure import (
    FLOP_COUNTER,
    count_parameters,
    cuda_peak_memory,
    flops_per_input,
    measure_latency,
    weights_bytes,
)
from robustaudit.evaluate.memprobe import PROBE_TIMEOUT_S, SERVER_IDLE_S, MemoryProbe, one_line
from robustaudit.evaluate.passes import PassCounter, split_evenly

# the names other modules and tests import from here; they live in the modules above, one concern each
__all__ = ["FLOP_COUNTER", "PROBE_TIMEOUT_S", "SERVER_IDLE_S", "MemoryProbe", "PassCounter", "count_parameters",
           "cuda_peak_memory", "flops_per_input", "measure_latency", "model_cost", "split_evenly", "weights_bytes"]


def model_cost(model: nn.Module, sample_shape: Sequence[int], batch_size: int, device: torch.device,
               memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``cost`` block of one model (plain JSON types; see docs/cost.md for each field).

    ``model`` is measured on ``device`` (moved there and back). ``memory`` is the model's
    :meth:`MemoryProbe.collect` entry on a CPU audit; on CUDA the peak is measured here.
    A figure that cannot be measured is ``None`` with the reason in ``errors``.
    """
    total, trainable = count_parameters(model)
    errors: dict[str, str] = {}
    cost: dict[str, Any] = {"parameters": total, "trainable_parameters": trainable, "macs_per_input": None,
                            "flops_per_input": None, "flop_counter": FLOP_COUNTER}
    with on_device(model, device):
        try:
            flops = flops_per_input(model, sample_shape, device)
            cost.update(macs_per_input=flops // 2, flops_per_input=flops)
        except Exception as exc:  # noqa: BLE001 - a figure we cannot measure is reported, not raised
            errors["flops"] = f"{type(exc).__name__}: {one_line(str(exc))}"
        try:
            latency = measure_latency(model, sample_shape, batch_size, device)
        except Exception as exc:  # noqa: BLE001
            latency = {"median_seconds_per_batch": None, "batch_size": int(batch_size)}
            errors["latency"] = f"{type(exc).__name__}: {one_line(str(exc))}"
        cost["latency"] = {**latency, "device": _device_label(device)}
        peak: dict[str, Any] = {"bytes": None, "batch_size": int(batch_size), "weights_bytes": weights_bytes(model)}
        if device.type == "cuda":
            try:
                peak.update(bytes=cuda_peak_memory(model, sample_shape, batch_size, device),
                            method="cuda: max_memory_allocated after reset_peak_memory_stats, one no_grad forward, "
                                   "plus the weights")
            except Exception as exc:  # noqa: BLE001
                errors["peak_memory"] = f"{type(exc).__name__}: {one_line(str(exc))}"
        elif device.type == "cpu":
            peak["method"] = ("cpu: growth of the peak resident size of a process of its own around loading "
                              "a TorchScript trace and one no_grad forward")
            if memory is None:
                errors["peak_memory"] = "not measured (no memory probe ran)"
            else:
                peak["bytes"] = memory.get("bytes")
                if memory.get("error"):
                    errors["peak_memory"] = str(memory["error"])
        else:
            errors["peak_memory"] = f"not measured on {device.type}"
        cost["peak_memory"] = peak
    # inference-time defenses and detectors do not exist yet; once they do, their added latency over
    # the bare model goes here (docs/cost.md)
    cost["defense"] = None
    cost["errors"] = errors
    return cost


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
