"""Learned attack generators (ATN, AdvGAN): success on held-out digits within the ball, determinism,
``load=`` reproducing the adversarial points, refusals, any input shape, and the report block.

Fits here are short (one to three epochs); measured on digits-cnn at Linf 0.2 (held-out test split,
clean-correct samples): ATN ``epochs=3,batch=32,alpha=5`` 0.62, AdvGAN ``epochs=1,batch=16`` 0.72; with the
defaults (10 epochs) 0.68 and 0.86 (the slow test).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import robustaudit
from robustaudit.attacks.learned import (
    ATN,
    AdvGAN,
    GeneratorAttack,
    PerturbationNet,
    bound,
    downsamplings,
)
from robustaudit.attacks.registry import get, split_specs
from robustaudit.core.errors import UserError
from robustaudit.core.norms import lp_norm
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import TensorData
from robustaudit.data.digits import digits_split

pytestmark = pytest.mark.usefixtures("one_thread")

LINF = ThreatModel("linf", 0.2)


@pytest.fixture(scope="module")
def train():
    return digits_split("train")


@pytest.fixture(scope="module")
def test_split():
    data = digits_split("test")
    return data.load(range(len(data)))


@pytest.fixture(scope="module")
def small_train(train):
    """128 training digits: enough for the determinism and shape checks, fast to fit on."""
    x, y = train.load(range(128))
    return TensorData(x, y, name="digits", num_classes=10)


@pytest.fixture(scope="module")
def fitted(digits_cnn, train):
    torch.set_num_threads(1)
    return {
        "atn": ATN(epochs=3, batch=32, alpha=5.0).fit(digits_cnn, train, LINF, seed=0),
        "advgan": AdvGAN(epochs=1, batch=16).fit(digits_cnn, train, LINF, seed=0),
    }


def _success(model, fitted_attack, x, y, threat=LINF) -> tuple[float, torch.Tensor]:
    adv = fitted_attack(model, x, y, threat)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        broken = model(adv).argmax(1) != y
    return (clean & broken).sum().item() / clean.sum().item(), adv


@pytest.mark.parametrize("name,threshold", [("atn", 0.5), ("advgan", 0.55)])
def test_clear_success_on_held_out_digits_within_the_ball(name, threshold, fitted, digits_cnn, test_split):
    x, y = test_split
    rate, adv = _success(digits_cnn, fitted[name], x, y)
    assert rate > threshold, f"{name}: {rate:.3f}"
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.all(lp_norm(adv - x, "linf") <= 0.2 * (1 + 1e-6))
    # a fitted attack is one generator pass: the model is not queried to craft the batch
    calls = []
    hook = digits_cnn.register_forward_hook(lambda *a: calls.append(1))
    try:
        fitted[name](digits_cnn, x[:8], y[:8], LINF)
    finally:
        hook.remove()
    assert calls == []


def test_l2_generator_stays_in_the_ball(digits_cnn, small_train, test_split):
    x, y = test_split
    threat = ThreatModel("l2", 1.0)
    for cls in (ATN, AdvGAN):
        fitted = cls(epochs=1, width=8).fit(digits_cnn, small_train, threat, seed=0)
        adv = fitted(digits_cnn, x, y, threat)
        assert torch.all(lp_norm(adv - x, "l2") <= 1.0 * (1 + 1e-5)) and adv.min() >= 0 and adv.max() <= 1
        # the bound is smooth: the generator's raw perturbation is strictly inside the ball
        raw = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 100
        assert torch.all(lp_norm(bound(raw, "l2", 1.0), "l2") <= 1.0 + 1e-6)


@pytest.mark.parametrize("cls", [ATN, AdvGAN])
def test_deterministic_given_the_seed(cls, digits_cnn, small_train, test_split):
    x, y = test_split
    rng_before = torch.random.get_rng_state()
    a = cls(epochs=1, width=8).fit(digits_cnn, small_train, LINF, seed=5)
    b = cls(epochs=1, width=8).fit(digits_cnn, small_train, LINF, seed=5)
    c = cls(epochs=1, width=8).fit(digits_cnn, small_train, LINF, seed=6)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is left alone
    assert all(p.grad is None for p in digits_cnn.parameters())  # the target model gets no gradient
    adv_a, adv_b, adv_c = (f(digits_cnn, x, y, LINF) for f in (a, b, c))
    assert torch.equal(adv_a, adv_b)
    assert not torch.equal(adv_a, adv_c)
    # a sample's perturbation does not depend on its batch (GroupNorm, no batch statistics)
    parts = torch.cat([a(digits_cnn, x[i:i + 7], y[i:i + 7], LINF) for i in range(0, 70, 7)])
    assert torch.allclose(parts, adv_a[:70], atol=1e-6)


def test_load_reproduces_the_adversarial_points(fitted, digits_cnn, train, test_split, tmp_path):
    x, y = test_split
    path = fitted["advgan"].save(tmp_path / "g.pt")
    card = json.loads(Path(f"{path}.json").read_text())
    assert card["attack"] == "advgan" and card["input_shape"] == [1, 8, 8] and card["eps"] == 0.2
    assert card["norm"] == "linf" and card["target"] is None and card["num_classes"] == 10
    assert card["model"]["class"] == "DigitsCNN" and len(card["sha256"]) == 64 and card["fit_seconds"] > 0
    assert card["settings"]["epochs"] == 1 and card["settings"]["batch"] == 16
    loaded = AdvGAN(load=str(path)).fit(digits_cnn, train, LINF, seed=123)
    assert torch.equal(loaded(digits_cnn, x, y, LINF), fitted["advgan"](digits_cnn, x, y, LINF))
    assert loaded.meta["loaded_from"] == str(path)


def test_load_refuses_other_files(fitted, digits_cnn, train, small_train, tmp_path):
    atn = fitted["atn"].save(tmp_path / "atn.pt")
    cases = [
        (ATN(load=str(tmp_path / "missing.pt")), LINF, train, "does not exist"),
        (AdvGAN(load=str(atn)), LINF, train, "was made by 'atn', not 'advgan'"),
        (ATN(load=str(atn)), ThreatModel("linf", 0.1), train, "was fit for linf eps 0.2, the audit asks for linf eps 0.1"),
        (ATN(load=str(atn)), ThreatModel("l2", 0.2), train, "the audit asks for l2 eps 0.2"),
        (ATN(load=str(atn), target=3), LINF, train, "was fit for target None, not 3"),
    ]
    big = TensorData(torch.rand(4, 1, 16, 16), torch.zeros(4, dtype=torch.long), name="big", num_classes=10)
    wide = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(64, 10))
    five = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    for attack, threat, data, phrase in cases:
        with pytest.raises(UserError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
            attack.fit(digits_cnn, data, threat)
    with pytest.raises(UserError, match=r"was fit for inputs \(1, 8, 8\), the data has \(1, 16, 16\)"):
        ATN(load=str(atn)).fit(wide, big, LINF)
    with pytest.raises(UserError, match="against a 10-class model, this model has 5 outputs"):
        ATN(load=str(atn)).fit(five, small_train, LINF)
    text = tmp_path / "text.pt"
    text.write_text("not a generator")
    with pytest.raises(UserError, match="cannot read generator file"):
        ATN(load=str(text)).fit(digits_cnn, train, LINF)
    weights = tmp_path / "weights.pt"
    torch.save(digits_cnn.state_dict(), weights)
    with pytest.raises(UserError, match="is not a robustaudit generator file"):
        ATN(load=str(weights)).fit(digits_cnn, train, LINF)
    card = Path(f"{atn}.json")
    card.write_text(card.read_text().replace('"sha256": "', '"sha256": "0'))
    with pytest.raises(UserError, match="does not match the sha256 on its card"):
        ATN(load=str(atn)).fit(digits_cnn, train, LINF)


def test_load_against_other_weights_warns_that_it_measures_transfer(fitted, digits_cnn_pgdat, train, tmp_path):
    path = fitted["atn"].save(tmp_path / "atn.pt")
    with pytest.warns(UserWarning, match="measure transfer"):
        ATN(load=str(path)).fit(digits_cnn_pgdat, train, LINF)


def test_generators_fit_any_input_shape():
    for shape in [(3, 32, 32), (1, 28, 28), (3, 17, 23), (1, 4, 4), (2, 100, 64)]:
        net = PerturbationNet(shape[0], width=8, down=downsamplings(*shape[1:]))
        assert net(torch.rand(2, *shape)).shape == (2, *shape)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    data = TensorData(torch.rand(16, 3, 17, 23), torch.randint(0, 7, (16,)), name="odd", num_classes=7)
    x, y = data.load(range(16))
    for cls in (ATN, AdvGAN):
        fitted = cls(epochs=1, width=8, batch=8, target=2).fit(model, data, LINF, seed=0)
        adv = fitted(model, x, y, LINF)
        assert adv.shape == x.shape and torch.all(lp_norm(adv - x, "linf") <= 0.2 * (1 + 1e-6))
        with pytest.raises(UserError, match=r"fit for inputs \(3, 17, 23\), got \(3, 16, 16\)"):
            fitted(model, x[:, :, :16, :16], y, LINF)


def test_settings_are_validated(digits_cnn, small_train):
    for spec, phrase in [({"epochs": 0}, "epochs must be an integer >= 1"), ({"lr": -1.0}, "lr must be > 0"),
                         ({"batch": 2.5}, "batch must be an integer"), ({"target": -1}, "target must be a class index"),
                         ({"alpha": 1.0}, "alpha must be > 1"), ({"load": ""}, "load must be the path")]:
        with pytest.raises(UserError, match=phrase):
            get("atn", **spec)
    with pytest.raises(UserError, match="target 12 is not a class of a model with 10 outputs"):
        AdvGAN(target=12, epochs=1).fit(digits_cnn, small_train, LINF)
    with pytest.raises(UserError, match="supports norms linf, l2, not 'l1'"):
        ATN().fit(digits_cnn, small_train, ThreatModel("l1", 1.0))
    with pytest.raises(UserError, match="is universal: it is fitted on training data as a column of its own"):
        ATN()(digits_cnn, *small_train.load(range(4)), LINF)
    assert isinstance(ATN(epochs=1, width=8).fit(digits_cnn, small_train, LINF), GeneratorAttack)


def test_split_specs():
    assert split_specs("atn,advgan") == ["atn", "advgan"]
    assert split_specs("fgsm,pgd:steps=50,restarts=2") == ["fgsm", "pgd:steps=50,restarts=2"]
    assert split_specs("atn:load=out/artifacts/a.pt,advgan:epochs=2") == ["atn:load=out/artifacts/a.pt",
                                                                         "advgan:epochs=2"]
    assert split_specs("eot:k=5(pgd:steps=3,restarts=2),fgsm") == ["eot:k=5(pgd:steps=3,restarts=2)", "fgsm"]
    assert split_specs("transfer:surrogate=a+b,di=0.5(mifgsm)") == ["transfer:surrogate=a+b,di=0.5(mifgsm)"]


def test_report_block(digits_cnn, tmp_path):
    """The audit's ``provenance["learned"]``: held-out success with an interval, norms, throughput beside
    PGD-10, transfer to the other digits catalog models; targeted success for a targeted generator."""
    result = robustaudit.audit("digits-cnn", "digits", attacks=["advgan:epochs=1,width=8,target=3"], eps=[0.2],
                               n=64, checks="off", cost=False, out=tmp_path, device="cpu")
    block = json.loads((tmp_path / "results.json").read_text())["provenance"]["learned"]
    assert block == json.loads(json.dumps(result.provenance["learned"]))
    assert block["reference"]["attack"] == "pgd" and block["reference"]["steps"] == 10
    (row,) = block["generators"]
    assert row["model"] == "digits-cnn" and row["eps"] == 0.2 and row["target"] == 3
    s = row["success"]
    assert 0 < s["n"] <= 64 and s["ci95"][0] <= s["rate"] <= s["ci95"][1]
    assert s["targeted"]["n"] < s["n"] and 0 <= s["targeted"]["k"] <= s["k"]
    assert 0.19 < row["mean_linf"] <= 0.2 * (1 + 1e-6) and row["mean_l2"] > row["mean_linf"]
    speed = row["throughput"]
    assert speed["generator_images_per_s"] > 0 and speed["pgd_images_per_s"] > 0 and speed["batch"] == 64
    assert speed["speedup"] == pytest.approx(speed["generator_images_per_s"] / speed["pgd_images_per_s"])
    assert {t["model"] for t in row["transfer"]} == {"digits-cnn-pgdat", "digits-cnn-trades", "digits-cnn-ls"}
    assert all(t["source"] == "catalog" and 0 <= t["k"] <= t["n"] for t in row["transfer"])
    assert row["fit_seconds"] > 0 and row["fit_passes"]["backward"] == 1438
    artifact = tmp_path / "artifacts" / "digits-cnn-advgan_epochs_1_width_8_target_3-eps0.2.pt"
    assert artifact.is_file() and Path(f"{artifact}.json").is_file()
    # the section in every rendering
    from rich.console import Console

    from robustaudit.reports.html import render_html
    from robustaudit.reports.markdown import render_markdown
    from robustaudit.reports.terminal import render_terminal

    rate = f"{100 * s['rate']:.1f} [{100 * s['ci95'][0]:.1f}–{100 * s['ci95'][1]:.1f}]"
    md = render_markdown(result)
    assert "## Learned attacks" in md and "### Transfer success %" in md and rate in md
    html = render_html(result, images=False)
    assert "<summary>Learned attacks</summary>" in html and "digits-cnn-trades" in html and rate in html
    console = Console(record=True, width=200)
    render_terminal(result, console)
    text = console.export_text()
    assert "Learned attacks: held-out success" in text and "advgan:epochs=1,width=8,target=3" in text and rate in text


@pytest.mark.slow
def test_default_settings_reach_a_high_success_rate(digits_cnn, train, test_split):
    """The defaults (10 epochs each): measured 0.68 (ATN) and 0.86 (AdvGAN) at Linf 0.2."""
    x, y = test_split
    for cls, threshold in ((ATN, 0.6), (AdvGAN, 0.7)):
        rate, _ = _success(digits_cnn, cls().fit(digits_cnn, train, LINF, seed=0), x, y)
        assert rate > threshold, f"{cls.name}: {rate:.3f}"


@pytest.mark.slow
def test_cli_fits_saves_and_reuses_a_generator(tmp_path, capsys):
    """``--attack atn,advgan`` fits both on the train split and saves them; ``atn:load=`` reuses one: same
    adversarial points, hence the same robust accuracy and held-out success, and no fit."""
    from robustaudit.cli import main

    common = ["--model", "digits-cnn", "--eps", "0.2", "--n", "48", "--checks", "off"]
    first, second = tmp_path / "first", tmp_path / "second"
    spec = "atn:epochs=1,width=8,samples=128,advgan:epochs=1,width=8,samples=128"
    assert main(["audit", *common, "--attack", spec, "--out", str(first)]) == 0, capsys.readouterr().err
    doc = json.loads((first / "results.json").read_text())
    fits = {f["attack"]: f for f in doc["provenance"]["fits"]}
    assert set(fits) == {"atn:epochs=1,width=8,samples=128", "advgan:epochs=1,width=8,samples=128"}
    artifact = first / fits["atn:epochs=1,width=8,samples=128"]["artifact"]
    assert artifact.is_file()
    assert main(["audit", *common, "--attack", f"atn:load={artifact}", "--out", str(second)]) == 0
    again = json.loads((second / "results.json").read_text())
    learned = {g["attack"].partition(":")[0]: g for g in doc["provenance"]["learned"]["generators"]}
    reused = again["provenance"]["learned"]["generators"][0]
    assert reused["loaded_from"] == str(artifact) and again["provenance"]["fits"][0]["backward_passes"] == 0
    assert reused["success"]["k"] == learned["atn"]["success"]["k"]
    assert reused["mean_l2"] == pytest.approx(learned["atn"]["mean_l2"], rel=1e-6)
    robust = [r["n_robust"] for d in (doc, again) for r in d["records"] if r["attack"].startswith("atn")]
    assert robust[0] == robust[1]


def test_transfer_targets_are_the_catalog_models_for_the_data(monkeypatch, digits_cnn):
    """Same data set, input shape and classes; a catalog model that cannot be loaded is left out with its
    reason rather than failing the audit."""
    from robustaudit.evaluate import learned
    from robustaudit.evaluate.runner import ModelEntry
    from robustaudit.models import loading

    real = loading.load_model

    def flaky(spec, **kw):
        if spec == "digits-cnn-ls":
            raise UserError("weights for 'digits-cnn-ls' are missing")
        return real(spec, **kw)

    monkeypatch.setattr(loading, "load_model", flaky)
    entries = [ModelEntry("mine", digits_cnn, {"spec": "digits-cnn"})]
    models, skipped = learned.transfer_models(entries, digits_split("test"))
    assert [(n, s) for n, _, s in models] == [("mine", "audited"), ("digits-cnn-pgdat", "catalog"),
                                             ("digits-cnn-trades", "catalog")]
    assert skipped == [{"model": "digits-cnn-ls", "reason": "weights for 'digits-cnn-ls' are missing"}]
