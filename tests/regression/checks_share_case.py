"""The case of the basic checks' cost share (issue 17.6): a torchvision ResNet-18 at 64x64 that gets its
ImageFolder right, audited by default, with every pass through the model counted.

Shared by ``test_checks_share.py`` and ``bench/checks_share.py`` (imported by name: pytest puts this folder
on sys.path, the benchmark puts it there itself). The model's last layer is fitted so nearly every sample is
clean-correct and attacked: a random model is at chance, and its audit would leave the attacks almost
nothing to do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image


def write_folder(root: Path, classes: int = 5, per_class: int = 40, size: int = 64, seed: int = 0) -> Path:
    """``root/c0 .. c{K-1}/i.png``, ``size`` x ``size`` RGB: class k is a colour and a stripe frequency
    plus uniform noise."""
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
    """A torchvision ResNet-18 (random trunk, eval mode) whose ``fc`` is fitted to ``x (N, 3, H, W)``,
    ``y (N,)``: logistic regression on the trunk's standardised features with an L2 penalty of 0.01, so
    every image is right with logits of a trained network's size (median top-2 margin about 6, largest
    logit about 12), not the saturated hundreds of an unpenalised fit."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=classes).eval()
    fc, net.fc = net.fc, nn.Identity()
    with torch.no_grad():
        feats = net(x)
    net.fc = fc
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - mean) / std
    w = torch.zeros(classes, feats.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        (nn.functional.cross_entropy(z @ w.T + b, y) + 0.01 * (w**2).sum()).backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into fc
        fc.weight.copy_(w / std)
        fc.bias.copy_(b - (w * mean / std).sum(1))
    return net


class Count:
    """Samples through ``model``'s forward and samples of an output a gradient flowed back through (hooks
    on the module: every pass of every stage, whatever wrapper the audit puts around it)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.backward = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        n = int(args[0].shape[0])
        self.forward += n
        if out.requires_grad:
            out.register_hook(lambda g: setattr(self, "backward", self.backward + n))


@dataclass
class Share:
    """What one audit spent, and the part of it inside ``run_checks`` (passes in samples, CPU seconds)."""

    n: int
    clean_accuracy: float
    forward: int
    backward: int
    checks_forward: int
    checks_backward: int
    cpu: float
    checks_cpu: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)

    @property
    def passes(self) -> float:
        """The checks' forward+backward passes over the whole audit's."""
        return (self.checks_forward + self.checks_backward) / (self.forward + self.backward)


def measure(model: nn.Module, root: Path, *, n: int | None = None, cost: bool = False) -> Share:
    """Audit ``model`` on ``imagefolder:root`` with the default attacks and eps and ``checks="basic"``
    (``cost``: the model-cost stage, whose latency runs are timed, so their count is not fixed)."""
    import robustaudit.checks as checks_mod
    from robustaudit import audit

    count = Count(model)
    inside = {"fwd": 0, "bwd": 0, "cpu": 0.0}
    real = checks_mod.run_checks

    def counted(*args: Any, **kwargs: Any) -> Any:
        f, b, c = count.forward, count.backward, time.process_time()
        out = real(*args, **kwargs)
        inside["fwd"] += count.forward - f
        inside["bwd"] += count.backward - b
        inside["cpu"] += time.process_time() - c
        return out

    checks_mod.run_checks = counted  # the checks stage imports it from the package when it runs
    try:
        c0 = time.process_time()
        result = audit(model, f"imagefolder:{root}", n=n, checks="basic", cost=cost)
        cpu = time.process_time() - c0
    finally:
        checks_mod.run_checks = real
    first = result.records.iloc[0]
    return Share(int(first["n"]), float(first["clean_accuracy"]), count.forward, count.backward, inside["fwd"],
                 inside["bwd"], cpu, inside["cpu"], dict(result.provenance["stage_seconds"]),
                 {v["id"]: v["status"] for v in result.checks})
