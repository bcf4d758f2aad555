"""timm:NAME from timm's own cache (the Hugging Face hub's layout), without any network: a random-weight
state dict of a real timm architecture placed as ``models--timm--NAME.TAG/snapshots/<rev>/model.safetensors``
(with ``refs/main``), loaded through timm's own file override, must give timm.create_model's forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustaudit.core.errors import UserError
from robustaudit.models.loading import load_model

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'robustaudit[timm]')")
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(offline, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)


def _hub_cache(root: Path, repo: str, state: dict[str, torch.Tensor], filename: str = "model.safetensors") -> Path:
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / REV
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REV)
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(snap / filename))
    else:
        torch.save(state, snap / filename)
    return snap / filename


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_cached_hub_weights_give_timms_forward(tmp_path, filename):
    torch.manual_seed(0)
    reference = timm.create_model("test_vit", pretrained=False).eval()
    path = _hub_cache(tmp_path, reference.pretrained_cfg["hf_hub_id"], reference.state_dict(), filename)
    loaded = load_model("timm:test_vit", model_dir=tmp_path)
    cfg = reference.pretrained_cfg
    x = torch.rand(2, 3, *cfg["input_size"][1:])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg["mean"], cfg["std"]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference((x - mean) / std), rtol=0, atol=1e-6)
    assert loaded.source == "timm" and loaded.card["weights_file"] == str(path)
    assert loaded.card["hf_hub_id"] == "timm/test_vit.r160_in1k" and loaded.card["input_size"] == [160, 160]


def test_missing_hub_weights_name_the_path_and_never_download(tmp_path):
    with pytest.raises(UserError, match=r"not in timm's cache: expected '.*models--timm--test_vit.r160_in1k/"
                                        r"snapshots/<revision>/model.safetensors'.*--allow-download"):
        load_model("timm:test_vit", model_dir=tmp_path)


def test_corrupt_hub_weights_are_one_line(tmp_path):
    path = _hub_cache(tmp_path, "timm/test_vit.r160_in1k", {"w": torch.zeros(3)})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="cached weights of 'timm:test_vit' are unusable"):
        load_model("timm:test_vit", model_dir=tmp_path)


def test_unknown_tag_lists_timms(tmp_path):
    with pytest.raises(UserError, match=r"timm has no weights 'nope' for test_vit; it has test_vit.r160_in1k"):
        load_model("timm:test_vit.nope", model_dir=tmp_path)


def test_hub_weights_of_another_architecture_say_which_keys(tmp_path):
    _hub_cache(tmp_path, "timm/test_vit.r160_in1k", torch.nn.Linear(3, 2).state_dict())
    with pytest.raises(UserError, match=r"do not fit the model: keys \d+ missing"):
        load_model("timm:test_vit", model_dir=tmp_path)


@pytest.mark.slow  # 1000 PNG class folders and the report's figures: about 7 s on one core (CPU, rough)
def test_cli_audit_of_a_timm_model_from_the_cache(tmp_path, capsys):
    """The issue's done-when for timm: an audit with the weights only in timm's cache and no network."""
    import json
    import sys

    from robustaudit.cli import main

    sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
    from test_torchvision_weights_cli import imagenet_folder  # 1000 class folders, one PNG each

    torch.manual_seed(0)
    reference = timm.create_model("test_vit", pretrained=False).eval()
    path = _hub_cache(tmp_path / "hf", "timm/test_vit.r160_in1k", reference.state_dict())
    root = imagenet_folder(tmp_path, size=32)
    argv = ["audit", "--model", "timm:test_vit", "--model-dir", str(tmp_path / "hf"), "--data",
            f"imagefolder:{root}:size=160", "--attack", "fgsm", "--eps", "0.01", "--n", "4", "--checks", "off",
            "--out", str(tmp_path / "out"), "--json", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    model = json.loads(capsys.readouterr().out)["provenance"]["models"][0]
    assert (model["source"], model["hf_hub_id"], model["weights_file"]) == ("timm", "timm/test_vit.r160_in1k", str(path))


def test_cli_list_models_source_timm_marks_the_cache(tmp_path, capsys):
    from robustaudit.cli import main

    torch.manual_seed(0)
    reference = timm.create_model("test_vit", pretrained=False)
    _hub_cache(tmp_path, "timm/test_vit.r160_in1k", reference.state_dict())
    assert main(["list", "models", "--source", "timm", "--model-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row = next(line for line in lines if "timm:test_vit.r160_in1k" in line)
    assert "timm/test_vit.r160_in1k" in row and "yes" in row
    other = next(line for line in lines if "timm:resnet18.a1_in1k" in line)
    assert "timm/resnet18.a1_in1k" in other and "yes" not in other
    tags = len(timm.list_models(pretrained=True))
    assert f"{tags} timm weight tags, 1 in {tmp_path}" in out.replace("\n", "")
