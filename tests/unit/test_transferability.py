"""The transferability matrix (issue 18 item 3): the diagonal is the white-box figure, each cell counts exactly the
samples both models classify correctly, a resumed run recomputes nothing, and the option resolves as documented."""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import pytest
import torch
from torch import nn

import robustaudit
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.store import STORE_FILE, Store

ATTACKS = ["fgsm", "pgd:steps=5"]
EPS = [0.1, 0.2, 0.3]  # the summary eps of models without a trained-for eps: the median, 0.2


class Constant(nn.Module):
    """Says ``label`` whatever the input (the input stays in the graph: a zero gradient, not a missing one)."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(label), classes).float() * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: two spin-wait tens of times slower on the loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def xy(digits_test):
    x, y = digits_test
    return x[:40], y[:40]


@pytest.fixture(scope="module")
def models(digits_cnn):
    """``a``, its exact copy ``twin`` and a constant model ``zero`` (right exactly on the label-0 samples)."""
    return {"a": digits_cnn, "twin": copy.deepcopy(digits_cnn), "zero": Constant(0)}


def _audit(models, xy, **kw):
    kw = {"attacks": ATTACKS, "eps": EPS, "checks": "off", "cost": False, "device": "cpu", "batch_size": 16, **kw}
    return robustaudit.audit(models, xy, **kw)


@pytest.fixture(scope="module")
def result(models, xy):
    return _audit(models, xy)


def _cells(result):
    return {(c["source"], c["target"]): c for c in result.provenance["transfer"]["cells"]}


def _clean_correct(model, xy):
    x, y = xy
    with torch.no_grad():
        return {i for i, ok in enumerate((model(x).argmax(1) == y).tolist()) if ok}


def test_strongest_attack_at_the_summary_eps(result):
    block = result.provenance["transfer"]
    assert (block["eps"], block["norm"], block["models"]) == (0.2, "linf", ["a", "twin", "zero"])
    recs = result.records
    pooled = {}
    for attack in ATTACKS:
        rows = recs[(recs["attack"] == attack) & (recs["eps"] == 0.2)]
        pooled[attack] = rows["n_robust"].sum() / rows["n_clean_correct"].sum()
    assert block["candidates"] == pytest.approx(pooled)
    assert block["attack"] == min(pooled, key=pooled.get) == "pgd:steps=5"
    assert block["sources"] == ["a", "twin", "zero"] and block["passes"] > 0


def test_diagonal_is_the_white_box_figure(result, models, xy):
    """The diagonal is the attack run once at the summary eps: the matrix's own figure of an audit on that eps
    alone, and (a sweep from smaller radii being a worst case) at most the swept matrix's figure, recorded beside."""
    alone = _audit({"a": models["a"], "zero": models["zero"]}, xy, eps=[0.2], transfer=False)
    cells = _cells(result)
    for name in ("a", "zero"):
        row = alone.records[(alone.records["model"] == name) & (alone.records["attack"] == "pgd:steps=5")].iloc[0]
        diag = cells[(name, name)]
        assert diag["white_box"] and (diag["n"], diag["fooled"]) == (row["n_clean_correct"],
                                                                      row["n_clean_correct"] - row["n_robust"])
        swept = result.records[(result.records["model"] == name) & (result.records["attack"] == "pgd:steps=5")
                               & (result.records["eps"] == 0.2)].iloc[0]
        assert diag["matrix"] == {"n": swept["n_clean_correct"], "fooled": swept["n_clean_correct"] - swept["n_robust"]}
        assert diag["fooled"] <= diag["matrix"]["fooled"]
    assert cells[("a", "a")]["fooled"] > 0 and cells[("zero", "zero")]["fooled"] == 0


def test_grid_of_one_eps_diagonal_equals_the_matrix_cell(models, xy):
    r = _audit({"a": models["a"], "twin": models["twin"]}, xy, eps=[0.2])
    for name in ("a", "twin"):
        diag = _cells(r)[(name, name)]
        assert (diag["n"], diag["fooled"]) == (diag["matrix"]["n"], diag["matrix"]["fooled"])
        assert diag["rate"] == pytest.approx(1 - r.robust_accuracy(name, "pgd:steps=5", 0.2) / r.clean_accuracy(name))


def test_each_cell_counts_the_samples_both_models_get_right(result, models, xy):
    cells = _cells(result)
    a, zero = _clean_correct(models["a"], xy), _clean_correct(models["zero"], xy)
    assert zero == {i for i, y in enumerate(xy[1].tolist()) if y == 0}
    # an exact copy: the same samples, and the same points fool it as fool the source
    assert (cells[("a", "twin")]["n"], cells[("a", "twin")]["fooled"]) == (cells[("a", "a")]["n"], cells[("a", "a")]["fooled"]) == (len(a), cells[("a", "a")]["fooled"])
    assert cells[("twin", "a")]["fooled"] == cells[("twin", "twin")]["fooled"] == cells[("a", "a")]["fooled"]
    # nothing fools a constant model; it counts only the samples it gets right (label 0) that the other gets right
    assert (cells[("a", "zero")]["n"], cells[("a", "zero")]["fooled"]) == (len(a & zero), 0)
    assert cells[("zero", "zero")]["n"] == len(zero) and cells[("zero", "a")]["n"] == len(a & zero)


def test_off_diagonal_cells_score_the_source_points_recomputed(result, models, xy):
    """``zero`` -> ``a`` and ``a`` -> ``zero`` aside, each off-diagonal cell equals crafting the attack on the
    source directly (keyed draws: the same points whatever the batch) and scoring it on the target."""
    from robustaudit.attacks.registry import from_spec

    attack, (x, y) = from_spec("pgd:steps=5"), xy
    a = models["a"]
    ids = sorted(_clean_correct(a, xy))
    adv = attack(a, x[ids], y[ids], ThreatModel("linf", 0.2), ids=torch.tensor(ids), seed=0)
    with torch.no_grad():
        wrong_a = (a(adv).argmax(1) != y[ids]).tolist()
    cell = _cells(result)[("a", "twin")]
    assert cell["fooled"] == sum(wrong_a)
    lo, hi = wilson_interval(cell["fooled"], cell["n"])
    assert cell["ci"] == [lo, hi] and cell["rate"] == pytest.approx(cell["fooled"] / cell["n"])


def test_resume_recomputes_nothing(models, xy, tmp_path, monkeypatch):
    first = tmp_path / "run"
    done = _audit(models, xy, out=first, attacks=["pgd:steps=3"], eps=[0.2])
    copy_ = tmp_path / "copy"
    shutil.copytree(first, copy_)
    with Store(copy_ / STORE_FILE) as store:
        store.put_meta("finished", False)
    (copy_ / "results.json").unlink()
    import robustaudit.evaluate.transferability as module

    calls = []
    monkeypatch.setattr(module, "transferability", lambda *a, **k: calls.append(1))
    again = _audit(models, xy, out=copy_, resume=True, attacks=["pgd:steps=3"], eps=[0.2])
    assert calls == []
    assert again.provenance["resume"]["computed_stages"] == 0
    strip = {"seconds"}
    assert ({k: v for k, v in again.provenance["transfer"].items() if k not in strip}
            == {k: v for k, v in json.loads(json.dumps(done.provenance["transfer"])).items() if k not in strip})


def test_option_resolves_per_audit(models, xy):
    from robustaudit.data.base import as_image_data
    from robustaudit.evaluate.spec import ModelSpec, resolve_spec

    data = as_image_data(xy)
    two, one = (ModelSpec("python:a"), ModelSpec("python:b")), (ModelSpec("python:a"),)
    assert resolve_spec(data, models=two).transfer is True
    assert resolve_spec(data, models=two, transfer=False).transfer is False
    assert resolve_spec(data, models=one).transfer is False
    with pytest.warns(UserWarning, match="two models or more; skipped"):
        assert resolve_spec(data, models=one, transfer=True).transfer is False
    with pytest.raises(UserError, match="--transfer must be on or off"):
        resolve_spec(data, models=two, transfer="yes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = _audit(models["a"], xy, attacks=["fgsm"], eps=[0.1])
    assert "transfer" not in single.provenance


def test_no_candidate_attack_is_skipped_with_a_reason(models, xy):
    r = _audit({"a": models["a"], "twin": models["twin"]}, xy, attacks=["deepfool:steps=3"], eps=[0.2])
    block = r.provenance["transfer"]
    assert set(block) == {"skipped", "seconds"}
    assert block["skipped"].startswith("no attack of the audit crafts one point per sample within eps=0.2")


def test_cli_flag_and_toml_key(tmp_path):
    from robustaudit.cli import build_parser
    from robustaudit.cli_audit import options_from_args
    from robustaudit.evaluate.plan import load_toml

    toml = tmp_path / "a.toml"
    toml.write_text("transfer = false\n")
    assert load_toml(toml)["transfer"] is False
    args = build_parser().parse_args(["audit", "--transfer", "off"])
    assert options_from_args(args)["transfer"] is False
    toml.write_text('transfer = "off"\n')
    with pytest.raises(UserError):
        load_toml(toml)


def test_report_section_table_and_heat_map(result):
    from robustaudit.reports.markdown import render_markdown
    from robustaudit.reports.plots import draw
    from robustaudit.reports.view.transferability import transfer_rows, transfer_section

    cells = _cells(result)
    rows = transfer_rows(result)
    assert [r[0] for r in rows] == ["a", "twin", "zero"] and all(len(r) == 4 for r in rows)
    diag = cells[("a", "a")]
    assert rows[0][1] == f"{100 * diag['rate']:.1f} [{100 * diag['ci'][0]:.1f}–{100 * diag['ci'][1]:.1f}] ({diag['n']}) *"
    assert not rows[0][2].endswith("*") and rows[2][3].endswith("*")
    section = transfer_section(result)
    assert section.title == "Transferability" and section.images[0].kind == "transfer_heatmap"
    assert "pgd:steps=5 run on that model at eps=0.2" in section.notes[0]
    assert "## Transferability" in render_markdown(result)
    assert draw("transfer_heatmap", result).startswith(b"\x89PNG")


def test_report_says_why_it_was_skipped(result):
    from robustaudit.reports.view.transferability import transfer_section

    skipped = copy.copy(result)
    skipped.provenance = {**result.provenance, "transfer": {"skipped": "no attack of the audit crafts one point"}}
    assert transfer_section(skipped).paragraph == "Skipped: no attack of the audit crafts one point."
    skipped.provenance = {k: v for k, v in result.provenance.items() if k != "transfer"}
    assert transfer_section(skipped) is None
