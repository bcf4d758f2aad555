"""Audits of real-size torchvision networks on CPU, end to end through the CLI: a ResNet-18 at 32x32 and a
ResNet-50 at 224x224 (random weights, saved as a state dict and given with ``--weights``; a tiny ImageFolder
written by the test). What is checked: the audit finishes with results.json, report.md and report.html; the
batch size was chosen automatically (and why is recorded); images/s is reported per model and counts every
attacked sample; a given ``--batch-size`` wins. Slow: a ResNet-50 forward+backward at 224x224 is about
0.3 s of CPU per sample.

What 224x224 showed: nothing broke (memory, example images, the reports); the cost is the sanity checks,
whose PGD-50 at eps 0.5 and 1.0 (large-eps, unbounded) runs all its steps on every sample the model
resists. On a model whose logits barely depend on the input (the first version of this test scaled the
last layer by 0.01) that was 698 of the audit's 767 s, against 37 s for the matrix; on a model with its
own margins (below) those samples break in a few steps, and the checks took 240 s against 39 s for the
matrix (PGD-2 and FGSM on four samples: the checks' own PGD-20/50 runs dominate any audit this small)."""

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


def labelled(tmp: Path, arch: str, size: int) -> tuple[Path, Path]:
    """``(weights, root)``: a seeded random ``torchvision.models.ARCH(num_classes=2)`` saved as a state dict,
    and four random RGB PNGs of ``size`` x ``size`` filed under the class the model predicts (``c0``, ``c1``),
    two each: the last bias is shifted to the midpoint of the four logit gaps, so two fall on each side with
    the network's own margins (an attack breaks them as on any undefended model; a model whose logits ignore
    the input would keep the sanity checks' PGD-50 at eps 0.5 running for all its steps)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=2).eval()
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (4, size, size, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        logits = net(x)
        gap = (logits[:, 1] - logits[:, 0]).sort().values
        net.fc.bias[1] -= (gap[1] + gap[2]) / 2
        pred = net(x).argmax(1)
    assert sorted(pred.tolist()) == [0, 0, 1, 1]
    weights, root = tmp / f"{arch}.pt", tmp / f"images{size}"
    torch.save(net.state_dict(), weights)
    for i, (img, k) in enumerate(zip(pixels, pred.tolist())):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{k}" / f"{i}.png")
    return weights, root


def audit(tmp: Path, arch: str, size: int, *extra: str) -> dict:
    weights, root = labelled(tmp, arch, size)
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


@pytest.mark.slow  # ~40 s of CPU (the checks are most of it)
def test_resnet18_at_32(tmp_path):
    doc = audit(tmp_path, "resnet18", 32)
    prov = doc["provenance"]
    sizing = prov["batch_sizing"]
    assert sizing["source"] == "auto" and prov["config"]["batch_size"] == sizing["size"]
    model = sizing["models"]["torchvision:resnet18:num_classes=2"]
    # torchvision's ResNet-18 (ImageNet stem) at 32x32: 2 x 37.2 M MACs per forward
    assert model["forward_flops"] == pytest.approx(2 * 37.2e6, rel=0.02)
    assert sizing["size"] == 256  # far under the CPU's FLOP budget: the cap
    assert {r["n_clean_correct"] for r in doc["records"]} == {4}  # filed under the model's own predictions
    rate = prov["throughput"]["torchvision:resnet18:num_classes=2"]
    assert rate["attacked_samples"] == _attacked(doc) == 8  # fgsm and pgd, each on the four samples
    assert rate["images_per_second"] == pytest.approx(8 / rate["attack_seconds"], rel=0.02)


@pytest.mark.slow  # ~75 s on the shared 2-core VM: matrix 39, cost 35 (with basic checks: 319 s, checks 240)
def test_resnet50_at_224(tmp_path):
    # checks off: at this size they are 3/4 of the audit, and test_resnet18_at_32 runs them end to end
    doc = audit(tmp_path, "resnet50", 224, "--checks", "off")
    prov = doc["provenance"]
    sizing = prov["batch_sizing"]
    model = sizing["models"]["torchvision:resnet50:num_classes=2"]
    assert model["forward_flops"] == pytest.approx(2 * 4.09e9, rel=0.02)  # ResNet-50's 4.1 GMACs
    # the CPU's FLOP budget bounds it (forward+backward = 3 forwards), a power of two
    expected = 2 ** int(np.floor(np.log2(CPU_FLOP_BUDGET / (3 * model["forward_flops"]))))
    assert sizing["size"] == min(expected, model["bound"]) == prov["config"]["batch_size"] <= 8
    assert sizing["source"] == "auto" and "resnet50" in sizing["reason"]
    rate = prov["throughput"]["torchvision:resnet50:num_classes=2"]
    assert rate["attacked_samples"] == _attacked(doc) == 8
    assert {r["n"] for r in doc["records"]} == {4} and {r["n_clean_correct"] for r in doc["records"]} == {4}


@pytest.mark.slow  # ~20 s of CPU
def test_a_given_batch_size_wins(tmp_path):
    doc = audit(tmp_path, "resnet18", 32, "--batch-size", "3", "--checks", "off")
    sizing = doc["provenance"]["batch_sizing"]
    assert sizing == {"size": 3, "source": "given", "reason": "given by the user (--batch-size)"}
    assert doc["provenance"]["config"]["batch_size"] == 3
