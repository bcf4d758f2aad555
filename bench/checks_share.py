"""checks_share.py: what share of an audit the basic sanity checks cost on a torchvision ResNet-18 at 64x64.

Issue 17 item 6: ``--checks basic`` must cost at most 20% of an audit. The subject is a torchvision
ResNet-18 (``num_classes=K``, random trunk, eval mode) whose last layer is fitted to a seeded ImageFolder
of 64x64 RGB PNGs (K class folders, per-class colour and stripes plus noise), so nearly every sample is
clean-correct and attacked -- a random model is at chance and would leave the attacks almost nothing to do.
The audit is the default one for a user model: attacks fgsm, pgd, pgd:loss=margin; eps 0.05, 0.1, 0.2,
0.3; ``--checks basic``; model cost on; no detector, no transfer (one model).

Measured: samples through the model's forward and samples a gradient flowed back through (hooks on the
module, every stage), the ones inside ``run_checks`` apart; CPU seconds of the process
(``time.process_time``) around the audit and around ``run_checks``; ``provenance.stage_seconds`` (wall).

Machine and result: see BENCHMARKS.md ("Basic checks' share of an audit").
Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python bench/checks_share.py --per-class 40`` (about 2 CPU minutes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import robustaudit.checks as checks_mod
from _machine import machine  # bench/ is on sys.path when a benchmark runs as a script
from robustaudit import audit


def write_folder(root: Path, classes: int, per_class: int, size: int = 64, seed: int = 0) -> Path:
    """``root/c0..c{K-1}/i.png``: class k is a colour and a stripe frequency plus uniform noise."""
    rng = np.random.RandomState(seed)
    yy = np.arange(size)[:, None]
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        colour = rng.uniform(40, 215, 3)
        stripes = 40 * np.sin(yy * (k + 1) * np.pi / size)[..., None]
        for i in range(per_class):
            img = colour + stripes + rng.uniform(-60, 60, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"c{k}" / f"{i}.png")
    return root


def fitted_resnet18(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int = 0) -> nn.Module:
    """A random-trunk ResNet-18 whose ``fc`` is fitted (logistic regression on the trunk's standardised
    features, L2 penalty 0.01: every training image right with logits of a trained network's size, a
    median top-2 margin of about 6, not the saturated hundreds of an unpenalised fit)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=classes).eval()
    fc, net.fc = net.fc, nn.Identity()
    with torch.no_grad():
        feats = net(x)
    net.fc = fc
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    w = torch.zeros(classes, feats.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    z = (feats - mean) / std
    for _ in range(300):
        opt.zero_grad()
        (nn.functional.cross_entropy(z @ w.T + b, y) + 0.01 * (w**2).sum()).backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into fc
        fc.weight.copy_(w / std)
        fc.bias.copy_(b - (w * mean / std).sum(1))
    return net


class Count:
    """Samples through ``model`` (forward) and samples a gradient flowed back through (backward)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.backward = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        n = int(args[0].shape[0])
        self.forward += n
        if out.requires_grad:
            out.register_hook(lambda g: setattr(self, "backward", self.backward + n))

    @property
    def total(self) -> int:
        return self.forward + self.backward


def measure(model: nn.Module, root: Path, *, n: int | None) -> dict[str, Any]:
    count = Count(model)
    inside = {"passes": 0, "fwd": 0, "bwd": 0, "cpu": 0.0}
    real = checks_mod.run_checks

    def counted(*args: Any, **kwargs: Any) -> Any:
        f, b, c = count.forward, count.backward, time.process_time()
        out = real(*args, **kwargs)
        inside["fwd"] += count.forward - f
        inside["bwd"] += count.backward - b
        inside["cpu"] += time.process_time() - c
        return out

    checks_mod.run_checks = counted  # extras imports it from the module at call time
    try:
        c0 = time.process_time()
        result = audit(model, f"imagefolder:{root}", n=n, checks="basic")
        cpu = time.process_time() - c0
    finally:
        checks_mod.run_checks = real
    rows = result.records[result.records["attack"] != "worst-case"]
    return {"n": int(rows["n"].iloc[0]), "clean": float(rows["clean_accuracy"].iloc[0]),
            "fwd": count.forward, "bwd": count.backward, "checks_fwd": inside["fwd"], "checks_bwd": inside["bwd"],
            "cpu": cpu, "checks_cpu": inside["cpu"], "stage_seconds": result.provenance["stage_seconds"],
            "verdicts": {v["id"]: v["status"] for v in result.checks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--n", type=int, default=None, help="audit n (default: every image)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine(torch.device("cpu")))
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "data", args.classes, args.per_class)
        from robustaudit.data.registry import open_dataset

        data = open_dataset(f"imagefolder:{root}")
        x, y = data.load(list(range(len(data))))
        model = fitted_resnet18(x, y, args.classes)
        m = measure(model, root, n=args.n)
    share_p = (m["checks_fwd"] + m["checks_bwd"]) / (m["fwd"] + m["bwd"])
    print(f"n={m['n']} clean accuracy {m['clean']:.3f}")
    print(f"passes: audit {m['fwd']} fwd + {m['bwd']} bwd; checks {m['checks_fwd']} fwd + {m['checks_bwd']} bwd "
          f"-> checks' share {share_p:.1%}")
    print(f"CPU: audit {m['cpu']:.1f} s, checks {m['checks_cpu']:.1f} s -> {m['checks_cpu'] / m['cpu']:.1%}")
    print(f"stage seconds (wall): {m['stage_seconds']}")
    print(f"verdicts: {m['verdicts']}")


if __name__ == "__main__":
    main()
