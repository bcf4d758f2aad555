"""Physical-world proxies (Kurakin et al.): the destruction-rate formula, what is counted, keyed transforms,
and the --physical report section end to end."""

from __future__ import annotations

import json

import pytest
import torch

from robustaudit.attacks.gradient import FGSM, PGD
from robustaudit.cli import main
from robustaudit.data.digits import digits32_split
from robustaudit.data.transforms import Transform, identity, physical_transforms
from robustaudit.evaluate.physical import destruction, evaluate_physical
from robustaudit.evaluate.runner import AttackEntry, ModelEntry
from robustaudit.models.catalog import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_destruction_rate_on_a_handmade_case():
    t, f = True, False
    #                       0  1  2  3  4  5  6
    clean_ok = torch.tensor([t, t, t, t, t, f, t])
    adv_ok = torch.tensor([f, f, f, f, t, f, f])  # 4 and the misclassified 5 are not adversarial examples
    t_clean_ok = torch.tensor([t, t, t, f, t, t, t])  # the transform ruins clean image 3: not counted
    t_adv_ok = torch.tensor([t, f, f, t, t, t, t])
    # counted: 0, 1, 2, 6; destroyed among them: 0 and 6
    assert destruction(clean_ok, adv_ok, t_clean_ok, t_adv_ok) == (2, 4)


def test_only_images_the_transform_keeps_correct_are_counted():
    n = 10
    ok = torch.ones(n, dtype=torch.bool)
    broken = torch.zeros(n, dtype=torch.bool)
    # a transform that ruins every clean image leaves nothing to judge, whatever it does to the adversarial ones
    assert destruction(ok, broken, broken, ok) == (0, 0)


def _setup(n: int = 48):
    model = create_model("digits32-cnn")
    data = digits32_split("test")
    return model, data, list(range(n))


def test_identity_destroys_nothing_and_counts_every_adversarial_example():
    model, data, ids = _setup()
    same = Transform("identity", "no change", identity())
    block = evaluate_physical([ModelEntry("m", model)], data, ids, [AttackEntry("pgd", PGD(steps=10))], {}, eps=0.1,
                              norm="linf", seed=0, device=torch.device("cpu"), batch_size=16, transforms=[same])
    (row,) = block["rows"]
    assert row["destroyed"] == 0 and row["rate"] == 0.0
    assert row["n"] == row["n_adversarial"] > 0 and row["clean_kept"] == 1.0


def test_transforms_are_keyed_by_sample_and_shared_by_clean_and_adversarial():
    x, _ = digits32_split("test").load(range(12))
    ids = torch.arange(12)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    for t in physical_transforms():
        out = t(x, ids, 3)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert torch.allclose(t(x[order], ids[order], 3), out[order], atol=1e-6), t.name  # batch-independent
        assert torch.equal(t(x, ids, 3), out), t.name  # deterministic
    # the same rotation for a clean image and its adversarial version: equal inputs, equal outputs
    rot = next(t for t in physical_transforms() if t.name.startswith("rotate"))
    assert not torch.equal(rot(x, ids, 3), x)


def test_fgsm_and_pgd_rates_are_proportions_of_counted_images():
    model, data, ids = _setup(64)
    attacks = [AttackEntry("fgsm", FGSM()), AttackEntry("pgd", PGD(steps=10))]
    block = evaluate_physical([ModelEntry("m", model)], data, ids, attacks, {}, eps=0.1, norm="linf", seed=0,
                              device=torch.device("cpu"), batch_size=32)
    assert {r["transform"] for r in block["rows"]} == {t.name for t in physical_transforms()}
    for r in block["rows"]:
        assert 0 <= r["destroyed"] <= r["n"] <= r["n_adversarial"]
        assert r["n"] == 0 or r["ci"][0] <= r["rate"] <= r["ci"][1]


def test_cli_physical_section(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["audit", "--data", "digits32", "--model", "digits32-cnn", "--attack", "fgsm", "--eps", "0.1", "--n", "32",
            "--checks", "off", "--physical", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    block = json.loads((out / "results.json").read_text())["provenance"]["physical"]
    assert block["eps"] == 0.1 and block["n_samples"] == 32
    assert len(block["rows"]) == len(physical_transforms())
    assert "## Physical-world proxies" in (out / "report.md").read_text()
    assert "Physical-world proxies" in (out / "report.html").read_text()
