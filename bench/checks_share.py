"""checks_share.py: what share of an audit the basic sanity checks cost, on a torchvision ResNet-18 at 64x64.

Issue 17.6: ``--checks basic`` must cost at most 20% of an audit. The case (tests/regression/
checks_share_case.py, shared with the regression test): a ResNet-18 (random trunk, eval mode) whose last
layer is fitted to a seeded ImageFolder of 64x64 RGB PNGs (``--classes`` folders of ``--per-class`` images),
so every sample is clean-correct and attacked. The audit is the default one for a user's model: fgsm, pgd,
pgd:loss=margin at eps 0.05, 0.1, 0.2, 0.3, ``--checks basic`` (32 samples), model cost on unless
``--no-cost`` (no detector, no transfer: one model).

Measured: samples through the model's forward and samples a gradient flowed back through (hooks on the
module, every stage), those inside ``run_checks`` apart; the process's CPU seconds (``time.process_time``)
around the audit and around ``run_checks``; ``provenance.stage_seconds`` (wall, loaded by other jobs).

Machine and result: BENCHMARKS.md, "Basic checks' share of an audit".
Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python bench/checks_share.py`` (about 2 CPU minutes at n=200).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "regression"))

from _machine import machine  # noqa: E402  (bench/ is on sys.path when a benchmark runs as a script)
from checks_share_case import fitted_resnet18, measure, write_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--no-cost", action="store_true", help="turn the model-cost stage off")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine(torch.device("cpu")))
    from robustaudit.data.registry import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "data", args.classes, args.per_class)
        data = open_dataset(f"imagefolder:{root}")
        model = fitted_resnet18(*data.load(list(range(len(data)))), classes=args.classes)
        s = measure(model, root, cost=not args.no_cost)
    print(f"n={s.n}, clean accuracy {s.clean_accuracy:.3f}, model cost {'off' if args.no_cost else 'on'}")
    print(f"passes: audit {s.forward} fwd + {s.backward} bwd; checks {s.checks_forward} fwd + "
          f"{s.checks_backward} bwd -> checks' share {s.passes:.1%}")
    print(f"CPU: audit {s.cpu:.1f} s, checks {s.checks_cpu:.1f} s -> {s.checks_cpu / s.cpu:.1%}")
    print(f"stage seconds (wall): {s.stage_seconds}")
    print(f"verdicts: {s.verdicts}")


if __name__ == "__main__":
    main()
