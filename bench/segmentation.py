"""segmentation.py: SegPGD vs pixel-wise PGD (and CosPGD) at equal steps, and DAG's target pixels and norms,
on the shipped unet-tiny and the digit-scenes test split.

What: for each step budget and eps, one independent run per attack over the same images (one torch
thread); mIoU and pixel accuracy from the dataset-level confusion matrix, the per-image bootstrap 95%
interval of mIoU; DAG (unbounded, target 0 = hide every digit, the paper's 0.5/255 step, 200 iterations):
the share of the pixels to change (labelled other than the target) that reach it, and the median /
quartile L2 and Linf norms per image.

Where and result: see BENCHMARKS.md ("Segmentation"), with the machine.
Command: ``python bench/segmentation.py [--n 200] [--steps 5,10,20] [--eps 0.01,0.02,0.04]``
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from robustaudit.attacks.registry import from_spec
from robustaudit.data.registry import open_dataset
from robustaudit.evaluate.runner import AttackEntry, ModelEntry
from robustaudit.evaluate.runner import run as run_segmentation

from robustaudit.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", default="5,10,20")
    parser.add_argument("--eps", default="0.01,0.02,0.04")
    parser.add_argument("--dag", action="store_true", help="also run DAG")
    parser.add_argument("--weights", default=None, help="unet-tiny weights (default: the shipped ones)")
    parser.add_argument("--attacks", default="pgd,segpgd,cospgd")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("unet-tiny", weights=args.weights).module
    data = open_dataset("digit-scenes")
    ids = list(range(min(args.n, len(data))))
    grid = [float(e) for e in args.eps.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, n={len(ids)}")
    for steps in (int(s) for s in args.steps.split(",") if s):
        specs = [f"{name}:steps={steps}" for name in args.attacks.split(",") if name]
        t0 = time.perf_counter()
        result = run_segmentation([ModelEntry("unet-tiny", model)], data,
                                  [AttackEntry(s, from_spec(s, task="segmentation")) for s in specs], grid, ids=ids,
                                  batch_size=32)
        r = result.records
        print(f"\nsteps {steps} ({time.perf_counter() - t0:.0f} s); clean mIoU {r['clean_miou'].iloc[0]:.4f}, "
              f"pixel acc {r['clean_pixel_accuracy'].iloc[0]:.4f}")
        for _, row in r.iterrows():
            print(f"  {row['attack']:<16} eps {row['eps']:<5g} mIoU {row['miou']:.4f} "
                  f"[{row['miou_ci_low']:.4f}, {row['miou_ci_high']:.4f}]  pixel acc {row['pixel_accuracy']:.4f}  "
                  f"{row['seconds']:.0f} s")
    if args.dag:
        t0 = time.perf_counter()
        result = run_segmentation([ModelEntry("unet-tiny", model)], data, [AttackEntry("dag", from_spec(
            "dag", task="segmentation"))], grid[:1], ids=ids, batch_size=32)
        (u,) = result.unbounded
        print(f"\nDAG ({time.perf_counter() - t0:.0f} s): pixels to change reached {u['targeted_success']:.4f}; mIoU "
              f"{u['clean_miou']:.4f} -> {u['miou']:.4f}; L2 median {u['median_l2']:.3f} [{u['q25_l2']:.3f}, "
              f"{u['q75_l2']:.3f}], Linf median {u['median_linf']:.4f} [{u['q25_linf']:.4f}, {u['q75_linf']:.4f}]")


if __name__ == "__main__":
    main()
