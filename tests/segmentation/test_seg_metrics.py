"""evaluate.segmetrics against hand-computed examples and against scikit-learn on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from robustaudit.core.task import SEGMENTATION
from robustaudit.evaluate.segmetrics import (
    class_iou,
    confusion_matrix,
    miou,
    per_image_pixel_accuracy,
    pixel_accuracy,
    targeted_success,
)


def test_hand_computed_example():
    # 3 classes, one 2x3 image; the 255 pixel counts nowhere whatever is predicted there
    y = torch.tensor([[[0, 0, 1], [2, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [2, 0, 1]]])
    cm = confusion_matrix(pred, y, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]] and cm.dtype == torch.int64
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 1 / (1 + 2 - 1) = 1/2; class 2: 1 / (2 + 1 - 1) = 1/2
    assert class_iou(cm) == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert miou(cm) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert per_image_pixel_accuracy(pred, y).tolist() == pytest.approx([3 / 5])


def test_absent_classes_are_left_out_of_the_mean():
    # class 2 is neither in the labels nor predicted: no IoU, not a zero in the mean
    y = torch.tensor([[[0, 1], [1, 1]]])
    pred = torch.tensor([[[0, 1], [0, 1]]])
    cm = confusion_matrix(pred, y, 3)
    assert class_iou(cm) == [pytest.approx(0.5), pytest.approx(2 / 3), None]
    assert miou(cm) == pytest.approx((0.5 + 2 / 3) / 2)
    # a class only predicted (never true) has IoU 0 and does count
    pred2 = torch.tensor([[[2, 1], [1, 1]]])
    assert class_iou(confusion_matrix(pred2, y, 3)) == [0.0, 1.0, 0.0]


def test_no_valid_pixels_and_bad_classes():
    y = torch.full((1, 2, 2), 255)
    cm = confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.int64), y, 4)
    assert cm.sum() == 0 and math.isnan(miou(cm)) and math.isnan(pixel_accuracy(cm))
    assert class_iou(cm) == [None] * 4
    assert math.isnan(per_image_pixel_accuracy(torch.zeros(1, 2, 2, dtype=torch.int64), y).item())
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        confusion_matrix(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed: int):
    rng = np.random.RandomState(seed)
    k = 6
    y = rng.randint(0, k, size=(4, 9, 7))
    y[rng.rand(*y.shape) < 0.1] = 255
    pred = np.where(rng.rand(*y.shape) < 0.6, np.where(y == 255, 0, y), rng.randint(0, k, size=y.shape))
    pred[pred == 3] = 4  # class 3 never predicted: IoU 0 for it, still counted (it is in the labels)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(y), k)
    valid = y != 255
    ref = sk_confusion_matrix(y[valid], pred[valid], labels=list(range(k)))
    assert cm.numpy().tolist() == ref.tolist()
    per_class = jaccard_score(y[valid], pred[valid], labels=list(range(k)), average=None, zero_division=0)
    assert class_iou(cm) == pytest.approx(per_class.tolist())
    assert miou(cm) == pytest.approx(float(per_class.mean()))  # every class is in the labels here
    assert pixel_accuracy(cm) == pytest.approx(float((y[valid] == pred[valid]).mean()))
    # per-image pixel accuracy agrees with the task's own (from logits whose argmax is pred)
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), k).permute(0, 3, 1, 2).float()
    expected = SEGMENTATION.pixel_accuracy(logits, torch.from_numpy(y))
    assert torch.allclose(per_image_pixel_accuracy(torch.from_numpy(pred), torch.from_numpy(y)), expected)


def test_dataset_cm_is_the_sum_of_batches():
    rng = np.random.RandomState(3)
    y = torch.from_numpy(rng.randint(0, 4, size=(10, 5, 5)))
    pred = torch.from_numpy(rng.randint(0, 4, size=(10, 5, 5)))
    whole = confusion_matrix(pred, y, 4)
    parts = confusion_matrix(pred[:3], y[:3], 4) + confusion_matrix(pred[3:], y[3:], 4)
    assert torch.equal(whole, parts)
    # and the dataset mIoU is not the mean of per-image mIoUs (the documented convention)
    per_image = np.mean([miou(confusion_matrix(pred[i : i + 1], y[i : i + 1], 4)) for i in range(10)])
    assert miou(whole) != pytest.approx(per_image)


def test_targeted_success():
    pred = torch.tensor([[[1, 1], [2, 0]]])
    targets = torch.tensor([[[1, 2], [2, 255]]])  # the last pixel has no target
    assert targeted_success(pred, targets) == (2, 3)
    y = torch.tensor([[[0, 255], [0, 0]]])  # an ignored label takes its pixel out too
    assert targeted_success(pred, targets, y) == (2, 2)
    assert targeted_success(pred, torch.full_like(pred, 255)) == (0, 0)


def test_targeted_success_counts_only_pixels_to_change():
    # target background (0) on a scene that is mostly background: only the 2 digit pixels count
    y = torch.tensor([[[0, 0, 0], [0, 3, 5]]])
    targets = torch.zeros_like(y)
    assert targeted_success(y.clone(), targets, y) == (0, 2)  # a no-op attack: 0%, not 4/6
    assert targeted_success(targets.clone(), targets, y) == (2, 2)  # every digit hidden: 100%
    assert targeted_success(torch.tensor([[[0, 0, 0], [0, 0, 5]]]), targets, y) == (1, 2)
    # a background pixel the model gets wrong is not the attack's to change: still 0 counted there
    assert targeted_success(torch.tensor([[[4, 0, 0], [0, 3, 5]]]), targets, y) == (0, 2)


def test_an_image_without_valid_pixels_has_no_pixel_accuracy_and_adds_nothing():
    """One convention everywhere (core.task.valid_share): no valid pixel, no pixel accuracy (NaN), left
    out of per-image statistics; its confusion matrix is zero, so dataset figures are those without it."""
    from robustaudit.evaluate.aggregate import SegCellOutcome, seg_worst_case
    from robustaudit.evaluate.segmetrics import bootstrap_interval, image_confusion, pixel_accuracy_of

    y = torch.tensor([[[0, 1], [1, 255]], [[255, 255], [255, 255]]])  # image 1: every pixel ignored
    pred = torch.tensor([[[0, 0], [1, 1]], [[1, 0], [1, 0]]])
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    by_task = SEGMENTATION.pixel_accuracy(logits, y)
    by_pred = per_image_pixel_accuracy(pred, y)
    cms = image_confusion(pred, y, 2)
    by_cm = pixel_accuracy_of(cms)
    for values in (by_task, by_pred, by_cm):
        assert values[0].item() == pytest.approx(2 / 3) and math.isnan(values[1].item())
    assert cms[1].sum() == 0 and torch.equal(cms.sum(0), confusion_matrix(pred[:1], y[:1], 2))
    assert pixel_accuracy(cms.sum(0)) == pytest.approx(2 / 3)
    # the bootstrap leaves out resamples of only the empty image: the interval is the valid image's
    assert bootstrap_interval(cms, key=1, resamples=50)["pa"] == pytest.approx((2 / 3, 2 / 3))
    # the ensemble picks per image the lowest pixel accuracy; the empty image stays empty whichever is taken
    worse = image_confusion(torch.zeros_like(pred), y, 2)  # image 0: 1 of 3 right
    cells = [SegCellOutcome("m", a, 0.1, "linf", c) for a, c in (("a", cms), ("b", worse))]
    chosen = seg_worst_case(cells).cms
    assert torch.equal(chosen[0], worse[0]) and chosen[1].sum() == 0
