"""robustaudit.data: ImageData contract, validation messages, as_image_data, subset, digits, registry."""

from __future__ import annotations

import warnings
from math import comb

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustaudit.core.errors import UserError
from robustaudit.data import (
    DIGITS_TEST_SIZE,
    DIGITS_TRAIN_SIZE,
    DatasetData,
    TensorData,
    as_image_data,
    dataset_names,
    digits_split,
    open_dataset,
    subset,
)
from robustaudit.data.base import class_coverage
from robustaudit.data.registry import parse_spec


def _xy(n: int = 6, c: int = 1, h: int = 5, w: int = 5, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w) / (n * c * h * w)
    return x, torch.arange(n) % k


class _Items(Dataset):
    """A map-style dataset of (image, label) items built from a list; optional ``classes``."""

    def __init__(self, items, classes=None):
        self.items = items
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# ------------------------------------------------------------------------------------- TensorData


def test_tensor_data_load_returns_requested_rows():
    x, y = _xy()
    data = TensorData(x, y, name="t")
    assert (len(data), data.num_classes, data.sample_shape, data.class_names) == (6, 3, (1, 5, 5), None)
    xb, yb = data.load([4, 1])
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.shape == (2, 1, 5, 5)
    assert torch.equal(xb, x[[4, 1]]) and yb.tolist() == [1, 1]
    xb[:] = 0  # a copy: the data set is unchanged
    assert torch.equal(data.load([4])[0], x[[4]])


def test_tensor_data_accepts_numpy_and_float64_and_clamps_tiny_excess():
    x = np.full((3, 1, 5, 5), 0.5)
    x[0, 0, 0, 0] = 1 + 5e-7
    x[1, 0, 0, 0] = -5e-7
    data = TensorData(x, np.array([0, 1, 4], dtype=np.uint8))
    xb, yb = data.load([0, 1, 2])
    assert xb.dtype == torch.float32 and float(xb.max()) == 1.0 and float(xb.min()) == 0.0
    assert yb.tolist() == [0, 1, 4] and data.num_classes == 5


def test_tensor_data_index_out_of_range():
    with pytest.raises(IndexError, match="index 6 out of range for 6 samples"):
        TensorData(*_xy()).load([0, 6])


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (
            torch.zeros(2, 1, 5, 5, dtype=torch.uint8),
            torch.tensor([0, 1]),
            {},
            r"floats in \[0, 1\], got dtype uint8 \(use x.float\(\) / 255\)",
        ),
        (torch.zeros(2, 1, 5, 5, dtype=torch.int32), torch.tensor([0, 1]), {}, "got dtype int32"),
        (torch.zeros(2, 28, 28), torch.tensor([0, 1]), {}, r"got 3-D \(2, 28, 28\).*x.unsqueeze\(1\)"),
        (torch.zeros(2, 28, 28, 3), torch.tensor([0, 1]), {}, r"channels-last.*x.permute\(0, 3, 1, 2\)"),
        (torch.zeros(2, 28, 28, 1), torch.tensor([0, 1]), {}, "channels-last"),
        (torch.zeros(2, 1, 1, 5, 5), torch.tensor([0, 1]), {}, "got 5-D"),
        (torch.zeros(0, 1, 5, 5), torch.zeros(0, dtype=torch.int64), {}, "empty"),
        (torch.zeros(3, 1, 5, 5), torch.tensor([0, 1]), {}, "3 images but 2 labels"),
        (
            torch.zeros(2, 1, 5, 5),
            torch.tensor([0.0, 1.0]),
            {},
            r"integer class indices, got dtype float32 \(use y.long\(\)",
        ),
        (torch.zeros(2, 1, 5, 5), torch.tensor([True, False]), {}, "integer class indices, got dtype bool"),
        (
            torch.zeros(2, 1, 5, 5),
            torch.eye(2, dtype=torch.int64),
            {},
            r"1-D \(N,\), got shape \(2, 2\); one-hot",
        ),
        (torch.zeros(2, 1, 5, 5), torch.tensor([0, -1]), {}, "sample 1 has negative label -1"),
        (
            torch.zeros(2, 1, 5, 5),
            torch.tensor([0, 3]),
            {"num_classes": 3},
            r"sample 1 has label 3, outside \[0, 3\)",
        ),
        (
            torch.zeros(2, 1, 5, 5),
            torch.tensor([0, 1]),
            {"num_classes": 0},
            "num_classes must be a positive integer",
        ),
        (
            torch.zeros(2, 1, 5, 5),
            torch.tensor([0, 1]),
            {"class_names": ["a"]},
            "1 class names given for 2 classes",
        ),
    ],
)
def test_tensor_data_rejects_bad_input(x, y, kwargs, match):
    with pytest.raises(UserError, match=match):
        TensorData(x, y, name="mine", **kwargs)


def test_bad_pixels_are_named_by_sample():
    x = torch.full((4, 1, 5, 5), 0.5)
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(UserError, match=r"^mine: sample 2 has NaN or Inf pixels \(1 NaN pixels in 1 of 4 samples\)$"):
        TensorData(x, torch.zeros(4, dtype=torch.int64), name="mine")
    x[2, 0, 1, 1] = 0.5
    x[3] = 200.0
    with pytest.raises(
        UserError, match=r"sample 3 has pixels outside \[0, 1\] \(data range \[0.5, 200\]\).*divide by 255"
    ):
        TensorData(x, torch.zeros(4, dtype=torch.int64), name="mine")
    x[3] = -0.01
    with pytest.raises(
        UserError, match=r"sample 3 has pixels outside \[0, 1\] \(data range \[-0.01, 0.5\]\)"
    ):
        TensorData(x, torch.zeros(4, dtype=torch.int64), name="mine")


# ------------------------------------------------------------------------------------ DatasetData


def test_dataset_data_is_lazy_and_validates_each_batch():
    x, y = _xy(n=4)
    items = [(x[i], int(y[i])) for i in range(4)]
    items[3] = (torch.full((1, 5, 5), 1.5), 0)
    data = DatasetData(_Items(items, classes=["a", "b", "c"]), name="ds")
    assert (len(data), data.num_classes, data.class_names, data.sample_shape) == (
        4,
        3,
        ["a", "b", "c"],
        (1, 5, 5),
    )
    xb, yb = data.load([2, 0])
    assert torch.equal(xb, x[[2, 0]]) and yb.tolist() == [2, 0]
    with pytest.raises(UserError, match=r"^ds: sample 3 has pixels outside \[0, 1\]"):
        data.load([0, 3])


def test_dataset_data_infers_classes_by_scanning_labels():
    items = [(torch.zeros(1, 4, 4), torch.tensor(k)) for k in (0, 4, 2)]
    assert DatasetData(_Items(items)).num_classes == 5


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ((torch.zeros(1, 5, 5), 0.5), "label must be an integer class index"),
        (
            (torch.zeros(5, 5), 0),
            r"sample 1: image must be 3-D \(C, H, W\), got \(5, 5\); use image.unsqueeze\(0\)",
        ),
        (([[0.0]], 0), "add transforms.ToTensor"),
        ((torch.zeros(1, 5, 5),), r"items must be \(image, label\) pairs, got a tuple of 1$"),
        ((torch.zeros(1, 5, 5), 0, "path.png"), r"items must be \(image, label\) pairs, got a tuple of 3$"),
        ((torch.zeros(1, 6, 6), 0), r"sample 1 has shape \(1, 6, 6\) but sample 0 has \(1, 5, 5\).*resize"),
        ((torch.zeros(1, 5, 5), 7), r"sample 1 has label 7, outside \[0, 2\)"),
    ],
)
def test_dataset_data_rejects_bad_items(item, match):
    data = DatasetData(_Items([(torch.zeros(1, 5, 5), 0), item], classes=["a", "b"]), name="ds")
    with pytest.raises(UserError, match=match):
        data.load([0, 1])


def test_dataset_data_rejects_empty_dataset():
    with pytest.raises(UserError, match="ds: the dataset is empty"):
        DatasetData(_Items([]), name="ds")


# ---------------------------------------------------------------------------------- as_image_data


def test_as_image_data_accepts_every_documented_kind():
    x, y = _xy(n=10, k=4)
    pair = as_image_data((x, y))
    numpy_pair = as_image_data([x.numpy(), y.numpy()], num_classes=7)
    assert isinstance(pair, TensorData) and pair.num_classes == 4 and numpy_pair.num_classes == 7
    assert as_image_data(pair) is pair
    assert isinstance(as_image_data(TensorDataset(x, y)), TensorData)
    lazy = as_image_data(_Items([(x[i], int(y[i])) for i in range(10)], classes=list("abcd")), name="lazy")
    assert isinstance(lazy, DatasetData) and lazy.class_names == list("abcd")
    ds = _Items([(x[i], int(y[i])) for i in range(10)], classes=list("abcdef"))
    loaded = as_image_data(DataLoader(ds, batch_size=3))
    assert isinstance(loaded, TensorData) and len(loaded) == 10 and loaded.num_classes == 6
    assert loaded.class_names == list("abcdef")
    assert torch.equal(loaded.load(range(10))[0], x) and torch.equal(loaded.load(range(10))[1], y)


def test_as_image_data_rejects_unknown_kinds():
    with pytest.raises(UserError, match="cannot use a str as data; expected an"):
        as_image_data("digits")
    with pytest.raises(UserError, match=r"expected an \(x, y\) pair, got a tuple of length 3"):
        as_image_data((1, 2, 3))
    with pytest.raises(UserError, match="has 4 classes but num_classes=5"):
        as_image_data(as_image_data(_xy(k=4)), num_classes=5)
    with pytest.raises(UserError, match=r"batch 0 of the DataLoader is not an \(x, y\) pair"):
        as_image_data(DataLoader(torch.zeros(4, 1, 5, 5), batch_size=2))


# ------------------------------------------------------------------------------------------ subset


def test_subset_semantics():
    data = TensorData(*_xy(n=6))
    assert subset(data, None) == [0, 1, 2, 3, 4, 5]
    assert subset(data, 2) == [0, 1]
    with pytest.warns(UserWarning, match="has only 6 samples; using all of them instead of 9"):
        assert subset(data, 9) == list(range(6))
    for bad in (0, -3):
        with pytest.raises(UserError, match=f"must be positive, got {bad}"):
            subset(data, bad)
    with pytest.raises(UserError, match="must be an integer"):
        subset(data, 2.5)


def _sorted_by_class(classes: int = 4, per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes * per_class, 1, 4, 4)`` images and labels ``0 x per_class, 1 x per_class, ...``."""
    return torch.rand(classes * per_class, 1, 4, 4), torch.arange(classes).repeat_interleave(per_class)


def test_subset_warns_when_the_first_n_of_data_sorted_by_class_cover_few_classes():
    x, y = _sorted_by_class()
    data = TensorData(x, y, name="sorted")
    with pytest.warns(UserWarning, match=r"^the first 12 samples of sorted cover 2 of its 4 classes \(50%; a random "
                      r"12 would cover about 4\): the data looks ordered by class.*shuffle it or audit a larger n$"):
        assert subset(data, 12) == list(range(12))
    coverage = class_coverage(data, range(12))
    # a class is absent from a random 12 of the 40 with probability C(30, 12) / C(40, 12) = 0.0155
    q = comb(30, 12) / comb(40, 12)
    assert (coverage.covered, coverage.present) == (2, 4) and coverage.unrepresentative
    assert coverage.expected == pytest.approx(4 * (1 - q)) and coverage.spread == pytest.approx((4 * q * (1 - q)) ** 0.5)
    # 4 samples of one class could be chance (a random 4 covers 2.8 classes, sd <= 0.92): no warning
    assert not class_coverage(data, range(4)).unrepresentative
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert subset(data, 40) == list(range(40))  # all of it: nothing left out
        # the same labels shuffled: a prefix may miss a class by chance, and no n warns
        shuffled = TensorData(x, y[torch.randperm(40, generator=torch.Generator().manual_seed(0))], name="shuffled")
        for n in range(1, 41):
            subset(shuffled, n)


def test_no_prefix_of_the_digits_warns():
    # the goldens audit the digits' first n: their order is fair (it falls at most 2.3 sd short, at n = 22)
    for split in ("test", "train"):
        data = digits_split(split)
        worst = min(range(1, len(data)), key=lambda n: _shortfall(class_coverage(data, range(n))))
        assert not any(class_coverage(data, range(n)).unrepresentative for n in range(1, len(data)))
        if split == "test":
            assert worst == 22 and _shortfall(class_coverage(data, range(22))) == pytest.approx(-2.288, abs=1e-3)


def _shortfall(coverage) -> float:
    return (coverage.covered - coverage.expected) / coverage.spread if coverage.spread else 0.0


class _Targets(Dataset):
    """A lazy set sorted by class that keeps its labels in ``targets`` (as torchvision's sets do)."""

    def __init__(self, targets: list[int] | None) -> None:
        self.targets, self.reads = targets, 0

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int):
        self.reads += 1
        return torch.zeros(1, 2, 2), i // 10


def test_subset_reads_labels_only_where_they_are_at_hand():
    sorted_labels = [i // 10 for i in range(30)]
    dataset = _Targets(sorted_labels)
    data = DatasetData(dataset, name="lazy", num_classes=3)
    reads = dataset.reads  # sample 0, read once to learn the shape
    assert data.known_labels().tolist() == sorted_labels
    with pytest.warns(UserWarning, match="the first 10 samples of lazy cover 1 of its 3 classes"):
        subset(data, 10)
    assert dataset.reads == reads  # the warning read no image
    # no targets: nothing is read to learn the labels, and nothing is said
    blind = _Targets(None)
    data = DatasetData(blind, name="blind", num_classes=3)
    reads = blind.reads
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.known_labels() is None and subset(data, 10) == list(range(10))
    assert blind.reads == reads
    # targets that are not one valid label per sample are ignored, not trusted
    assert DatasetData(_Targets([0, 1, 7]), name="short", num_classes=3).known_labels() is None


# ------------------------------------------------------------------------------------------ digits


def test_digits_split_sizes_and_values():
    test, train = digits_split("test"), digits_split("train")
    assert (len(test), len(train)) == (DIGITS_TEST_SIZE, DIGITS_TRAIN_SIZE) == (359, 1438)
    assert (
        test.name == "digits" and test.num_classes == 10 and test.class_names == [str(c) for c in range(10)]
    )
    x, y = test.load(range(len(test)))
    assert x.shape == (359, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.unique(x * 16), torch.arange(17, dtype=torch.float32))  # exactly k/16
    counts = torch.bincount(y, minlength=10).tolist()
    assert counts == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    all_counts = torch.bincount(train.load(range(len(train)))[1], minlength=10) + torch.tensor(counts)
    assert all_counts.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # stratified: each class's test share is 0.2 * its count, rounded
    assert all(abs(t - 0.2 * a) <= 0.5 for t, a in zip(counts, all_counts.tolist(), strict=True))


def test_digits_split_is_frozen_and_disjoint():
    from sklearn.datasets import load_digits

    from robustaudit.data.digits import _split_indices

    idx = _split_indices()
    assert idx["test"][:10].tolist() == [3, 7, 13, 19, 36, 38, 43, 48, 53, 55]  # pinned: never changes
    assert len(set(idx["test"]) & set(idx["train"])) == 0 and len(idx["test"]) + len(idx["train"]) == 1797
    raw = load_digits()
    x, y = digits_split("test").load([0, 1])
    assert torch.equal(x[0, 0], torch.tensor(raw.images[3] / 16, dtype=torch.float32))
    assert y.tolist() == [int(raw.target[3]), int(raw.target[7])]
    a, b = digits_split("test"), digits_split("test")
    assert torch.equal(a.load(range(359))[0], b.load(range(359))[0])
    with pytest.raises(UserError, match="unknown split 'tset' \\(did you mean 'test'\\?\\)"):
        digits_split("tset")


# ---------------------------------------------------------------------------------------- registry


def test_registry_names_and_close_match():
    assert {"digits", "cifar10", "mnist", "imagefolder", "tensors", "digit-scenes", "segfolder", "voc"} <= set(dataset_names())
    assert all(isinstance(d, str) and "\n" not in d for d in dataset_names().values())
    with pytest.raises(
        UserError, match=r"unknown dataset 'digts' \(did you mean 'digits'\?\); known: cifar10, digit-scenes, digits"
    ):
        open_dataset("digts")
    assert len(open_dataset("digits", split="train")) == 1438
    assert open_dataset("DIGITS").name == "digits"


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("digits", ("digits", None, {})),
        ("cifar10:/data", ("cifar10", "/data", {})),
        ("imagefolder:/a:b/c:size=32", ("imagefolder", "/a:b/c", {"size": "32"})),
        ("cifar10:C:\\data", ("cifar10", "C:\\data", {})),
        ("imagefolder:size=8", ("imagefolder", None, {"size": "8"})),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("", {}, "non-empty string"),
        ("digits:/tmp", {}, "dataset 'digits' takes no location"),
        ("cifar10", {}, "dataset 'cifar10' needs a location: 'cifar10:ROOT'"),
        (
            "imagefolder:/x:sise=3",
            {},
            r"unknown setting for dataset 'imagefolder' 'sise' \(did you mean 'size'\?\)",
        ),
        ("imagefolder:/x:size=-1", {}, "size must be a positive integer, got '-1'"),
        ("imagefolder:/x:size=3:size=4", {}, "setting 'size' given twice"),
        ("mnist:/x:size=3", {}, "dataset 'mnist' takes no settings"),
        ("digits", {"split": "val"}, "unknown split 'val'"),
    ],
)
def test_open_dataset_rejects_bad_specs(spec, kwargs, match):
    with pytest.raises(UserError, match=match):
        open_dataset(spec, **kwargs)
