"""gpu.py: PGD-10 throughput on a CIFAR-sized ResNet-18 at fp32 (TF32 off / on) and bf16, against the bare
forward+backward loop and the peers; and the multi-process scaling of an audit on CPU.

Part A (throughput). torchvision ResNet-18 with a CIFAR stem (3x3 conv, stride 1, no max-pool),
num_classes=10, random weights (seeded), eval mode, on a seeded batch of random 32x32 RGB images whose
labels are the model's own clean predictions (every sample is attacked). Linf eps 8/255, 10 steps of
2/255, random start, no early stopping. Contenders, each at its precision: the bare loop (10 x forward,
CE, autograd.grad w.r.t. the input, sign step, clamp; plus the one no-grad forward that scores the last
iterate, which any PGD returning its best iterate pays), robustaudit's PGD on the model as the runner
hands it to attacks (AutocastModel for bf16), torchattacks.PGD and foolbox LinfPGD (fp32, TF32 off: they
have no precision option), and robustaudit's runner end to end (clean pass + attack + fp32 scoring of the
adversarial points). On CUDA the model and inputs are channels_last for every contender (the runner's
default there). Images/s = batch / median seconds over --repeats interleaved rounds after a warm-up.
Targets (issue 9): ours >= 95% of the bare loop at the same precision; bf16 >= 1.5x our fp32 (TF32 off).

Part B (multi-process scaling, CPU). ``robustaudit audit`` of digits-cnn under pgd:steps=20 at eps
0.1,0.2 on the 359 digits test samples, batch 64, --checks off, --defense none: one process vs
``torchrun --nproc-per-node=2`` (gloo), each with one thread. Images/s = samples / audit seconds (from
results.json; interpreter start-up not included) and / wall seconds.

Machine: no GPU was lent while this was written: the GPU figures are not measured yet. Run on a GPU:
``PYTHONPATH=src python bench/gpu.py --device cuda`` (batch 512). CPU smoke test (2026-11-23, AMD EPYC,
shared 2-core VM at load ~10): ``PYTHONPATH=src python bench/gpu.py --device cpu --batch 4 --quick
--repeats 2``.

Result (CPU smoke run, batch 4, noisy): ours / bare 0.96 (fp32), 0.99 (TF32 on: no effect on CPU),
1.09 (bf16); bf16 / fp32 (ours) 1.14 (no fast bf16 on this CPU); torchattacks / ours 0.97, foolbox / ours
0.64; runner end to end / bare 0.74 (fp32), 0.84 (bf16). Part B: 1 process 9.7 images/s, 2 processes
10.1 (no idle core to scale onto). See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from _bare import bare_pgd as floor_pgd
from _machine import machine  # bench/ is on sys.path when a benchmark runs as a script
from robustaudit.attacks.gradient import PGD
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import TensorData
from robustaudit.evaluate.api import attack_entries_from
from robustaudit.evaluate.fastpath import AutocastModel, FastPath, tf32_mode
from robustaudit.evaluate.runner import ModelEntry, run

EPS, ALPHA, STEPS, SEED = 8 / 255, 2 / 255, 10, 0


def cifar_resnet18() -> nn.Module:
    """ResNet-18 for 32x32 inputs: a 3x3 stride-1 stem and no max-pool (the usual CIFAR variant)."""
    torch.manual_seed(SEED)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model.eval()


def bare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The floor (:func:`_bare.bare_pgd`): PGD-10 at ``dtype`` autocast (None: fp32). ``(N, 3, 32, 32)``."""
    def forward(inp: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            return model(inp)
        with torch.autocast(x.device.type, dtype=dtype):
            return model(inp).float()

    return floor_pgd(forward, x, y, EPS, ALPHA, STEPS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of ``repeats`` interleaved rounds (a, b, c, a, b, c...) after one warm-up call each, so that
    a shared machine's drifting load hits every contender alike."""
    for fn in fns.values():
        fn()
        _sync(device)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out[name].append(time.perf_counter() - t0)
    return out


def part_a(device: torch.device, batch: int, repeats: int, peers: bool) -> None:
    model = cifar_resnet18().to(device)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(SEED)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat, ids = ThreatModel("linf", EPS), torch.arange(batch)
    ours = PGD(steps=STEPS, step_size=ALPHA, early_stop=False)
    bf16 = AutocastModel(model, "bf16", device.type)
    data = TensorData(x.cpu().contiguous(), y.cpu(), name="random-cifar")
    column = attack_entries_from([f"pgd:steps={STEPS},step_size={ALPHA},early_stop=False"])

    def runner(precision: str) -> Callable[[], object]:
        fast = FastPath(precision=precision)
        return lambda: run([ModelEntry("r18", model)], data, column, [EPS], batch_size=batch, device=device,
                           seed=SEED, fast=fast)

    groups: list[tuple[str, bool, dict[str, Callable[[], object]]]] = [
        ("fp32, TF32 off", False, {"bare": lambda: bare_pgd(model, x, y, None),
                                   "ours": lambda: ours(model, x, y, threat, ids=ids, seed=SEED),
                                   "ours, runner": runner("fp32")}),
        ("fp32, TF32 on", True, {"bare": lambda: bare_pgd(model, x, y, None),
                                 "ours": lambda: ours(model, x, y, threat, ids=ids, seed=SEED)}),
        ("bf16 autocast", False, {"bare": lambda: bare_pgd(model, x, y, torch.bfloat16),
                                  "ours": lambda: ours(bf16, x, y, threat, ids=ids, seed=SEED),
                                  "ours, runner": runner("bf16")}),
    ]
    if peers:
        import foolbox
        import torchattacks

        ta = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        fb_model = foolbox.PyTorchModel(model, bounds=(0, 1), device=device)
        fb = foolbox.attacks.LinfPGD(abs_stepsize=ALPHA, steps=STEPS, random_start=True)
        groups[0][2].update({"torchattacks": lambda: ta(x, y), "foolbox": lambda: fb(fb_model, x, y, epsilons=EPS)})
    print(f"\nPart A: CIFAR ResNet-18 (random init), batch {batch}, PGD-{STEPS} Linf 8/255, no early stop, "
          f"{device}; median of {repeats} rounds")
    print(f"{'precision':<16} {'contender':<14} {'seconds':>8} {'images/s':>10} {'/ bare':>7}")
    rate: dict[tuple[str, str], float] = {}
    for label, tf32, fns in groups:
        with tf32_mode(tf32):
            times = timeit(fns, repeats, device)
        for name, secs in times.items():
            med = statistics.median(secs)
            rate[(label, name)] = batch / med
            ratio = rate[(label, name)] / rate[(label, "bare")]
            print(f"{label:<16} {name:<14} {med:8.3f} {rate[(label, name)]:10.4g} {ratio:7.3f}")
    fp32, bf = rate[("fp32, TF32 off", "ours")], rate[("bf16 autocast", "ours")]
    print(f"ours / bare: fp32 {fp32 / rate[('fp32, TF32 off', 'bare')]:.3f}, TF32 "
          f"{rate[('fp32, TF32 on', 'ours')] / rate[('fp32, TF32 on', 'bare')]:.3f}, bf16 "
          f"{bf / rate[('bf16 autocast', 'bare')]:.3f} (target >= 0.95); bf16 / fp32 (ours) {bf / fp32:.2f} "
          f"(target >= 1.5); TF32 on / off (ours) {rate[('fp32, TF32 on', 'ours')] / fp32:.2f}")
    if peers:
        print(f"torchattacks / ours {rate[('fp32, TF32 off', 'torchattacks')] / fp32:.3f}; "
              f"foolbox / ours {rate[('fp32, TF32 off', 'foolbox')] / fp32:.3f} (fp32, TF32 off)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_b(n: int, steps: int) -> None:
    args = ["audit", "--model", "digits-cnn", "--attack", f"pgd:steps={steps}", "--eps", "0.1,0.2", "--n", str(n),
            "--batch-size", "64", "--device", "cpu", "--checks", "off", "--defense", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    print(f"\nPart B: robustaudit audit, digits-cnn, pgd:steps={steps}, eps 0.1,0.2, n={n}, CPU, 1 thread per process")
    print(f"{'processes':<10} {'audit s':>8} {'wall s':>8} {'images/s (audit)':>17} {'images/s (wall)':>16}")
    base = None
    for world in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
        launcher = [sys.executable, "-m", "robustaudit"] if world == 1 else [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}", f"--master-port={_free_port()}",
            "--master-addr=127.0.0.1", "-m", "robustaudit", "--"]
        t0 = time.perf_counter()
        subprocess.run([*launcher, *args, "--out", str(out)], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        audit = json.loads((out / "results.json").read_text())["provenance"]["seconds"]
        shutil.rmtree(out, ignore_errors=True)
        base = base or n / audit
        print(f"{world:<10} {audit:8.1f} {wall:8.1f} {n / audit:17.1f} {n / wall:16.1f}"
              + (f"   speed-up {n / audit / base:.2f}x" if world > 1 else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cpu")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10, 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="3 rounds, Part B on 120 samples with 10 steps")
    p.add_argument("--no-peers", action="store_true", help="skip torchattacks and foolbox")
    p.add_argument("--no-scaling", action="store_true", help="skip Part B (multi-process on CPU)")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    repeats = args.repeats or (3 if args.quick else 10)
    print(f"gpu.py on {machine(device)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    part_a(device, args.batch, repeats, peers=not args.no_peers)
    if not args.no_scaling:
        part_b(120 if args.quick else 359, 10 if args.quick else 20)


if __name__ == "__main__":
    main()
