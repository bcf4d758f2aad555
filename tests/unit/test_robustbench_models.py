"""robustbench:NAME through robustbench's own zoo and cache layout, without any network: the weights are a
random-weight state dict of the real WideResNet-28-10 (robustbench's ``Standard``) built by robustbench's
own constructor and saved where robustbench keeps it (``<model_dir>/cifar10/Linf/Standard.pt``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustaudit.core.errors import UserError
from robustaudit.models.loading import load_model
from robustaudit.models.robustbench_models import _robustbench, list_robustbench, published, robustbench_eps

try:
    RB = _robustbench()
except UserError:
    RB = None
pytestmark = pytest.mark.skipif(RB is None, reason="robustbench is not installed (pip install 'robustaudit[robustbench]')")

from test_data_files import _write_cifar  # noqa: E402  (same folder: the CIFAR-10 pickle-batch writer)


@pytest.fixture(autouse=True)
def no_network(offline, monkeypatch):
    """Every socket connection and robustbench's downloads fail loudly in these tests."""
    monkeypatch.setattr(RB.utils, "download_gdrive_new", offline)
    monkeypatch.setattr(RB.utils, "download_gdrive", offline)


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path, monkeypatch) -> Path:
    """torch hub's cache (where timm keeps what robustbench's XCiT, DeiT and AlexNet entries read) is an empty
    folder of the test's, whatever the machine's own cache holds."""
    import torch.hub

    hub = tmp_path / "torch-hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    return hub


def _standard() -> torch.nn.Module:
    """robustbench's own constructor of cifar10/Linf ``Standard`` (WideResNet-28-10), random weights."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"]().eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("rb")
    model = _standard()
    path = root / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return root, model


def test_forward_equals_robustbenchs_constructor_with_the_cached_weights(cache):
    root, model = cache
    loaded = load_model("robustbench:Standard", model_dir=root)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))  # [0, 1] in, no Normalize wrapper added
    assert loaded.source == "robustbench"
    card = loaded.card
    assert (card["dataset"], card["threat"], card["weights_file"]) == ("cifar10", "Linf", str(root / "cifar10/Linf/Standard.pt"))
    assert (card["published"]["clean_acc"], card["published"]["robust_acc"]) == (94.78, 0.0)
    assert card["published_eps"] == pytest.approx(8 / 255)


def test_missing_file_never_downloads_and_allow_download_does(tmp_path, monkeypatch, cache):
    calls = []

    def fake_download(gdrive_id, fname_save):  # stands in for Google Drive: copies the cached file
        calls.append((gdrive_id, str(fname_save)))
        Path(fname_save).write_bytes((cache[0] / "cifar10/Linf/Standard.pt").read_bytes())

    monkeypatch.setattr(RB.utils, "download_gdrive_new", fake_download)
    with pytest.raises(UserError, match=r"not in the cache: expected '.*cifar10/Linf/Standard.pt'.*--allow-download"):
        load_model("robustbench:Standard", model_dir=tmp_path)
    assert calls == []
    loaded = load_model("robustbench:Standard", model_dir=tmp_path, allow_download=True)
    assert [c[1] for c in calls] == [str(tmp_path / "cifar10/Linf/Standard.pt")]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), cache[1](x))


def test_published_table_matches_robustbench_model_info():
    row = published("cifar10", "Linf", "Carmon2019Unlabeled")
    assert (row["clean_acc"], row["robust_acc"], row["eps"]) == (89.69, 59.53, "8/255")
    assert "78fcc9e48a07a861268f295a777b975f25155964" in row["source"]
    assert published("cifar10", "Linf", "NoSuchModel") is None
    assert robustbench_eps("cifar10", "L2") == 0.5 and robustbench_eps("cifar10", "corruptions") is None


def test_list_is_offline_and_marks_the_cached_entry(cache):
    rows = list_robustbench(cache[0])
    keys = {(r["dataset"], r["threat"], r["name"]) for r in rows}
    assert len(rows) == len(keys) > 150
    standard = next(r for r in rows if (r["dataset"], r["threat"], r["name"]) == ("cifar10", "Linf", "Standard"))
    assert standard["cached"] and (standard["clean_acc"], standard["robust_acc"]) == (94.78, 0.0)
    assert sum(r["cached"] for r in rows) == 1


def test_cli_audit_of_robustbench_standard_from_the_cache(cache, tmp_path, capsys):
    """The issue's done-when: audit --model robustbench:Standard --data cifar10:ROOT --eps 8/255, offline."""
    from robustaudit.cli import main

    _write_cifar(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["audit", "--model", "robustbench:Standard", "--model-dir", str(cache[0]), "--data",
            f"cifar10:{tmp_path / 'data'}", "--eps", "8/255", "--n", "4", "--attack", "fgsm", "--checks", "off",
            "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    card = next(m for m in results["provenance"]["models"] if m["name"] == "robustbench:Standard")
    assert card["published"]["clean_acc"] == 94.78 and card["published_eps"] == pytest.approx(8 / 255)
    (ours,) = [r for r in results["records"] if r["attack"] == "fgsm"]  # one attack: its own worst case
    # the report puts theirs beside ours: their clean, our clean, their AutoAttack, our worst case, difference
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| robustbench:Standard | cifar10"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:4] == ["8/255", "94.78"] and cells[5] == "0.00"
    assert cells[6].startswith(f"{100 * ours['robust_accuracy']:.1f} [")
    assert cells[7] == f"{100 * ours['robust_accuracy'] - 0.0:+.1f}"
    assert cells[8] == ("yes" if ours["ci_low"] <= 0.0 else "no")
    assert "Published figures (RobustBench)" in (out / "report.html").read_text()
    assert "Published figures (RobustBench)" in capsys.readouterr().out  # the terminal's table


def test_cli_list_models_source_robustbench(cache, capsys):
    from robustaudit.cli import main

    assert main(["list", "models", "--source", "robustbench", "--model-dir", str(cache[0])]) == 0
    out = capsys.readouterr().out
    assert "robustbench:Carmon2019Unlabeled" in out and "59.53%" in out
    assert f"RobustBench models, 1 in {cache[0]}" in out.replace("\n", "")


def test_a_cached_checkpoint_with_code_is_refused_before_robustbench_reads_it(tmp_path):
    import argparse

    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)  # not loadable with weights_only
    with pytest.raises(UserError, match="holds pickled objects other than tensors"):
        load_model("robustbench:Standard", model_dir=tmp_path)


def test_an_entry_robustbench_builds_through_timm_reads_torch_hubs_cache(empty_torch_hub, tmp_path):
    """Debenedetti2022Light_XCiT-S12 (cifar10/Linf): robustbench's load_model asks timm for it, and timm keeps
    its file in torch hub's cache. A random-weight checkpoint of the real XCiT-S12 placed there loads offline
    and gives the forward of timm's own constructor (robustbench's normalization layer included)."""
    import timm

    name = "debenedetti2022light_xcit_s12_cifar10_linf"
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    inner = next(m for m in reference.modules() if isinstance(m, timm.models.xcit.Xcit))
    file = empty_torch_hub / "checkpoints" / "debenedetti2022light-xcit-s-cifar10-linf.pth.tar"
    with pytest.raises(UserError, match=rf"not in the cache: expected '{file}' \(built through timm: torch hub's "
                                        r"cache, TORCH_HOME\).*--allow-download"):
        load_model("robustbench:Debenedetti2022Light_XCiT-S12")
    file.parent.mkdir(parents=True)
    torch.save(inner.state_dict(), file)
    loaded = load_model("robustbench:Debenedetti2022Light_XCiT-S12")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference(x), rtol=0, atol=1e-5)
    assert loaded.card["weights_file"] == str(file) and loaded.card["published"]["robust_acc"] == 56.14
    row = next(r for r in list_robustbench(tmp_path) if r["name"] == "Debenedetti2022Light_XCiT-S12"
               and r["dataset"] == "cifar10")
    assert row["cached"] and row["file"] == str(file)


def test_an_entry_built_from_torchvisions_weights_points_to_the_torchvision_source():
    with pytest.raises(UserError, match=r"builds 'Standard_R50' from torchvision's weights: use "
                                        r"torchvision:resnet50:weights=IMAGENET1K_V1"):
        load_model("robustbench:Standard_R50:dataset=imagenet")
