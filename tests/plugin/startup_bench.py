"""pytest start-up with and without the robustaudit plugin (not a test: run it by hand).

What it measures: wall time of ``python -m pytest --collect-only -q -p no:cacheprovider test_empty.py``
in a fresh process, on a file holding one trivial test, with the plugin loaded (default, through the
``pytest11`` entry point) and with ``-p no:robustaudit``. Runs alternate A/B so that drift in the
machine's load hits both sides alike; the figures are the medians of wall and CPU time (user + system
of the child, steadier on a shared machine) of each side, and their ratio. Then the
plugin's own import cost from ``python -X importtime`` (cumulative, with pytest already imported),
which is free of the noise of whole-process timings.

Usage::

    python tests/plugin/startup_bench.py [REPETITIONS]   # default 40 per side

Result on the development machine: see BENCHMARKS.md, section "pytest plugin start-up".
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall time and CPU time (user + system of the child) of one pytest process, in seconds.

    CPU time is the steadier figure on a shared machine: waiting for a core does not count in it.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          check=False)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def import_cost_us(repetitions: int = 15, env: dict[str, str] | None = None) -> dict[str, float]:
    """Median cumulative ``-X importtime`` of the plugin module in a process where pytest is already
    imported (as it is when pytest loads its plugins): what the plugin itself adds, in microseconds."""
    cost: dict[str, list[float]] = {"robustaudit": [], "robustaudit.pytest_plugin": []}
    for _ in range(repetitions):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest, robustaudit.pytest_plugin"],
                              capture_output=True, text=True, check=True, env=env)
        for line in proc.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] in cost:
                cost[parts[2]].append(float(parts[1]))
    return {k: statistics.median(v) for k, v in cost.items()}


def environments(cache_dir: str) -> dict[str, dict[str, str]]:
    """Bytecode as this environment has it, and with a bytecode cache (what most installs have),
    kept in a temporary prefix so that nothing is written into the source tree or site-packages."""
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = cache_dir
    as_is = "no bytecode cache" if sys.dont_write_bytecode else "bytecode cache"
    return {f"as configured ({as_is})": dict(os.environ), "bytecode cache": cached}


def main(repetitions: int = 40) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
        Path(tmp, "test_empty.py").write_text("def test_nothing():\n    pass\n")
        Path(tmp, "pytest.ini").write_text("[pytest]\n")  # keeps the repository's config out
        base = ["--collect-only", "-q", "-p", "no:cacheprovider", "test_empty.py"]
        variants = {"with plugin": base, "-p no:robustaudit": ["-p", "no:robustaudit", *base]}
        for label, env in environments(cache).items():
            if label.startswith("as configured") and not sys.dont_write_bytecode:
                continue  # the same as the second
            for args in variants.values():  # warm the file cache (and the bytecode cache) once
                _run(args, tmp, env)
            wall: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(repetitions):
                for name, args in variants.items():
                    w, c = _run(args, tmp, env)
                    wall[name].append(w)
                    cpu[name].append(c)
            print(f"-- {label}")
            for what, times in (("wall", wall), ("cpu", cpu)):
                for name, values in times.items():
                    q = statistics.quantiles(values, n=4)
                    print(f"{what:>4} {name:>20}: median {1000 * statistics.median(values):7.1f} ms  "
                          f"(IQR {1000 * q[0]:.1f}-{1000 * q[2]:.1f} ms, n={len(values)})")
                ratio = statistics.median(times["with plugin"]) / statistics.median(times["-p no:robustaudit"])
                print(f"{what:>4} {'ratio':>20}: {ratio:.3f} (with / without)")
            for name, us in import_cost_us(env=env).items():
                print(f"{'':>20}  import {name} (cumulative, pytest already imported): median {us / 1000:.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
