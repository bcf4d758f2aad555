"""``--model torchvision:ARCH:weights=ENUM`` end to end through ``main(argv)``, with the network sabotaged:
the weights come from a temporary torch hub directory (``--model-dir``), the data from an ImageFolder
written as PNG files, one folder per ImageNet class (1000, so the model's outputs are the data's
classes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from robustaudit.cli import build_parser, main, spec_from_args
from robustaudit.core.hashing import file_sha256

SPEC = "torchvision:squeezenet1_1:weights=DEFAULT"
FILE = "squeezenet1_1-b8a52dc0.pth"  # the file name of SqueezeNet1_1_Weights.IMAGENET1K_V1's url


@pytest.fixture(autouse=True)
def no_network(offline, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)  # its public face: never called by us


def hub_with_weights(tmp: Path, favourite: int = 2) -> Path:
    """``tmp/hub/checkpoints/FILE``: random squeezenet1_1 weights whose classifier favours class
    ``favourite`` by a wide margin, so every image is predicted as it, attacked or not."""
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1()
    with torch.no_grad():
        net.classifier[1].bias[favourite] = 50.0
    path = tmp / "hub" / "checkpoints" / FILE
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return tmp / "hub"


def imagenet_folder(tmp: Path, size: int = 32) -> Path:
    """1000 class folders ``c0000``..``c0999`` (sorted: labels 0..999), one RGB PNG each."""
    rng = np.random.RandomState(0)
    root = tmp / "val"
    for k in range(1000):
        (root / f"c{k:04d}").mkdir(parents=True)
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{k:04d}" / "0.png")
    return root


@pytest.mark.slow  # about 12 s on one core: the model-cost probe and the HTML report's figures, not the model
def test_audit_reads_the_cache_and_never_the_network(tmp_path, capsys):
    hub, root = hub_with_weights(tmp_path), imagenet_folder(tmp_path)
    argv = ["audit", "--model", SPEC, "--model-dir", str(hub), "--data", f"imagefolder:{root}", "--attack", "fgsm",
            "--eps", "0.01", "--n", "4", "--checks", "off", "--out", str(tmp_path / "out"), "--json", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    model = doc["provenance"]["models"][0]
    assert model["weights_enum"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1" and model["source"] == "torchvision"
    assert model["published"]["ImageNet-1K"]["acc@1"] == pytest.approx(58.178)
    assert model["weights_sha256"] == file_sha256(hub / "checkpoints" / FILE) and model["published_file"] is False
    assert doc["provenance"]["config"]["model_dir"] == str(hub) and doc["provenance"]["config"]["allow_download"] is False
    fgsm = next(r for r in doc["records"] if r["attack"] == "fgsm")
    # labels 0..3, every image predicted as class 2: one of four correct, and FGSM at 0.01 cannot move a
    # margin of about 50
    assert (fgsm["n"], fgsm["n_clean_correct"], fgsm["n_robust"]) == (4, 1, 1)
    assert "was trained on 224x224 inputs (resized to 256, centre-cropped) but data" in captured.err
    assert "has 32x32 images" in captured.err and "imagefolder:ROOT:size=224" in captured.err


def test_list_models_source_torchvision_marks_the_cache(tmp_path, capsys):
    hub = hub_with_weights(tmp_path)
    assert main(["list", "models", "--source", "torchvision", "--model-dir", str(hub)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "torchvision:squeezenet1_1:weights=IMAGENET1K_V1" in line)
    assert "(DEFAULT)" in row and "1,235,496" in row and "58.2%" in row and "yes" in row
    resnet = next(line for line in out.splitlines() if "torchvision:resnet18:weights=IMAGENET1K_V1" in line)
    assert "69.8%" in resnet and "yes" not in resnet
    assert f"1 in {hub / 'checkpoints'}" in out.replace("\n", "")


def test_flags_and_toml_keys_reach_the_spec(tmp_path):
    config = tmp_path / "audit.toml"
    config.write_text(f'model = "{SPEC}"\nmodel_dir = "{tmp_path}"\nallow_download = true\n')
    spec = spec_from_args(build_parser().parse_args(["audit", "--config", str(config)]))
    assert (spec.model_dir, spec.allow_download) == (str(tmp_path), True)
    spec = spec_from_args(build_parser().parse_args(["audit", "--model", SPEC, "--model-dir", "elsewhere"]))
    assert (spec.model_dir, spec.allow_download) == ("elsewhere", False)


def test_python_api_takes_model_dir(tmp_path):
    import robustaudit

    hub = hub_with_weights(tmp_path)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([2, 2, 0, 5])
    result = robustaudit.audit(SPEC, (x, y), attacks="fgsm", eps=[0.01], checks="off", cost=False, model_dir=hub)
    assert result.robust_accuracy(SPEC, "fgsm", 0.01) == pytest.approx(0.5)
