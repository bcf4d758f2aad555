"""ensemble.py: robust accuracy and wall time of AutoAttack-style ensembles, side by side.

What: on the same model and the same clean-correct samples, in one process: torchattacks' AutoAttack
(standard: APGD-CE, APGD-T, FAB-T, Square 5000) as shipped (its APGD/FAB default to 10 steps) and
with the reference budget of 100 steps; our ``autoattack`` (the same composition, reference budgets);
our ``fast`` ensemble. Per sample: b = points robust for us but broken by torchattacks (we are weaker
there), c = the reverse.

Where and result: see BENCHMARKS.md ("AutoAttack and the fast ensemble"), with the machine.
Command: ``python bench/ensemble.py [--n 359] [--models digits-cnn-pgdat:0.2,digits-cnn:0.1]``
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torchattacks

from robustaudit.attacks.ensemble import AutoAttack, FastEnsemble
from robustaudit.core.threat import ThreatModel
from robustaudit.data.digits import digits_split
from robustaudit.models.catalog import create_model


def _torchattacks_aa(model: torch.nn.Module, eps: float, steps: int | None) -> Callable:
    aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    if steps is not None:
        for sub in aa._autoattack.attacks:
            if hasattr(sub, "steps"):
                sub.steps = steps
    return lambda x, y: aa(x, y)


def _timed(fn: Callable, model, x, y) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    adv = fn(x, y)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        return model(adv).argmax(1) == y, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=359)
    parser.add_argument("--models", default="digits-cnn-pgdat:0.2,digits-cnn:0.1")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {platform.machine()} {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"torchattacks {torchattacks.__version__}")
    data = digits_split("test")
    x_all, y_all = data.load(range(min(args.n, len(data))))
    for item in args.models.split(","):
        name, eps = item.split(":")
        eps = float(eps)
        model = create_model(name)
        with torch.no_grad():
            keep = model(x_all).argmax(1) == y_all
        x, y = x_all[keep], y_all[keep]
        threat = ThreatModel("linf", eps)
        contenders = {
            "torchattacks AA (as shipped, 10 steps)": _torchattacks_aa(model, eps, None),
            "torchattacks AA (100 steps)": _torchattacks_aa(model, eps, 100),
            "robustaudit autoattack": lambda a, b: AutoAttack()(model, a, b, threat),
            "robustaudit fast": lambda a, b: FastEnsemble()(model, a, b, threat),
        }
        n = len(x_all)
        print(f"\n{name} @ Linf eps={eps}: {n} samples, {len(y)} clean-correct")
        results = {label: _timed(fn, model, x, y) for label, fn in contenders.items()}
        ref_robust, ref_seconds = results["torchattacks AA (100 steps)"]
        print(f"{'attack':42s} {'robust acc':>10s} {'seconds':>9s} {'speed-up':>9s} {'b':>4s} {'c':>4s}")
        for label, (robust, seconds) in results.items():
            b = int((robust & ~ref_robust).sum())
            c = int((ref_robust & ~robust).sum())
            print(f"{label:42s} {robust.sum().item() / n:10.4f} {seconds:9.1f} {ref_seconds / seconds:8.2f}x {b:4d} {c:4d}")
        print("(speed-up against torchattacks AA at 100 steps; b: robust for it but broken by the reference, c: the reverse)")
        ours_aa, _ = results["robustaudit autoattack"]
        fast, _ = results["robustaudit fast"]
        more = int((fast & ~ours_aa).sum())
        print(f"fast vs robustaudit autoattack, same samples: {more} sample(s) left robust by fast but broken by "
              f"autoattack, {int((ours_aa & ~fast).sum())} the reverse -> {'NOT WEAKER' if more == 0 else 'WEAKER'}")


if __name__ == "__main__":
    main()
