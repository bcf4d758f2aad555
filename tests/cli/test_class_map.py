"""A model with more outputs than the data's classes is audited on the data's labels (issue 17, item 7):
the label map (by name, identity, ``--class-map``), the restricted model as what is attacked, the map in
results.json, the reports and the resume fingerprint.

The data is a 2-class ImageFolder written as PNG folders; the model has 10 outputs computed from the
mean brightness ``m`` of a uniform 8x8 image (dark: m = 0.2, bright: m = 0.8), so every figure is known
by hand:

- outputs 0 = 10 m and 1 = 10 (1 - m): cat -> 0, dog -> 1 predicts "cat" on bright images;
- outputs 3 = 10 m + 1 and 7 = 10 (1 - m) + 1: cat -> 7, dog -> 3 predicts "cat" on dark images;
- output 9 = 50 always wins over all ten outputs, so no sample is correct on the full model;
- output 5 = 200 (x[0, 0, 0] - x[0, 0, 1]) reaches 20 > any mapped logit at Linf eps 0.05 (one pixel up,
  its neighbour down), which an attack on the full model would use; on the mapped outputs a prediction
  changes only when m crosses 0.5, i.e. at eps >= 0.3 and never at 0.05.

cat/ holds 3 dark and 1 bright image, dog/ 2 dark and 2 bright.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustaudit.cli import main

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn as nn


    class TenWay(nn.Module):
        def __init__(self, names=None):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(10.0))
            if names is not None:
                self.class_names = names

        def forward(self, x):
            m = x.mean((1, 2, 3))
            zero = 0 * m
            cols = {0: self.scale * m, 1: self.scale * (1 - m), 3: self.scale * m + 1, 7: self.scale * (1 - m) + 1,
                    5: 200 * (x[:, 0, 0, 0] - x[:, 0, 0, 1]), 9: zero + 50}
            return torch.stack([cols.get(k, zero) for k in range(10)], 1)


    def plain():
        return TenWay()


    def named():
        return TenWay(["a", "b", "c", "dog", "e", "f", "g", "Cat", "i", "j"])


    def two():
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 1))
    """
)
BRIGHTNESS = {"cat": [0.2, 0.2, 0.2, 0.8], "dog": [0.2, 0.2, 0.8, 0.8]}
#: by hand: cat -> 0, dog -> 1 is right on the bright cat and the two dark dogs
IDENTITY = 3 / 8
#: by hand: cat -> 7, dog -> 3 is right on the three dark cats and the two bright dogs
SWAPPED = 5 / 8
SMALL = ["--attack", "pgd:steps=10", "--eps", "0.05,0.35", "--checks", "off"]


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "images"
    for cls, values in BRIGHTNESS.items():
        (root / cls).mkdir(parents=True)
        for i, v in enumerate(values):
            Image.fromarray(np.full((8, 8, 3), round(v * 255), np.uint8)).save(root / cls / f"{i}.png")
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    return {"data": f"imagefolder:{root}", "nets": str(nets), "out": str(tmp_path / "out")}


def run(s: dict[str, str], model: str, *extra: str) -> dict:
    assert main(["audit", "--quiet", "--model", f"{s['nets']}:{model}", "--data", s["data"], "--out", s["out"],
                 *SMALL, *extra]) == 0
    return json.loads((Path(s["out"]) / "results.json").read_text())


def accuracy(doc: dict, attack: str, eps: float) -> tuple[float, float]:
    row = next(r for r in doc["records"] if r["attack"] == attack and r["eps"] == pytest.approx(eps))
    return row["clean_accuracy"], row["robust_accuracy"]


def test_default_map_by_name_and_the_attack_sees_only_the_mapped_outputs(setup, capsys) -> None:
    doc = run(setup, "named")
    # "Cat" is output 7 and "dog" output 3: matched by name (case ignored)
    card = doc["provenance"]["models"][0]["class_map"]
    assert card == {"how": "by name", "outputs": 10, "map": {"cat": 7, "dog": 3},
                    "output_names": {"cat": "Cat", "dog": "dog"}}
    # output 9 wins on every image and output 5 is one pixel step away from winning: counted on the full
    # model, nothing would be correct; on the mapped outputs 5 of 8 are, and no eps-0.05 attack flips them
    assert accuracy(doc, "pgd:steps=10", 0.05) == (pytest.approx(SWAPPED), pytest.approx(SWAPPED))
    assert accuracy(doc, "pgd:steps=10", 0.35)[1] == 0.0  # m crosses 0.5: every mapped prediction flips
    out = capsys.readouterr().out
    assert "label map: nets:named: cat → 7 (Cat), dog → 3; matched by name; audited on 2 of the model's 10 outputs" in out
    report = (Path(setup["out"]) / "report.md").read_text()
    assert "- **label map:** nets:named: cat → 7 (Cat), dog → 3; matched by name" in report
    assert "label map" in (Path(setup["out"]) / "report.html").read_text()


def test_default_identity_map_warns(setup, capsys) -> None:
    doc = run(setup, "plain")
    assert doc["provenance"]["models"][0]["class_map"] == {"how": "identity", "outputs": 10, "map": {"cat": 0, "dog": 1}}
    assert accuracy(doc, "pgd:steps=10", 0.05) == (pytest.approx(IDENTITY), pytest.approx(IDENTITY))
    err = capsys.readouterr().err
    assert "has 10 outputs and data" in err and "the model names no outputs: it is audited on outputs 0..1" in err


@pytest.mark.parametrize("form", ["pairs", "json"])
def test_explicit_class_map(setup, tmp_path: Path, form: str) -> None:
    value = "dog=3,cat=7"
    if form == "json":
        value = str(tmp_path / "map.json")
        Path(value).write_text('{"dog": 3, "cat": 7}')
    doc = run(setup, "plain", "--class-map", value)
    card = doc["provenance"]["models"][0]["class_map"]
    assert card == {"how": "given", "outputs": 10, "map": {"cat": 7, "dog": 3}}  # in the data's class order
    assert doc["provenance"]["config"]["class_map"] == {"cat": 7, "dog": 3}
    assert accuracy(doc, "pgd:steps=10", 0.05) == (pytest.approx(SWAPPED), pytest.approx(SWAPPED))


def test_resume_refuses_another_map(setup, capsys) -> None:
    run(setup, "plain", "--class-map", "cat=7,dog=3")
    argv = ["audit", "--quiet", "--model", f"{setup['nets']}:plain", "--data", setup["data"], "--out", setup["out"],
            *SMALL, "--resume"]
    assert main([*argv, "--class-map", "cat=7,dog=3"]) == 0  # the same map: every batch reused
    capsys.readouterr()
    assert main([*argv, "--class-map", "cat=0,dog=1"]) == 2
    err = capsys.readouterr().err
    assert "the label map of model 'nets:plain' differs (stored {'cat': 7, 'dog': 3}, now {'cat': 0, 'dog': 1})" in err


def test_fewer_outputs_than_classes_is_one_line(setup, capsys) -> None:
    argv = ["audit", "--quiet", "--model", f"{setup['nets']}:two", "--data", setup["data"], "--out", setup["out"], *SMALL]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: model 'nets:two' has 1 outputs but data '{setup['data']}' has 2 classes: a classifier "
                   "needs an output per class (a model with more outputs is audited on the data's classes)"]


def test_python_api_and_unnamed_data(setup) -> None:
    """``audit(class_map={...})`` maps as the flag does; data without class names (an ``(x, y)`` pair) keeps
    the model's own output indices as labels, every output counting, unless a map is given."""
    import importlib.util

    from robustaudit import audit

    spec = importlib.util.spec_from_file_location("nets_cm", setup["nets"])
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    x = torch.stack([torch.full((3, 8, 8), v) for v in (0.2, 0.8)])
    y = torch.tensor([9, 1])  # labels as the model's outputs: output 9 always wins
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2 samples: the small-audit warnings
        full = audit(nets.plain(), (x, y), attacks="fgsm", eps=0.05, checks="off", cost=False)
        mapped = audit(nets.plain(), (x, torch.tensor([0, 1])), attacks="fgsm", eps=0.05, checks="off", cost=False,
                       class_map={"0": 7, "1": 3})
    assert full.records["clean_accuracy"].iloc[0] == 0.5  # sample 0 (label 9) right, sample 1 (label 1) wrong
    assert "class_map" not in full.provenance["models"][0]
    # 0 -> 7 wins on the dark image, 1 -> 3 on the bright one: both right
    assert mapped.records["clean_accuracy"].iloc[0] == 1.0
    assert mapped.provenance["models"][0]["class_map"]["map"] == {"0": 7, "1": 3}
    from robustaudit.reports.view.overview import data_items

    assert [k for k, _ in data_items(full)].count("label map") == 0  # stated only where a map is in use
    assert dict(data_items(mapped))["label map"] == "TenWay: 0 → 7, 1 → 3; --class-map; audited on 2 of the model's 10 outputs"


def test_toml_table_and_the_probability_check_reads_every_output(setup, tmp_path: Path) -> None:
    """``class_map`` as a TOML table gives the flag's spec; a softmax model audited on 2 of its 10 outputs
    still fails "outputs are probabilities" (its 2 restricted scores do not sum to 1, all 10 do)."""
    from robustaudit.checks.probes import probe_model
    from robustaudit.evaluate.api import spec_of
    from robustaudit.evaluate.plan import load_toml
    from robustaudit.models.wrappers import ClassSubset, prepare

    toml = tmp_path / "audit.toml"
    toml.write_text(f'data = "{setup["data"]}"\nmodel = "digits-cnn"\n[class_map]\ndog = 3\ncat = 7\n')
    spec, _ = spec_of(load_toml(toml))
    assert spec.class_map == (("cat", 7), ("dog", 3))  # the data's class order
    assert spec.config()["class_map"] == {"cat": 7, "dog": 3}
    assert "class_map" not in spec_of({"data": setup["data"]})[0].config()  # absent unless given

    torch.manual_seed(0)
    softmax = ClassSubset(prepare(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10),
                                                      torch.nn.Softmax(1))), [7, 3])
    x = torch.rand(4, 3, 8, 8)
    verdict = next(v for v in probe_model("m", softmax, x, torch.tensor([0, 1, 0, 1])).verdicts
                   if v.id == "logits-output")
    assert verdict.status == "fail" and "outputs are probabilities" in verdict.message


def test_names_match_synonyms_and_ambiguous_names_are_refused() -> None:
    """ImageNet-style output names: a data class matches an output's comma-separated synonym; a name two
    outputs carry is refused in one line rather than guessed."""
    from robustaudit.core.errors import UserError
    from robustaudit.data.image import TensorData
    from robustaudit.evaluate.classmap import apply_class_maps
    from robustaudit.evaluate.entries import ModelEntry

    data = TensorData(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), class_names=["tabby cat", "Golden_Retriever"])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    net.class_names = ["tench, Tinca tinca", "golden retriever", "crane", "tabby, tabby cat", "crane"]
    entry = ModelEntry("m", net, {"source": "python"})
    apply_class_maps([entry], data, None)
    assert entry.info["class_map"]["map"] == {"tabby cat": 3, "Golden_Retriever": 1}
    assert entry.module(torch.rand(2, 3, 4, 4)).shape == (2, 2)
    crane = TensorData(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), class_names=["crane", "tench"])
    with pytest.raises(UserError, match="not every class name matches exactly one output: class 'crane' matches outputs 2, 4; give --class-map"):
        apply_class_maps([ModelEntry("m", net, {"source": "python"})], crane, None)
    twice = TensorData(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), class_names=["tabby", "tabby cat"])
    with pytest.raises(UserError, match="classes 'tabby' and 'tabby cat' both match output 3"):
        apply_class_maps([ModelEntry("m", net, {"source": "python"})], twice, None)


def test_pytest_fixture_passes_class_map(setup, monkeypatch) -> None:
    """The plugin's ``robustness.audit(..., class_map=...)`` reaches the audit (smoke profile, no pytester;
    the model-cost stage left out, it is not what this tests and costs seconds)."""
    import importlib.util

    from robustaudit.evaluate import api

    real = api.audit
    monkeypatch.setattr(api, "audit", lambda *args, **kwargs: real(*args, cost=False, **kwargs))

    from robustaudit.plugin.fixture import ItemRecord, Robustness
    from robustaudit.plugin.settings import SessionOptions

    spec = importlib.util.spec_from_file_location("nets_cm2", setup["nets"])
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    x = torch.stack([torch.full((3, 8, 8), v) for v in (0.2, 0.8, 0.2)])
    fixture = Robustness(SessionOptions(profile="smoke"), ItemRecord(marker={}), lambda key, value: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fixture.audit(nets.plain(), (x, torch.tensor([0, 1, 1])), attacks="fgsm", eps=0.05,
                               class_map="0=7,1=3")
    # 0 -> 7 wins on dark images, 1 -> 3 on bright: samples 0 and 1 right, sample 2 (dark, label 1) wrong
    assert result.records["clean_accuracy"].iloc[0] == pytest.approx(2 / 3)
    assert result.settings["class_map"] == {"0": 7, "1": 3}
