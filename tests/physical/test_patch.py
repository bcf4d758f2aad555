"""Adversarial patches: the region guarantee, keyed placements, deterministic fits, load=PATH, and the
patch beating a noise control of the same size at the same placements (digits32)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustaudit.attacks.patch import (
    AdversarialPatch,
    FittedPatch,
    Placement,
    load_patch,
)
from robustaudit.cli import main
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import TensorData
from robustaudit.data.digits import digits32_split, digits_split
from robustaudit.evaluate.metrics import binomial_tail
from robustaudit.models.catalog import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int = 24, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _patch(r: int, shape: str = "square", target: int | None = 3) -> FittedPatch:
    eot = {"rotation": 30.0, "scale_min": 0.8, "brightness": 0.1, "contrast": 0.1}
    return FittedPatch(torch.rand(1, r, r, generator=torch.Generator().manual_seed(1)), shape=shape, target=target,
                       eot=eot, trained_eps=None)


@pytest.mark.parametrize("shape", ["square", "circle"])
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.2, 0.5])
def test_patch_changes_only_pixels_inside_its_placed_region(shape, eps):
    x = _images()
    ids = torch.arange(100, 124)
    patch = _patch(12, shape)
    adv = patch(torch.nn.Identity(), x, torch.zeros(24, dtype=torch.long), ThreatModel("patch", eps), ids=ids, seed=5)
    place = patch.placement(ids, (32, 32), eps, seed=5)
    changed = (adv != x).flatten(1)
    mask = place.mask.flatten(1) > 0
    budget = math.floor(eps * 32 * 32 + 1e-9)
    assert not (changed & ~mask).any()  # nothing outside the placed region moves
    assert int(mask.sum(1).max()) <= budget  # the region never exceeds eps * H * W pixels
    # and it is the patch, not a speck: at scale >= 0.8 the region covers at least 0.8^2 of the budget
    assert int(mask.sum(1).min()) >= math.floor(0.64 * budget * 0.9)
    assert adv.min() >= 0 and adv.max() <= 1


def test_placement_is_keyed_by_sample_not_batch():
    x = _images(16)
    ids = torch.arange(40, 56)
    patch = _patch(10)
    whole = patch.apply(x, ids, 0.1, seed=3)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    parts = torch.cat([patch.apply(x[order[:5]], ids[order[:5]], 0.1, seed=3),
                       patch.apply(x[order[5:]], ids[order[5:]], 0.1, seed=3)])
    assert torch.equal(parts, whole[order])
    # the noise control lands at exactly the patch's placements
    control = patch.control(x, ids, 0.1, seed=3)
    mask = patch.placement(ids, (32, 32), 0.1, seed=3).mask > 0
    assert not ((control != x) & ~mask).any() and not ((whole != x) & ~mask).any()
    assert not torch.equal(patch.apply(x, ids, 0.1, seed=4), whole)  # another seed, other placements


def test_placement_area_at_scale_one_matches_eps():
    u = torch.rand(64, 6, generator=torch.Generator().manual_seed(2))
    for shape in ("square", "circle"):
        place = Placement(u, (32, 32), 0.1, shape=shape, rotation=45.0, scale_min=1.0, brightness=0.0, contrast=0.0)
        area = place.mask.flatten(1).sum(1)
        assert area.max() <= 102 and area.float().mean() >= 0.93 * 102.4


def _small_train(n: int = 96) -> TensorData:
    data = digits32_split("train")
    x, y = data.load(range(n))
    return TensorData(x, y, name="digits32", num_classes=10)


def test_fit_is_deterministic_and_load_reproduces_the_patch(tmp_path):
    model = create_model("digits32-cnn")
    train = _small_train()
    threat = ThreatModel("patch", 0.1)
    a = AdversarialPatch(target=3, steps=4, batch_size=16).fit(model, train, threat, seed=7)
    b = AdversarialPatch(target=3, steps=4, batch_size=16).fit(model, train, threat, seed=7)
    c = AdversarialPatch(target=3, steps=4, batch_size=16).fit(model, train, threat, seed=8)
    assert torch.equal(a.patch, b.patch) and not torch.equal(a.patch, c.patch)
    assert a.patch.shape == (1, 11, 11) and a.patch.min() >= 0 and a.patch.max() <= 1
    a.save(tmp_path / "p.pt")
    assert (tmp_path / "p.png").is_file()
    loaded = AdversarialPatch(load=str(tmp_path / "p.pt")).fit(model, train, threat, seed=7)
    assert torch.equal(loaded.patch, a.patch) and loaded.target == 3 and loaded.shape == "square"
    x, y = digits32_split("test").load(range(20))
    ids = torch.arange(20)
    assert torch.equal(loaded(model, x, y, threat, ids=ids, seed=1), a(model, x, y, threat, ids=ids, seed=1))
    with pytest.raises(UserError, match="made with target=3, not 5"):
        AdversarialPatch(target=5, load=str(tmp_path / "p.pt")).fit(model, train, threat)
    assert load_patch(tmp_path / "p.png").patch.shape[0] == 1  # the PNG is a patch too (square, no target)


def test_bad_inputs_are_user_errors():
    model = create_model("digits32-cnn")
    with pytest.raises(UserError, match="too small for a patch"):
        AdversarialPatch(steps=1).fit(create_model("digits-cnn"), digits_split("train"), ThreatModel("patch", 0.1))
    with pytest.raises(UserError, match="target class 10 does not exist"):
        AdversarialPatch(target=10, steps=1).fit(model, _small_train(8), ThreatModel("patch", 0.1))
    with pytest.raises(UserError, match="needs --norm patch"):
        AdversarialPatch(steps=1).fit(model, _small_train(8), ThreatModel("linf", 0.1))
    for bad in ({"target": -1}, {"shape": "star"}, {"steps": 0}, {"scale_min": 1.5}, {"contrast": 1.0},
                {"rotation": 270.0}, {"lr": float("nan")}):
        with pytest.raises(UserError):
            AdversarialPatch(**bad)


def _rates(model, patch: FittedPatch, eps: float, n: int = 200) -> tuple[int, int, int]:
    """(eligible, patch successes, control successes) on the first n test images."""
    x, y = digits32_split("test").load(range(n))
    ids = torch.arange(n)
    with torch.no_grad():
        clean = model(x).argmax(1)
        on_patch = model(patch.apply(x, ids, eps, 0)).argmax(1)
        on_noise = model(patch.control(x, ids, eps, 0)).argmax(1)
    if patch.target is None:
        ok = clean == y
        return int(ok.sum()), int((ok & (on_patch != y)).sum()), int((ok & (on_noise != y)).sum())
    ok = (y != patch.target) & (clean != patch.target)
    return int(ok.sum()), int((ok & (on_patch == patch.target)).sum()), int((ok & (on_noise == patch.target)).sum())


def test_patch_beats_noise_control_and_grows_with_size():
    """digits32-cnn, 30 Adam steps per size, first 200 test images. Measured (seed 0): targeted 3 at 20%:
    patch 14.1% vs noise 1.7%; untargeted at 5% / 20%: patch 16.2% / 41.1% vs noise 2.5% / 13.2%."""
    model = create_model("digits32-cnn")
    train = digits32_split("train")
    targeted = AdversarialPatch(target=3, steps=30, batch_size=32).fit(model, train, ThreatModel("patch", 0.2))
    n, hit, noise = _rates(model, targeted, 0.2)
    assert hit / n > noise / n + 0.07 and binomial_tail(hit, noise) < 0.01
    success = []
    for eps in (0.05, 0.2):
        fitted = AdversarialPatch(steps=30, batch_size=32).fit(model, train, ThreatModel("patch", eps))
        n, hit, noise = _rates(model, fitted, eps)
        assert hit > noise + 0.05 * n
        success.append(hit / n)
    assert success[1] > success[0] + 0.1


@pytest.mark.slow
def test_targeted_patch_on_a_global_pooling_resnet():
    """digits32-resnet (global average pooling) is far more patch-prone than the CNN: at 10% area a target-3
    patch (200 steps) wins on most images, well above the noise control, and success grows with size."""
    model = create_model("digits32-resnet")
    train = digits32_split("train")
    success = []
    for eps in (0.05, 0.1, 0.2):
        fitted = AdversarialPatch(target=3, steps=200, batch_size=32).fit(model, train, ThreatModel("patch", eps))
        n, hit, noise = _rates(model, fitted, eps)
        success.append(hit / n)
        if eps == 0.1:
            assert hit / n > 0.4 and hit / n > noise / n + 0.2
    assert success[0] < success[1] < success[2]


def test_cli_patch_end_to_end_and_load_reproduces(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["audit", "--data", "digits32", "--model", "digits32-cnn", "--norm", "patch", "--eps", "0.2", "--n", "32",
            "--checks", "off", "--batch-size", "16"]
    assert main([*base, "--attack", "patch:target=3,steps=3,batch_size=16", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    (row,) = doc["provenance"]["patch"]["rows"]
    assert row["eps"] == 0.2 and row["target"] == 3 and row["n"] > 0
    assert 0 <= row["success"] <= 1 and 0 <= row["control_success"] <= 1
    assert (out / row["artifact"]).is_file() and (out / row["artifact_pt"]).is_file()
    assert "## Adversarial patch" in (out / "report.md").read_text()
    # the saved patch, reused: the same matrix cell and the same patch-section numbers, without fitting
    again = tmp_path / "again"
    assert main([*base, "--attack", f"patch:load={out / row['artifact_pt']}", "--out", str(again)]) == 0, \
        capsys.readouterr().err
    doc2 = json.loads((again / "results.json").read_text())
    (row2,) = doc2["provenance"]["patch"]["rows"]
    for key in ("n", "success", "control_success", "image"):
        assert row2[key] == row[key]
    cells = [[r["n_robust"] for r in d["records"] if r["attack"] != "worst-case"] for d in (doc, doc2)]
    assert cells[0] == cells[1]
    assert doc2["provenance"]["fits"][0]["backward_passes"] == 0  # loaded, not fitted


@pytest.mark.slow
def test_resume_reuses_batches_fits_and_the_patch_section(tmp_path, capsys):
    """A resumed run fits nothing again: its batches, its fit record and its patch section are stored
    (tests/cli/test_stage_resume.py counts the calls), and it reports the numbers of the first run."""
    argv = ["audit", "--data", "digits32", "--model", "digits32-cnn", "--attack", "patch:target=3,steps=2,batch_size=8",
            "--norm", "patch", "--eps", "0.1", "--n", "16", "--checks", "off", "--out", str(tmp_path / "run")]
    assert main(argv) == 0, capsys.readouterr().err
    first = json.loads((tmp_path / "run" / "results.json").read_text())["provenance"]
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "run" / "results.json").read_text())["provenance"]
    assert again["resume"]["computed_batches"] == 0
    assert again["fits"] == first["fits"] and "note" not in again["fits"][0]
    for key in ("n", "success", "control_success", "image"):
        assert again["patch"]["rows"][0][key] == first["patch"]["rows"][0][key]
