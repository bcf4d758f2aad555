"""``--n N`` audits the first N samples, so they must stand for the data (session 8's trial, bugs A2 and B1).

An ImageFolder is stored class by class; its samples are read round-robin over the classes so the first N
cover every class. Data in its own order whose first N cover far fewer classes than chance explains (a
tensors file sorted by class) is audited with a warning and the report says how many classes were audited.
Data of a single class is refused before anything runs.

The model always predicts class 3, so its clean accuracy is the share of class-3 samples among the audited
ones: 3 of 12 when the first 12 of 4 x 10 samples come round-robin, 0 of 12 when they come class by class.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustaudit
from robustaudit.cli import main
from robustaudit.core.errors import UserError

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn as nn


    class AlwaysThree(nn.Module):
        # 4 outputs, output 3 always wins; the 0 * x term keeps the input in the graph
        def __init__(self, k=4):
            super().__init__()
            self.bias = nn.Parameter(torch.eye(k)[3])

        def forward(self, x):
            return self.bias + 0 * x.flatten(1).sum(1, keepdim=True)


    def four():
        return AlwaysThree()


    def ten():
        return AlwaysThree(10)
    """
)
CLASSES = ["ant", "bee", "cow", "dog"]
PER_CLASS = 10
SMALL = ["--n", "12", "--attack", "fgsm", "--eps", "0.1", "--checks", "off", "--transfer", "off", "--quiet"]


@pytest.fixture()
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _imagefolder(root: Path, classes: list[str]) -> str:
    """``ROOT/<class>/<k>.png``: 8x8 RGB PNGs, ``PER_CLASS`` per class, a different grey for each."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            Image.fromarray(np.full((8, 8, 3), 20 * c + k, np.uint8)).save(root / name / f"{k:02d}.png")
    return f"imagefolder:{root}"


def _audit(tmp_path: Path, nets: Path, data: str, capsys) -> tuple[dict, str, str]:
    out = tmp_path / "out"
    assert main(["audit", "--model", f"{nets}:four", "--data", data, "--out", str(out), *SMALL]) == 0
    err = capsys.readouterr().err
    return json.loads((out / "results.json").read_text()), (out / "report.md").read_text(), err


def _clean(doc: dict) -> tuple[int, float]:
    row = doc["records"][0]
    return row["n"], row["clean_accuracy"]


def test_the_first_n_of_an_imagefolder_cover_every_class(tmp_path: Path, nets: Path, capsys) -> None:
    doc, report, err = _audit(tmp_path, nets, _imagefolder(tmp_path / "images", CLASSES), capsys)
    # round-robin: the first 12 are 3 of each class, 3 of them "dog" (class 3); class by class it would be 0
    assert _clean(doc) == (12, pytest.approx(0.25))
    assert "ordered by class" not in err
    assert "classes_audited" not in doc["provenance"]["data"]
    assert "- **classes:** 4\n" in report


def test_the_first_n_of_data_sorted_by_class_warn_and_the_report_says_so(tmp_path: Path, nets: Path, capsys) -> None:
    x = torch.rand(len(CLASSES) * PER_CLASS, 3, 8, 8)
    y = torch.arange(len(CLASSES)).repeat_interleave(PER_CLASS)  # 0 x 10, 1 x 10, 2 x 10, 3 x 10
    torch.save({"x": x, "y": y, "class_names": CLASSES}, tmp_path / "sorted.pt")
    doc, report, err = _audit(tmp_path, nets, f"tensors:{tmp_path / 'sorted.pt'}", capsys)
    assert _clean(doc) == (12, 0.0)  # 10 ants and 2 bees: not one dog
    assert (f"warning: the first 12 samples of tensors:{tmp_path / 'sorted.pt'} cover 2 of its 4 classes (50%; a "
            "random 12 would cover about 4): the data looks ordered by class") in err
    assert doc["provenance"]["data"]["classes_audited"] == 2
    assert "- **classes:** 2 of 4 present in the audited samples\n" in report


def test_the_api_warns_about_sorted_tensors(nets: Path) -> None:
    x = torch.rand(len(CLASSES) * PER_CLASS, 3, 8, 8)
    y = torch.arange(len(CLASSES)).repeat_interleave(PER_CLASS)
    model = robustaudit.models.loading.load_model(f"{nets}:four").module
    with pytest.warns(UserWarning, match=r"the first 12 samples of data cover 2 of its 4 classes \(50%"):
        result = robustaudit.audit(model, (x, y), n=12, attacks="fgsm", eps=[0.1], checks="off", cost=False,
                                   transfer=False, device="cpu")
    assert result.provenance["data"]["classes_audited"] == 2


def test_single_class_data_is_refused_before_anything_runs(tmp_path: Path, nets: Path, capsys) -> None:
    data = _imagefolder(tmp_path / "images", ["only"])
    out = tmp_path / "out"
    assert main(["audit", "--model", f"{nets}:ten", "--data", data, "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data '{data}' has a single class ('only'): a classifier audited on the data's "
                          "classes always predicts it, so no attack can change a prediction")
    assert len(err.strip().splitlines()) == 1 and not list(out.glob("*"))  # nothing ran, nothing written
    model = robustaudit.models.loading.load_model(f"{nets}:ten").module
    with pytest.raises(ValueError, match="has a single class") as info:
        robustaudit.audit(model, data, n=12, attacks="fgsm", eps=[0.1], checks="off", out=tmp_path / "api")
    assert isinstance(info.value, UserError) and not list((tmp_path / "api").glob("*"))
