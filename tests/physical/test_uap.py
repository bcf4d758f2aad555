"""Universal adversarial perturbations (``uap``): the eps-ball, deterministic fits, load=PATH and its refusals,
the fooling rate above a same-norm noise control on digits32-resnet (paired exact test), the audit's section
and a resume that fits nothing again."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from robustaudit.attacks.uap import UAP, noise_control
from robustaudit.cli import main
from robustaudit.core.errors import UserError
from robustaudit.core.norms import lp_norm
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import TensorData
from robustaudit.data.digits import digits32_split
from robustaudit.evaluate.metrics import binomial_tail
from robustaudit.models.catalog import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(n: int = 300) -> TensorData:
    x, y = digits32_split("train").load(range(n))
    return TensorData(x, y, name="digits32", num_classes=10)


@pytest.fixture(scope="module")
def resnet():
    return create_model("digits32-resnet")


@pytest.mark.parametrize("method", ["sgd", "deepfool"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_fitted_perturbation_stays_in_the_ball_and_the_bounds(resnet, method, norm, eps):
    threat = ThreatModel(norm, eps)
    n = 24 if method == "sgd" else 8  # the paper's fit runs DeepFool image by image
    fitted = UAP(method=method, fit_n=n, passes=2, batch_size=8).fit(resnet, _train(n), threat, seed=1)
    assert fitted.v.shape == (1, 32, 32)
    assert float(lp_norm(fitted.v[None], norm)[0]) <= eps * (1 + 1e-5)
    assert float(lp_norm(fitted.v[None], norm)[0]) > 0.2 * eps  # it moved (both fits change v here)
    x, y = digits32_split("test").load(range(16))
    adv = fitted(resnet, x, y, threat)
    assert adv.min() >= 0 and adv.max() <= 1
    assert bool((lp_norm(adv - x, norm) <= eps * (1 + 1e-5)).all())
    # the same v on every image: where nothing was clipped the perturbation is v itself
    inside = ((x + fitted.v) >= 0) & ((x + fitted.v) <= 1)
    assert torch.allclose((adv - x)[inside], fitted.v.expand_as(x)[inside], atol=1e-6)
    # applied at a smaller eps, v is projected onto that ball
    small = fitted(resnet, x, y, ThreatModel(norm, eps / 2))
    assert bool((lp_norm(small - x, norm) <= eps / 2 * (1 + 1e-5)).all())
    assert fitted.record["method"] == method and 1 <= fitted.record["passes_run"] <= 2


def test_noise_control_has_the_norm_and_is_keyed_per_sample():
    ids = torch.tensor([3, 9, 4])
    linf = noise_control(ids, (1, 8, 8), "linf", 0.1, seed=0)
    assert torch.allclose(linf.abs(), torch.full_like(linf, 0.1))
    l2 = noise_control(ids, (1, 8, 8), "l2", 0.7, seed=0)
    assert torch.allclose(lp_norm(l2, "l2"), torch.full((3,), 0.7))
    assert torch.equal(noise_control(ids[1:2], (1, 8, 8), "l2", 0.7, seed=0), l2[1:2])  # batch-independent
    assert not torch.equal(l2[0], l2[1])


def test_fooling_rate_beats_the_noise_control_on_digits32_resnet(resnet):
    """The done-when of issue 18 item 4: a small fit (300 training images, at most 3 passes) against 200
    held-out test images; the UAP fools far more than random signs of the same Linf norm, paired."""
    eps = 0.03
    threat = ThreatModel("linf", eps)
    fitted = UAP(fit_n=300, passes=3).fit(resnet, _train(300), threat, seed=0)
    x, y = digits32_split("test").load(range(200))
    ids = torch.arange(200)
    with torch.no_grad():
        clean = resnet(x).argmax(1)
        fooled = resnet(fitted(resnet, x, y, threat)).argmax(1) != clean
        noisy = resnet((x + noise_control(ids, (1, 32, 32), "linf", eps, seed=0)).clamp(0, 1)).argmax(1) != clean
    b, c = int((fooled & ~noisy).sum()), int((~fooled & noisy).sum())
    assert fooled.float().mean() > 0.4 and noisy.float().mean() < 0.1
    assert binomial_tail(b, c) < 0.05


def test_fit_is_deterministic_and_load_round_trips(resnet, tmp_path):
    threat = ThreatModel("l2", 0.5)
    train = _train(32)
    a = UAP(fit_n=32, passes=1, batch_size=16).fit(resnet, train, threat, seed=4)
    b = UAP(fit_n=32, passes=1, batch_size=16).fit(resnet, train, threat, seed=4)
    c = UAP(fit_n=32, passes=1, batch_size=16).fit(resnet, train, threat, seed=5)
    assert torch.equal(a.v, b.v) and not torch.equal(a.v, c.v)
    a.save(tmp_path / "v.pt")
    assert (tmp_path / "v.png").is_file()
    loaded = UAP(load=str(tmp_path / "v.pt")).fit(resnet, train, threat)
    assert torch.equal(loaded.v, a.v) and loaded.norm == "l2" and loaded.eps == 0.5
    assert loaded.record["loaded_from"] == str(tmp_path / "v.pt")
    x, y = digits32_split("test").load(range(8))
    assert torch.equal(loaded(resnet, x, y, threat), a(resnet, x, y, threat))
    with pytest.raises(UserError, match="is an l2 perturbation; the audit's norm is linf"):
        UAP(load=str(tmp_path / "v.pt")).fit(resnet, train, ThreatModel("linf", 0.5))


def _hostile(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """File -> the one line it must produce."""
    good = {"format": "robustaudit-uap/1", "v": torch.zeros(1, 32, 32), "norm": "linf", "eps": 0.1, "record": {}}
    cases = {
        "garbage": (b"not a torch file", "is not a perturbation saved by robustaudit"),
        "other": ({"v": torch.zeros(1, 32, 32)}, "expected format robustaudit-uap/1"),
        "shape": ({**good, "v": torch.zeros(1, 8, 8)}, r"shape \(1, 8, 8\), but the images have shape \(1, 32, 32\)"),
        "flat": ({**good, "v": torch.zeros(32 * 32)}, r"expected finite floats of shape \(C, H, W\)"),
        "nan": ({**good, "v": torch.full((1, 32, 32), float("nan"))}, "expected finite floats"),
        "norm": ({**good, "norm": "l0"}, "has a bad norm or eps"),
        "large": ({**good, "v": torch.full((1, 32, 32), 0.5)}, "linf norm 0.5, larger than its eps 0.1"),
    }
    out = {}
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        out[name] = (path, message)
    out["missing"] = (tmp_path / "nowhere.pt", "not found")
    return out


def test_hostile_load_files_are_one_line_user_errors(resnet, tmp_path):
    train = _train(4)
    for path, message in _hostile(tmp_path).values():
        with pytest.raises(UserError, match=message):
            UAP(load=str(path)).fit(resnet, train, ThreatModel("linf", 0.1))


def test_cli_hostile_load_exits_2_with_one_line(tmp_path, capsys):
    path, _ = _hostile(tmp_path)["large"]
    code = main(["audit", "--data", "digits32", "--model", "digits32-resnet", "--attack", f"uap:load={path}", "--eps",
                 "0.1", "--n", "8", "--checks", "off", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "larger than its eps 0.1" in lines[0], err


def test_audit_section_load_reuse_and_resume_without_refit(tmp_path, monkeypatch):
    import robustaudit
    from robustaudit.evaluate.store import STORE_FILE, Store
    from robustaudit.reports.markdown import render_markdown

    out = tmp_path / "run"
    models = ["digits32-resnet", "digits32-cnn"]
    options = dict(attacks=["uap:fit_n=64,passes=1"], eps=[0.02, 0.05], n=48, batch_size=48, checks="off", cost=False,
                   device="cpu")
    result = robustaudit.audit(models, "digits32", out=out, **options)
    doc = json.loads((out / "results.json").read_text())
    rows = doc["provenance"]["uap"]["rows"]
    assert [(r["model"], r["eps"]) for r in rows] == [(m, e) for m in models for e in (0.02, 0.05)]
    for r in rows:
        assert r["n"] == 48 and 0 <= r["fooling"] <= 1 and 0 <= r["control"] <= 1 and (out / r["artifact"]).is_file()
        assert [t["model"] for t in r["transfer"]] == [m for m in models if m != r["model"]]
        # the rates' numerators agree with the discordant pairs (both counted on the same 48 samples)
        assert round(r["fooling"] * 48) - round(r["control"] * 48) == r["discordant"][0] - r["discordant"][1]
    report = render_markdown(result)
    assert "## Universal adversarial perturbations" in report and "### Transfer fooling %" in report
    from robustaudit.reports.plots import draw

    assert draw("uap_curve", result)[:8] == b"\x89PNG\r\n\x1a\n"  # the HTML report's figure
    # load= reuses a saved perturbation: the same section numbers, nothing fitted
    pt = out / rows[1]["artifact"]
    again = robustaudit.audit("digits32-resnet", "digits32", out=tmp_path / "again",
                              **{**options, "attacks": [f"uap:load={pt}"], "eps": [0.05]})
    (row,) = again.provenance["uap"]["rows"]
    assert (row["fooling"], row["control"], row["loaded_from"]) == (rows[1]["fooling"], rows[1]["control"], str(pt))
    assert again.provenance["fits"][0]["backward_passes"] == 0
    # a resumed run reads the perturbations back from OUT/artifacts and fits nothing, even for a section
    # that must be computed again
    calls = []
    original = UAP.fit
    monkeypatch.setattr(UAP, "fit", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with Store(out / STORE_FILE) as store:
        store.put_meta("finished", False)
    with sqlite3.connect(out / STORE_FILE) as db:
        assert db.execute("DELETE FROM stages WHERE name = 'uap'").rowcount == 1
    (out / "results.json").unlink()
    robustaudit.audit(models, "digits32", out=out, resume=True, **options)
    assert calls == []
    assert json.loads((out / "results.json").read_text())["provenance"]["uap"]["rows"] == rows
