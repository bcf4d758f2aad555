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

import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.modes import eval_mode, on_device

#: How the report names the FLOP counter and its convention (stored beside the figures).
FLOP_COUNTER = ("torch.utils.flop_counter.FlopCounterMode: FLOPs = 2 x MACs of convolutions and matrix "
                "products; element-wise ops (activations, normalization, pooling, additions) not counted")
#: Latency runs: warm-up runs excluded, then timed runs until ``_MIN_RUNS`` and ``_BUDGET_S`` seconds
#: are both reached (or ``_MAX_RUNS``): enough for a stable median, bounded for a large model.
_WARMUP, _MIN_RUNS, _MAX_RUNS, _BUDGET_S = 2, 5, 20, 0.5
#: Seconds the CPU memory probes may still take once the audit is done.
PROBE_TIMEOUT_S = 300.0
#: Seconds the probe server waits for the next job before it exits (a test session's audits reuse it).
SERVER_IDLE_S = 60.0


# --------------------------------------------------------------------------------- attack passes
class PassCounter(nn.Module):
    """The model as an attack sees it, counting what the attack spends on it.

    ``forward_passes``: samples through ``forward`` (a batch of B counts B, with or without grad).
    ``backward_passes``: samples of an output a gradient flowed back through (a hook on the output
    tensor fires once per backward / ``autograd.grad`` that reaches it, whatever the loss used of it).
    The wrapped model stays ``.model`` (as robustaudit's other wrappers keep it), so attacks that look
    through wrappers (BPDA's ``preprocess``) still find it; parameters and modes are the model's.

    Shapes: ``x (N, ...)`` -> whatever the model returns (logits ``(N, K)``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # a wrapper's own flag starts True; mirror the model's
        self.forward_passes = 0
        self.backward_passes = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``x (N, ...)`` -> ``model(x)``, counting ``N`` forward and, once a gradient reaches the
        output, ``N`` backward passes."""
        out = self.model(x, *args, **kwargs)
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self.forward_passes += n
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._backward_hook(n))
        return out

    def _backward_hook(self, n: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.backward_passes += n

        return hook

    def take(self) -> tuple[int, int]:
        """``(forward, backward)`` passes counted since the last ``take``; resets both."""
        out = (self.forward_passes, self.backward_passes)
        self.forward_passes = self.backward_passes = 0
        return out


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers that differ by at most one and sum to ``total`` (the larger first):
    how one minimal-norm run's passes are spread over the eps rows it serves."""
    q, r = divmod(int(total), parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


# ---------------------------------------------------------------------------------- model cost
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


def _batch(sample_shape: Sequence[int], batch_size: int, device: torch.device | str) -> torch.Tensor:
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
    x = _batch(sample_shape, batch_size, dev)
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
    x = _batch(sample_shape, batch_size, device)
    with eval_mode(model), torch.no_grad():
        model(x)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del x
    return int(peak - before) + weights_bytes(model)


# ----------------------------------------------------------------------------- CPU memory probes
#: The probe server. It imports torch once, then for each job (a JSON line on stdin: a TorchScript file
#: and an input shape) forks a child that measures one model and exits, and writes the child's JSON
#: line to stdout. A forked child is as fresh as a new process for what is measured (nothing of another
#: model was ever allocated in it) without paying torch's import (seconds) per model, and the server
#: lives until it has been idle for ``SERVER_IDLE_S`` (or its parent exits), so a test session's audits
#: pay the import once.
#: Each child first saves, loads and runs a trivial traced module, so the TorchScript runtime's one-off
#: allocations and code pages fall into the baseline, not into the model's figure; then it resets its
#: peak to its current size and reports how far loading the model plus one no_grad forward raise it.
#: The peak is the process's own (Linux VmHWM): ru_maxrss is no good for a spawned process there,
#: since it starts at the spawning process's size and would read 0 for any model smaller than the
#: audit process. Elsewhere ru_maxrss (its only peak), relative to the same warm baseline.
_SERVER = r"""
import io, json, os, resource, sys
import torch

def hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

def measure(job):
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(torch.nn.Linear(1, 1), torch.zeros(1, 1)), buf)
    buf.seek(0)
    with torch.no_grad():
        torch.jit.load(buf)(torch.zeros(1, 1))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak := current size (Linux >= 4.0)
    except OSError:
        pass
    base = hwm()
    model = torch.jit.load(job["path"], map_location="cpu")
    with torch.no_grad():
        model(torch.rand(job["shape"]))
    return {"bytes": hwm() - base, "baseline_bytes": base}

import select
while True:
    # idle too long: exit, and free the memory torch's import holds; the next audit starts a new one
    if not select.select([sys.stdin], [], [], float(sys.argv[1]))[0]:
        break
    line = sys.stdin.readline()
    if not line:
        break
    job = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            doc = measure(job)
        except BaseException as exc:
            doc = {"error": type(exc).__name__ + ": " + " ".join(str(exc).split())[:300]}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(doc))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        text = json.dumps({"error": "the probe process died (wait status %d)" % status})
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
"""


class _Server:
    """The one probe server of this process, started on first use (see :data:`_SERVER`)."""

    lock = threading.Lock()
    proc: subprocess.Popen | None = None

    @classmethod
    def measure(cls, path: str, shape: list[int]) -> dict[str, Any]:
        """One job; the caller holds :attr:`lock`."""
        started = cls.proc is None or cls.proc.poll() is not None
        result = cls._measure(path, shape)
        if result is None and not started and cls.proc is not None:
            # the server had just timed out idle (stop() would have cleared cls.proc): once more, anew
            result = cls._measure(path, shape)
        if result is None:
            return _failed(f"the memory probe server ended (exit status {cls.proc.poll() if cls.proc else None})")
        return result

    @classmethod
    def _measure(cls, path: str, shape: list[int]) -> dict[str, Any] | None:
        """One job on the running server (started if needed); ``None`` when the server ended."""
        proc = cls.proc
        if proc is None or proc.poll() is not None:
            # one core per probe: a forward at one batch does not need more, and the audit needs the rest
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            # a session of its own: Ctrl-C in the terminal is the audit's to handle, and stop() can end
            # the server together with a probe child it forked
            proc = cls.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(SERVER_IDLE_S)],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                                               start_new_session=True)
        try:
            proc.stdin.write(json.dumps({"path": path, "shape": shape}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (OSError, ValueError):  # killed by stop(), or died
            line = ""
        if not line:
            proc.wait()
            return None
        doc = json.loads(line)
        if doc.get("error"):
            return _failed(f"the memory probe failed: {doc['error']}")
        return {"bytes": max(0, int(doc["bytes"])), "baseline_bytes": int(doc["baseline_bytes"]), "error": None}

    @classmethod
    def stop(cls) -> None:
        """Kill the server and the probe it is running (a probe overran its time, or the audit was
        interrupted); the next audit starts a new server."""
        proc, cls.proc = cls.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its group: the server and its probe child
            except (OSError, AttributeError):
                proc.kill()
            proc.wait()

    @classmethod
    def shutdown(cls) -> None:
        """At exit: end of input stops the server's loop."""
        proc, cls.proc = cls.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()


atexit.register(_Server.shutdown)


class MemoryProbe:
    """Peak CPU memory of each model at one batch size, each measured in a process of its own.

    Built when the audit starts: each model is traced (``torch.jit.trace``) to a temporary file here, in
    the caller's thread, then a background thread hands the files to the probe server (see
    :data:`_SERVER`) one by one while the audit runs. :meth:`collect` waits for them at the end. A model
    that cannot be traced, or a probe that fails, gets ``bytes: None`` with the reason, never a failed
    audit.

    Args:
        models: ``(name, module)`` pairs; a module maps ``(N, *sample_shape)`` to logits.
        sample_shape: ``(C, H, W)`` of one input.
        batch_size: the batch the figure is for.
    """

    def __init__(self, models: Sequence[tuple[str, nn.Module]], sample_shape: Sequence[int], batch_size: int) -> None:
        self.batch_size = int(batch_size)
        self._names = [name for name, _ in models]
        self._results: dict[str, dict[str, Any]] = {}
        self._dir = tempfile.mkdtemp(prefix="robustaudit-memory-")
        self._cancelled = threading.Event()
        shape = [self.batch_size, *[int(s) for s in sample_shape]]
        jobs: list[tuple[str, str]] = []
        if not hasattr(os, "fork"):
            for name in self._names:
                self._results[name] = _failed("not measured: the CPU memory probe needs os.fork (POSIX)")
        else:
            for i, (name, module) in enumerate(models):
                path = os.path.join(self._dir, f"model{i}.pt")
                try:
                    _trace(module, shape, path)
                except Exception as exc:  # noqa: BLE001 - any failure of tracing is reported, not raised
                    self._results[name] = _failed(f"cannot trace the model for the memory probe: "
                                                  f"{type(exc).__name__}: {_line(str(exc))}")
                else:
                    jobs.append((name, path))
        self._thread = threading.Thread(target=self._work, args=(jobs, shape), daemon=True,
                                        name="robustaudit-memory-probe")
        self._thread.start()

    def _work(self, jobs: list[tuple[str, str]], shape: list[int]) -> None:
        for name, path in jobs:
            with _Server.lock:
                if self._cancelled.is_set():
                    return
                result = _Server.measure(path, shape)
            if not self._cancelled.is_set():
                self._results[name] = result

    def collect(self, timeout: float = PROBE_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Wait (at most ``timeout`` seconds) for the probes; ``{model name: {"bytes", "baseline_bytes",
        "error"}}`` in the order of the models. Removes the temporary files."""
        self._thread.join(timeout)
        late = _failed(f"the memory probe did not finish within {timeout:.0f} s")
        out = {name: self._results.get(name, late) for name in self._names}
        self.close()
        return out

    def close(self) -> None:
        """Stop waiting: a probe still running is killed with its server; temporary files are removed.
        Safe to call twice."""
        self._cancelled.set()
        if self._thread.is_alive():
            _Server.stop()
            self._thread.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)


def _trace(module: nn.Module, shape: list[int], path: str) -> None:
    """Trace ``module`` on the CPU at input ``shape`` into a TorchScript file (the module is put back
    where it was)."""
    with on_device(module, "cpu"), eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        # torch.jit.trace is deprecated in favour of torch.export, and warns about any Python
        # value it bakes in; neither matters for a one-shot memory measurement at a fixed shape
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, _batch(shape[1:], shape[0], "cpu"), check_trace=False)
        traced.save(path)


def _failed(reason: str) -> dict[str, Any]:
    return {"bytes": None, "baseline_bytes": None, "error": reason}


def _line(text: str) -> str:
    return " ".join(text.split())[:300]


# --------------------------------------------------------------------------------- one model
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
            errors["flops"] = f"{type(exc).__name__}: {_line(str(exc))}"
        try:
            latency = measure_latency(model, sample_shape, batch_size, device)
        except Exception as exc:  # noqa: BLE001
            latency = {"median_seconds_per_batch": None, "batch_size": int(batch_size)}
            errors["latency"] = f"{type(exc).__name__}: {_line(str(exc))}"
        cost["latency"] = {**latency, "device": _device_label(device)}
        peak: dict[str, Any] = {"bytes": None, "batch_size": int(batch_size), "weights_bytes": weights_bytes(model)}
        if device.type == "cuda":
            try:
                peak.update(bytes=cuda_peak_memory(model, sample_shape, batch_size, device),
                            method="cuda: max_memory_allocated after reset_peak_memory_stats, one no_grad forward, "
                                   "plus the weights")
            except Exception as exc:  # noqa: BLE001
                errors["peak_memory"] = f"{type(exc).__name__}: {_line(str(exc))}"
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
