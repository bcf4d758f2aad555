"""Audits of real-size torchvision networks on CPU, end to end through the CLI: a ResNet-18 at 32x32 and a
ResNet-50 at 224x224 (random weights, saved as a state dict and given with ``--weights``; a tiny ImageFolder
written by the test). What is checked: the audit finishes with results.json, report.md and report.html; the
batch size was chosen automatically (and why is recorded); images/s is reported per model and counts every
attacked sample; a given ``--batch-size`` wins. Slow: a ResNet-50 forward+backward is about a second per
sample on one core."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from robustaudit.cli import main
from robustaudit.evaluate.batchsize import CPU_FLOP_BUDGET


def image_folder(tmp: Path, size: int, per_class: int = 2, classes: int = 2) -> Path:
    """``classes`` folders ``c0``, ``c1``... of ``per_class`` random RGB PNGs of ``size`` x ``size``."""
    rng = np.random.RandomState(0)
    root = tmp / f"images{size}"
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{k}" / f"{i}.png")
    return root


def random_weights(tmp: Path, arch: str, classes: int = 2) -> Path:
    """A seeded random state dict of ``torchvision.models.ARCH(num_classes=classes)`` whose last layer
    favours class 0 by a margin of 4 logits: class 0's images are the clean-correct ones."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=classes)
    with torch.no_grad():
        net.fc.weight.mul_(0.01)
        net.fc.bias.zero_()
        net.fc.bias[0] = 4.0
    path = tmp / f"{arch}.pt"
    torch.save(net.state_dict(), path)
    return path


def audit(tmp: Path, arch: str, size: int, *extra: str) -> dict:
    root, weights = image_folder(tmp, size), random_weights(tmp, arch)
    out = tmp / f"out-{arch}"
    argv = ["audit", "--model", f"torchvision:{arch}:num_classes=2", "--weights", str(weights),
            "--data", f"imagefolder:{root}", "--attack", "fgsm", "--attack", "pgd:steps=2", "--eps", "0.01",
            "--n", "4", "--checks", "basic", "--out", str(out), "--quiet", *extra]
    assert main(argv) in (0, 1)  # 1: a sanity check failed on a random network; the result is written
    for name in ("results.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    return json.loads((out / "results.json").read_text())


def _attacked(doc: dict) -> int:
    return sum(r["n_attacked"] for r in doc["records"] if r["attack"] != "worst-case")


@pytest.mark.slow  # ~20 s on one core
def test_resnet18_at_32(tmp_path):
    doc = audit(tmp_path, "resnet18", 32)
    prov = doc["provenance"]
    sizing = prov["batch_sizing"]
    assert sizing["source"] == "auto" and prov["config"]["batch_size"] == sizing["size"]
    model = sizing["models"]["torchvision:resnet18:num_classes=2"]
    # torchvision's ResNet-18 (ImageNet stem) at 32x32: 2 x 37.2 M MACs per forward
    assert model["forward_flops"] == pytest.approx(2 * 37.2e6, rel=0.02)
    assert sizing["size"] == 256  # far under the CPU's FLOP budget: the cap
    clean_correct = {r["n_clean_correct"] for r in doc["records"]}
    assert clean_correct == {2}  # class 0's two images
    rate = prov["throughput"]["torchvision:resnet18:num_classes=2"]
    assert rate["attacked_samples"] == _attacked(doc) == 4  # fgsm and pgd, each on the two clean-correct samples
    assert rate["images_per_second"] == pytest.approx(4 / rate["attack_seconds"], rel=0.02)


@pytest.mark.slow  # ~60 s on one core: ResNet-50 at 224x224, checks and the cost probe included
def test_resnet50_at_224(tmp_path):
    doc = audit(tmp_path, "resnet50", 224)
    prov = doc["provenance"]
    sizing = prov["batch_sizing"]
    model = sizing["models"]["torchvision:resnet50:num_classes=2"]
    assert model["forward_flops"] == pytest.approx(2 * 4.09e9, rel=0.02)  # ResNet-50's 4.1 GMACs
    # the CPU's FLOP budget bounds it (forward+backward = 3 forwards), a power of two
    expected = 2 ** int(np.floor(np.log2(CPU_FLOP_BUDGET / (3 * model["forward_flops"]))))
    assert sizing["size"] == min(expected, model["bound"]) == prov["config"]["batch_size"] <= 8
    assert sizing["source"] == "auto" and "resnet50" in sizing["reason"]
    rate = prov["throughput"]["torchvision:resnet50:num_classes=2"]
    assert rate["attacked_samples"] == _attacked(doc) == 4
    assert {r["n"] for r in doc["records"]} == {4}


@pytest.mark.slow  # ~15 s
def test_a_given_batch_size_wins(tmp_path):
    doc = audit(tmp_path, "resnet18", 32, "--batch-size", "3")
    sizing = doc["provenance"]["batch_sizing"]
    assert sizing == {"size": 3, "source": "given", "reason": "given by the user (--batch-size)"}
    assert doc["provenance"]["config"]["batch_size"] == 3
