"""Peak CPU memory of each model, each measured in a process of its own (:class:`MemoryProbe`), so one
model's figure is never another's high-water mark (docs/cost.md). Re-exported by
:mod:`robustaudit.evaluate.cost`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.modes import eval_mode, on_device
from robustaudit.evaluate.measure import seeded_batch

#: Seconds the CPU memory probes may still take once the audit is done.
PROBE_TIMEOUT_S = 300.0
#: Seconds the probe server waits for the next job before it exits (a test session's audits reuse it).
SERVER_IDLE_S = 60.0

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
            _close_pipes(proc)  # a server that ended idle: its pipes, before a new one
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
            _close_pipes(proc)
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
        _close_pipes(proc)

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
        _close_pipes(proc)


def _close_pipes(proc: subprocess.Popen | None) -> None:
    """Close a finished server's pipes (else Python warns of unclosed files at exit)."""
    for pipe in (proc.stdin, proc.stdout) if proc is not None else ():
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


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
                                                  f"{type(exc).__name__}: {one_line(str(exc))}")
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
        traced = torch.jit.trace(module, seeded_batch(shape[1:], shape[0], "cpu"), check_trace=False)
        traced.save(path)


def _failed(reason: str) -> dict[str, Any]:
    return {"bytes": None, "baseline_bytes": None, "error": reason}


def one_line(text: str) -> str:
    """``text`` on one line, at most 300 characters (an error message inside a report field)."""
    return " ".join(text.split())[:300]
