"""The machine line every benchmark prints: CPU model, torch's threads, the GPU when used, versions."""

from __future__ import annotations

import platform
from types import ModuleType

import torch
import torchvision


def machine(device: torch.device, *libraries: ModuleType) -> str:
    """One line: CPU model, torch's thread count, GPU name when ``device`` is CUDA, then the versions of
    torch, torchvision and ``libraries`` (e.g. foolbox, torchattacks)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    where = f"{cpu} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        where += f", GPU {torch.cuda.get_device_name(device)}"
    versions = ", ".join(f"{m.__name__} {m.__version__}" for m in (torch, torchvision, *libraries))
    return f"{where}; {versions}"
