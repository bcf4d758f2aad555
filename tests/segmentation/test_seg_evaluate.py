"""The segmentation evaluator and the CLI: independent runs per eps, mIoU falling with eps, the per-image
ensemble at or below every attack, ignored pixels counted nowhere, intervals, results.json round trip;
on the shipped unet-tiny (when its weights are in the catalog): SegPGD vs PGD at equal steps and DAG's
pixels to change reached within a stated norm."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustaudit.attacks.registry import from_spec
from robustaudit.cli import main
from robustaudit.core.errors import UserError
from robustaudit.data.segmentation import SegmentationTensorData
from robustaudit.evaluate import segmetrics
from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, run
from robustaudit.evaluate.segmetrics import image_confusion
from robustaudit.evaluate.spec import resolve_task
from seg_helpers import K, tiny_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    net = tiny_segmenter()
    x = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:, :2] = 255
    return net, SegmentationTensorData(x, y, name="small", num_classes=K)


def _entries(*specs):
    return [AttackEntry(s, from_spec(s, task="segmentation")) for s in specs]


def test_confusion_matrices_ignore_pixels_and_match_segmetrics():
    pred = torch.tensor([[[0, 1], [2, 3]], [[1, 1], [1, 1]]])
    y = torch.tensor([[[0, 255], [2, 1]], [[255, 255], [255, 255]]])
    cms = image_confusion(pred, y, K)
    assert cms[1].sum() == 0 and cms[0].sum() == 3
    assert torch.equal(cms.sum(0), segmetrics.confusion_matrix(pred, y, K))


def test_miou_falls_with_eps_and_ensemble_is_worst(small):
    net, data = small
    result = run([ModelEntry("net", net)], data, _entries("pgd:steps=5", "segpgd:steps=5"),
                 [0.02, 0.08, 0.3], batch_size=4, resamples=200)
    r = result.records
    for attack in ("pgd:steps=5", "segpgd:steps=5", WORST_CASE):
        mious = r[r["attack"] == attack].sort_values("eps")["miou"].tolist()
        assert mious[0] > mious[-1] and mious[0] < r["clean_miou"].iloc[0], (attack, mious)
    for eps in (0.02, 0.08, 0.3):
        cells = r[r["eps"] == eps]
        worst = cells[cells["attack"] == WORST_CASE].iloc[0]
        others = cells[cells["attack"] != WORST_CASE]
        assert worst["pixel_accuracy"] <= others["pixel_accuracy"].min() + 1e-12
        assert worst["miou_ci_low"] <= worst["miou"] <= worst["miou_ci_high"]
    assert r["clean_pixel_accuracy"].iloc[0] == 1.0  # labels are the clean prediction where valid
    assert len(result.class_iou[("net", "clean", 0.0)]) == K


def test_targeted_success_and_unbounded_dag(small):
    net, data = small
    result = run([ModelEntry("net", net)], data,
                 _entries("segpgd:steps=5,target=shift", "dag:gamma=0.01,max_iter=30"), [0.1],
                 batch_size=5, resamples=50)
    row = result.records[result.records["attack"] == "segpgd:steps=5,target=shift"].iloc[0]
    assert 0 < row["targeted_success"] <= 1
    (dag,) = result.unbounded
    assert dag["targeted_success"] > 0 and dag["median_linf"] > 0 and dag["n"] == 10


def test_targeted_success_of_a_no_op_is_zero_in_the_evaluator(small):
    # labels are the clean prediction; target the most common label: a step too small to flip a pixel
    # leaves every pixel as it was. The old count (every valid pixel) gave this no-op the share of the
    # target class in the labels; only the pixels to change count now, so it scores 0
    net, data = small
    y = data.y[data.y != 255]
    c = int(y.mode().values)
    share = float((y == c).float().mean())
    assert share > 0.2
    result = run([ModelEntry("net", net)], data, _entries(f"pgd:steps=1,target={c}"), [1e-9],
                 batch_size=5, resamples=20)
    row = result.records[result.records["attack"] == f"pgd:steps=1,target={c}"].iloc[0]
    assert row["pixel_accuracy"] == 1.0 and row["targeted_success"] == 0.0, (row["targeted_success"], share)


def test_results_round_trip(small, tmp_path):
    net, data = small
    result = run([ModelEntry("net", net)], data, _entries("pgd:steps=2", "dag:max_iter=3"), [0.05],
                 batch_size=5, resamples=50)
    result.save(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["schema_version"] == 2 and doc["task"] == "segmentation"
    back = ResultMatrix.load(tmp_path)
    assert back.is_segmentation and math.isclose(back.miou("net", WORST_CASE, 0.05), result.miou("net", WORST_CASE, 0.05))
    assert len(back.seg_examples) == len(result.seg_examples) > 0 and back.unbounded[0]["attack"] == "dag:max_iter=3"


def test_task_must_match_the_data(small):
    _, data = small
    assert resolve_task("auto", data) == "segmentation"
    with pytest.raises(UserError, match="segmentation set"):
        resolve_task("classification", data)


def test_classifier_on_segmentation_data_is_one_line(tmp_path, capsys):
    code = main(["audit", "--data", "digit-scenes", "--model", "digits-cnn", "--n", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a classifier" in err and "Traceback" not in err


def test_segmentation_model_on_classification_data_is_one_line(tmp_path, capsys):
    code = main(["audit", "--data", "digits", "--model", "unet-tiny", "--attack", "pgd", "--n", "2",
                 "--checks", "off", "--defense", "none", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a segmentation model" in err and "Traceback" not in err


def _trained_unet():
    from robustaudit.models.catalog import get_card

    card = get_card("unet-tiny")
    if not card.weights:
        pytest.skip("unet-tiny has no shipped weights yet")
    from robustaudit.models.loading import load_model

    return load_model("unet-tiny").module


@pytest.mark.slow
def test_unet_segpgd_vs_pgd_and_dag():
    from robustaudit.data.registry import open_dataset

    model = _trained_unet()
    data = open_dataset("digit-scenes")
    result = run([ModelEntry("unet", model)], data,
                 _entries("pgd:steps=10", "segpgd:steps=10", "dag"), [0.02], ids=list(range(48)),
                 batch_size=16, resamples=100)
    r = result.records
    pgd = r[r["attack"] == "pgd:steps=10"].iloc[0]["miou"]
    seg = r[r["attack"] == "segpgd:steps=10"].iloc[0]["miou"]
    # the paper's claim; measured on the first 100 test scenes at 10 steps, eps 0.02: SegPGD 0.269 vs PGD 0.308
    assert seg < pgd, (seg, pgd)
    (dag,) = result.unbounded
    # target: every pixel background (hide the digits); measured on these 48 scenes over the digit pixels
    # only (a pixel already background has nothing to change): 19.3% within median Linf 0.147 (L2 1.31).
    # The old figure, 91.3%, counted the background too: a no-op scored ~90%.
    assert 0.15 <= dag["targeted_success"] <= 0.25 and dag["median_linf"] <= 0.2, dag


def test_cli_end_to_end_on_digit_scenes(tmp_path, capsys):
    out = tmp_path / "out"
    # the mIoU gate fails (exit 1) once everything is written
    code = main(["audit", "--data", "digit-scenes", "--n", "4", "--attack", "pgd:steps=1", "--attack",
                 "segpgd:steps=1", "--attack", "dag:max_iter=2", "--eps", "0.01,0.02", "--out", str(out),
                 "--fail-under", "0.99", "--fail-on", "point"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "mIoU" in captured.out and "sanity checks: not run" in captured.out and "below 0.99" in captured.err
    doc = json.loads((out / "results.json").read_text())
    assert doc["task"] == "segmentation" and doc["provenance"]["config"]["task"] == "segmentation"  # resolved by the spec
    assert {r["attack"] for r in doc["records"]} == {"pgd:steps=1", "segpgd:steps=1", WORST_CASE}
    assert doc["segmentation"]["unbounded"][0]["attack"] == "dag:max_iter=2"
    html = (out / "report.html").read_text()
    assert "mIoU vs eps" in html and "data:image/png;base64," in html
    assert "IoU % per class" in (out / "report.md").read_text()
