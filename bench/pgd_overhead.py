"""pgd_overhead.py: what our PGD costs beyond its forward/backward passes, and what early stopping saves.

Part A (overhead where compute dominates). torchvision ResNet-18 (random init, eval mode, 10 classes)
on a seeded batch of random 32x32 RGB images, labels = the model's own clean predictions (every sample
is attacked). Linf eps = 8/255, 10 steps of 2/255, random start, 1 restart, no early stopping. Timed:
a bare loop of 10 x (forward, CE, autograd.grad w.r.t. the input, sign step, clamp) -- the floor any
PGD pays --, robustaudit's PGD, torchattacks.PGD and foolbox LinfPGD. Median of --repeats runs after
one warm-up, the contenders interleaved round-robin so background load hits all of them alike.

Part B (early stopping + survivor-only eps sweep). digits-cnn and digits-cnn-pgdat on the full digits
test split (359 samples), PGD(steps=50), eps grid 0.05, 0.1, 0.2, 0.3: the runner (early stop, larger
eps attack only survivors of the smaller) vs the naive way (each eps on all clean-correct samples,
early_stop=False). Counts samples through forward (all, and those with an input gradient) and wall time.

Machine: AMD EPYC, 2 threads (a shared 2-core VM, other jobs running), CPU only; torch 2.15.0,
torchvision 0.29.2, foolbox 3.3.4, torchattacks 3.5.1. Command: python bench/pgd_overhead.py --batch 32 --repeats 15

Result, Part A (batch 32, median of 15 rounds, ratios = median of per-round ratios):
    bare loop 0.426 s | bare + scoring the last iterate 0.442 s (1.030x bare) | ours 0.447 s (1.046x bare,
    1.010x bare + scoring) | torchattacks 0.428 s (0.971x ours) | foolbox 0.917 s (2.03x ours).
    Ours is 4-5% over the bare loop (single runs 1.00-1.11x on this shared VM); all of the gap is the
    one no-grad forward that scores the last iterate (4.4% of a run), see BENCHMARKS.md. Robust
    accuracy 0% for every contender (a random-init net breaks easily at 8/255).
Result, Part B (naive / ours): digits-cnn 2.08x gradient passes, 2.02x seconds; digits-cnn-pgdat
    1.31x passes, 1.30x seconds; robust counts identical at every eps.

Run ``python bench/pgd_overhead.py --quick`` for a smoke test (< 1 minute on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import foolbox
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks
import torchvision

from _machine import machine  # bench/ is on sys.path when a benchmark runs as a script
from robustaudit.attacks.gradient import PGD
from robustaudit.core.threat import ThreatModel
from robustaudit.data.digits import digits_split
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, run
from robustaudit.models.catalog import create_model

EPS_A = 8 / 255
ALPHA_A = 2 / 255
STEPS_A = 10
EPS_GRID_B = (0.05, 0.1, 0.2, 0.3)
STEPS_B = 50
BATCH_B = 256  # the runner's default batch size; the naive loop uses the same
SEED = 0


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds of every timed run of one contender, and what its last run returned."""

    seconds: list[float]
    result: Any

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the measurement was."""
        return (max(self.seconds) - min(self.seconds)) / self.median

    def ratio(self, other: Timing) -> float:
        """Median over rounds of ``self / other``: runs of one round share the machine's load, so the
        per-round ratio cancels slow drifts that a ratio of two medians would keep."""
        return statistics.median(a / b for a, b in zip(self.seconds, other.seconds))


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync the clock stops before the work is done
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fns: Mapping[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, Timing]:
    """Time each function ``repeats`` times after one untimed warm-up call each.

    The contenders run round-robin (a, b, c, a, b, c, ...) rather than one block each: on a shared
    machine the background load drifts, and interleaving spreads that drift over all of them alike,
    which is what the ratios need.
    """
    out = {name: Timing([], None) for name in fns}
    for name, fn in fns.items():  # warm-up: allocator, cudnn autotuning, lazy imports, caches
        out[name].result = fn()
        _sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            out[name].result = fn()
            _sync(device)
            out[name].seconds.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------- part A
def bare_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, *, score_last: bool = False
) -> torch.Tensor:
    """The floor: Linf PGD with nothing but its arithmetic. ``(N, C, H, W) -> (N, C, H, W)``.

    A random start like the others (one uniform draw, negligible), then ``steps`` x (forward, mean CE,
    gradient w.r.t. the input only, sign step, clamp to the eps box and to [0, 1]). No bookkeeping: no
    per-sample best iterate. ``score_last`` adds the one no-grad forward that any PGD returning its best
    iterate (ours) or its success flags (foolbox) must spend on the last iterate, which no step scored.
    """
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y)
        (grad,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + alpha * grad.sign()
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0, 1)
    if score_last:
        with torch.no_grad():
            model(xa)
    return xa.detach()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def part_a(device: torch.device, batch: int, repeats: int) -> None:
    torch.manual_seed(SEED)  # the random init and the images are seeded: every run sees the same batch
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(device)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(SEED)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels = clean predictions: all "correct", none skipped by anyone

    ours = PGD(steps=STEPS_A, step_size=ALPHA_A, early_stop=False)
    threat = ThreatModel("linf", EPS_A)
    ids = torch.arange(batch)
    ta = torchattacks.PGD(model, eps=EPS_A, alpha=ALPHA_A, steps=STEPS_A, random_start=True)
    fb_model = foolbox.PyTorchModel(model, bounds=(0, 1), device=device)
    fb = foolbox.attacks.LinfPGD(abs_stepsize=ALPHA_A, steps=STEPS_A, random_start=True)

    contenders: dict[str, Callable[[], torch.Tensor]] = {
        "bare loop": lambda: bare_pgd(model, x, y, EPS_A, ALPHA_A, STEPS_A),
        "bare + scoring": lambda: bare_pgd(model, x, y, EPS_A, ALPHA_A, STEPS_A, score_last=True),
        "robustaudit PGD": lambda: ours(model, x, y, threat, ids=ids, seed=SEED),
        "torchattacks PGD": lambda: ta(x, y),
        # foolbox also returns success flags (one extra no-grad forward, like our scoring), and its
        # gradients come from eagerpy's loss.backward(): weight gradients too, accumulated into .grad
        "foolbox LinfPGD": lambda: fb(fb_model, x, y, epsilons=EPS_A)[1],  # the clipped advs
    }
    t = timeit(contenders, repeats, device)
    bare, mine = t["bare loop"], t["robustaudit PGD"]
    print(f"\nPart A: ResNet-18 (random init), batch {batch} of 32x32 RGB, Linf eps 8/255, "
          f"{STEPS_A} steps of 2/255, random start, no early stop; median of {repeats} rounds; "
          "ratios = median of per-round ratios; spread = (max-min)/median")
    print(f"{'contender':<18} {'seconds':>8} {'spread':>7} {'/ bare':>7} {'/ ours':>7} {'robust acc':>11}")
    for name, tm in t.items():
        print(f"{name:<18} {tm.median:8.3f} {tm.spread:7.1%} {tm.ratio(bare):7.3f} {tm.ratio(mine):7.3f} "
              f"{accuracy(model, tm.result, y):11.1%}")
    print(f"ours / bare = {mine.ratio(bare):.3f}   ours / (bare + scoring) = {mine.ratio(t['bare + scoring']):.3f}   "
          f"torchattacks / ours = {t['torchattacks PGD'].ratio(mine):.3f}   "
          f"foolbox / ours = {t['foolbox LinfPGD'].ratio(mine):.3f}")


# ---------------------------------------------------------------------------------------------- part B
class Counting(nn.Module):
    """Forwards to ``inner`` and counts the samples it sees: all, and those that will be backpropagated
    to the input (grad enabled and the input requires grad: one forward + backward each)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forward_samples = 0
        self.grad_samples = 0

    def reset(self) -> None:
        self.forward_samples = self.grad_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_samples += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_samples += x.shape[0]
        return self.inner(x)


@dataclass
class SweepResult:
    """Robust sample counts per eps and the passes it took."""

    robust: dict[float, int]
    forward_samples: int
    grad_samples: int


def survivor_sweep(model: Counting, ids: list[int], device: torch.device) -> SweepResult:
    """robustaudit's way: the runner, early stopping on, larger eps attack only the survivors."""
    model.reset()
    res = run([ModelEntry("m", model)], digits_split("test"), [AttackEntry("pgd", PGD(steps=STEPS_B))],
              EPS_GRID_B, ids=ids, batch_size=BATCH_B, device=device, seed=SEED)
    rows = res.records[res.records["attack"] == "pgd"]
    robust = {float(e): int(r) for e, r in zip(rows["eps"], rows["n_robust"])}
    return SweepResult(robust, model.forward_samples, model.grad_samples)


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def naive_sweep(model: Counting, ids: list[int], device: torch.device) -> SweepResult:
    """The naive way: every eps on all clean-correct samples, no early stopping. Same batches, seed
    and sample ids as the runner, so each sample gets the same random start in both."""
    model.reset()
    data = digits_split("test")
    attack = PGD(steps=STEPS_B, early_stop=False)
    model.to(device).eval()
    correct: list[int] = []
    for b in _chunks(ids, BATCH_B):  # the clean pass, as the runner does it: attack only what is right
        x, y = data.load(b)
        with torch.no_grad():
            ok = (model(x.to(device)).argmax(1).cpu() == y).tolist()
        correct.extend(i for i, k in zip(b, ok) if k)
    robust: dict[float, int] = {}
    for eps in EPS_GRID_B:
        robust[eps] = 0
        for b in _chunks(correct, BATCH_B):
            x, y = (t.to(device) for t in data.load(b))
            adv = attack(model, x, y, ThreatModel("linf", eps), ids=torch.tensor(b), seed=SEED)
            with torch.no_grad():
                robust[eps] += int((model(adv).argmax(1) == y).sum())
    return SweepResult(robust, model.forward_samples, model.grad_samples)


def part_b(device: torch.device, ids: list[int], repeats: int) -> None:
    print(f"\nPart B: digits test split ({len(ids)} samples), PGD({STEPS_B} steps), eps {list(EPS_GRID_B)}; "
          f"median of {repeats} rounds; grad passes / all fwd = samples through forward with an input "
          "gradient / in all")
    print(f"{'model':<17} {'way':<16} {'grad passes':>11} {'all fwd':>8} {'seconds':>8} {'spread':>7}   "
          + " ".join(f"{'eps ' + str(e):>8}" for e in EPS_GRID_B))
    for name in ("digits-cnn", "digits-cnn-pgdat"):
        model = Counting(create_model(name))
        t = timeit({"ours (runner)": lambda m=model: survivor_sweep(m, ids, device),
                    "naive": lambda m=model: naive_sweep(m, ids, device)}, repeats, device)
        for way, tm in t.items():
            r: SweepResult = tm.result
            print(f"{name:<17} {way:<16} {r.grad_samples:11d} {r.forward_samples:8d} {tm.median:8.2f} "
                  f"{tm.spread:7.1%}   " + " ".join(f"{r.robust[e]:8d}" for e in EPS_GRID_B))
        ours, naive = t["ours (runner)"], t["naive"]
        diff = max(abs(ours.result.robust[e] - naive.result.robust[e]) for e in EPS_GRID_B)
        print(f"{name:<17} naive / ours: grad passes {naive.result.grad_samples / ours.result.grad_samples:.2f}x, "
              f"all fwd {naive.result.forward_samples / ours.result.forward_samples:.2f}x, "
              f"seconds {naive.ratio(ours):.2f}x; robust counts differ by at most {diff} sample(s)")


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: batch 8, 1 repeat, 64 digits")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=64, help="Part A batch size (32 is plenty on a CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median reported)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 8, 1
    device = torch.device(args.device)
    # torch's default thread count is kept (all cores): that is how users run, and all contenders share it
    print(f"pgd_overhead: {machine(device, foolbox, torchattacks)}; device {device}")
    part_a(device, args.batch, args.repeats)
    n = len(digits_split("test"))
    part_b(device, list(range(64 if args.quick else n)), args.repeats)


if __name__ == "__main__":
    main()
