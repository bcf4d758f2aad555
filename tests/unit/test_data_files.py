"""robustaudit.data readers on small files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustaudit.core.errors import UserError
from robustaudit.data import DatasetData, open_dataset, subset
from robustaudit.data.vision import round_robin_order

LABEL_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


# ---------------------------------------------------------------------------------------- CIFAR-10


def _cifar_pixels(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3072), dtype=np.uint8)


def _write_cifar(root: Path, protocol: int = 2) -> Path:
    """Two tiny batches (test 20 images, train batch k has 4 images), pickled like the originals."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, obj):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)

    dump(
        "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [i % 10 for i in range(20)],
            b"data": _cifar_pixels(20, 0),
            b"filenames": [b"img%d.png" % i for i in range(20)],
        },
    )
    for k in range(1, 6):
        dump(f"data_batch_{k}", {b"labels": [k, k, 9 - k, 0], b"data": _cifar_pixels(4, k)})
    dump("batches.meta", {b"label_names": LABEL_NAMES, b"num_cases_per_batch": 10000, b"num_vis": 3072})
    return folder


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_round_trips_pixels_labels_and_names(tmp_path, protocol):
    folder = _write_cifar(tmp_path, protocol)
    data = open_dataset(f"cifar10:{tmp_path}")
    assert (len(data), data.num_classes, data.sample_shape) == (20, 10, (3, 32, 32))
    assert data.name == f"cifar10:{tmp_path}" and data.class_names[:2] == ["airplane", "automobile"]
    x, y = data.load([0, 13])
    expected = torch.from_numpy(_cifar_pixels(20, 0)[[0, 13]].reshape(2, 3, 32, 32)).float() / 255
    assert x.dtype == torch.float32 and torch.equal(x, expected)
    assert y.tolist() == [0, 3] and y.dtype == torch.int64
    # ROOT may also be the cifar-10-batches-py folder itself
    train = open_dataset(f"cifar10:{folder}", split="train")
    assert len(train) == 20 and train.load([0, 4, 19])[1].tolist() == [1, 2, 0]
    assert torch.equal(train.load([8])[0].flatten() * 255, torch.from_numpy(_cifar_pixels(4, 3)[0]).float())


def test_cifar10_refuses_a_hostile_pickle(tmp_path):
    folder = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(
        UserError, match=r"not a plain CIFAR-10 batch pickle: refused to load global '(posix|nt|os)\.system'"
    ):
        open_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar10_bad_files(tmp_path):
    with pytest.raises(UserError, match="CIFAR-10 root .*missing.* does not exist"):
        open_dataset(f"cifar10:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="no CIFAR-10 data under .*cifar-10-batches-py/test_batch"):
        open_dataset(f"cifar10:{tmp_path}")
    folder = _write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="CIFAR-10 file .*data_batch_3 is missing"):
        open_dataset(f"cifar10:{tmp_path}", split="train")
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(
        UserError, match="cannot read CIFAR-10 file .*test_batch: truncated or not a python pickle"
    ):
        open_dataset(f"cifar10:{tmp_path}")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(
        UserError, match=r"expected key 'data' holding uint8 pixels of shape \(N, 3072\), got float32"
    ):
        open_dataset(f"cifar10:{tmp_path}")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f, protocol=2)
    with pytest.raises(UserError, match=r"sample 1 has label 10, outside \[0, 10\)"):
        open_dataset(f"cifar10:{tmp_path}")


# ------------------------------------------------------------------------------------------- MNIST


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def _write_mnist(root: Path, prefix: str, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images = np.random.RandomState(n).randint(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) * 3 % 10).astype(np.uint8)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(raw / f"{stem}.gz", "wb") as f:
                f.write(_idx(arr))
        else:
            (raw / stem).write_bytes(_idx(arr))
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trips(tmp_path, gz):
    images, labels = _write_mnist(tmp_path, "t10k", 12, gz)
    _write_mnist(tmp_path, "train", 7, gz)
    data = open_dataset(f"mnist:{tmp_path}")
    assert (len(data), data.num_classes, data.sample_shape) == (12, 10, (1, 28, 28))
    x, y = data.load([5, 0])
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0] * 255, torch.from_numpy(images[[5, 0]]).float())
    assert y.tolist() == [5, 0]
    assert len(open_dataset(f"mnist:{tmp_path / 'MNIST' / 'raw'}", split="train")) == 7


def test_mnist_bad_files(tmp_path):
    with pytest.raises(UserError, match="no MNIST file t10k-images-idx3-ubyte.* under"):
        open_dataset(f"mnist:{tmp_path}")
    _write_mnist(tmp_path, "t10k", 12, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-100])
    with pytest.raises(
        UserError,
        match=r"idx3-ubyte is truncated or corrupt: header says 12x28x28 = 9408 bytes, file holds 9308",
    ):
        open_dataset(f"mnist:{tmp_path}")
    path.write_bytes(b"\x00\x00\x08\x01" + good[4:])
    with pytest.raises(
        UserError, match=r"is not an MNIST idx file: expected magic 0x00000803.*got 0x00000801"
    ):
        open_dataset(f"mnist:{tmp_path}")
    path.write_bytes(good)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(11, np.uint8)))
    with pytest.raises(UserError, match="has 12 images but t10k-labels-idx1-ubyte has 11 labels"):
        open_dataset(f"mnist:{tmp_path}")
    # a cut-off gzip stream
    other = tmp_path / "gz"
    _write_mnist(other, "t10k", 12, gz=True)
    gz_path = other / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot read MNIST file .*t10k-images-idx3-ubyte.gz"):
        open_dataset(f"mnist:{other}")


# ------------------------------------------------------------------------------------- ImageFolder


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_reads_rgb_lazily_with_class_names(tmp_path):
    rng = np.random.RandomState(0)
    cat = rng.randint(0, 256, size=(6, 5, 3), dtype=np.uint8)
    _png(tmp_path / "cat" / "a.png", cat)
    _png(tmp_path / "cat" / "b.png", np.full((6, 5, 3), 255, np.uint8))
    _png(tmp_path / "dog" / "c.png", np.full((6, 5), 51, np.uint8))  # grayscale -> RGB
    data = open_dataset(f"imagefolder:{tmp_path}")
    assert isinstance(data, DatasetData)
    assert (len(data), data.num_classes, data.class_names, data.sample_shape) == (
        3,
        2,
        ["cat", "dog"],
        (3, 6, 5),
    )
    # round-robin over the classes: cat/a.png, dog/c.png, cat/b.png
    x, y = data.load([0, 1])
    assert torch.equal(x[0] * 255, torch.from_numpy(cat).permute(2, 0, 1).float())
    assert torch.allclose(x[1], torch.full((3, 6, 5), 0.2)) and y.tolist() == [0, 1]


def test_imagefolder_reads_grayscale_with_channels_1(tmp_path):
    """A grayscale model's folder: ':channels=1' gives (1, H, W), a colour file converted by PIL's luma."""
    _png(tmp_path / "cat" / "a.png", np.full((6, 5), 51, np.uint8))
    _png(tmp_path / "dog" / "b.png", np.full((6, 5, 3), (255, 0, 0), np.uint8))  # pure red: L = 76
    data = open_dataset(f"imagefolder:{tmp_path}:channels=1")
    assert data.sample_shape == (1, 6, 5)
    x, _ = data.load([0, 1])
    assert torch.allclose(x[0], torch.full((1, 6, 5), 0.2)) and torch.allclose(x[1], torch.full((1, 6, 5), 76 / 255))
    with pytest.raises(UserError, match="channels must be 1 or 3, got '2'"):
        open_dataset(f"imagefolder:{tmp_path}:channels=2")


def test_a_grayscale_model_on_rgb_images_is_told_the_setting(tmp_path):
    from robustaudit.evaluate.samples import model_forward

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    with pytest.raises(UserError, match=r"expected input.*\(the model takes 1-channel images, the data gives 3: "
                                        r"read an ImageFolder with 'imagefolder:ROOT:channels=1', or convert"):
        model_forward(model, torch.zeros(2, 3, 6, 6), "gray")


def test_round_robin_order():
    assert round_robin_order([0, 0, 0, 1, 1, 2]) == [0, 3, 5, 1, 4, 2]
    assert round_robin_order([2, 2, 0, 1, 0]) == [2, 3, 0, 4, 1]  # classes ascending, positions kept in a class
    assert round_robin_order([]) == []


def test_imagefolder_is_ordered_round_robin_so_the_first_n_cover_every_class(tmp_path):
    # on disk class by class (torchvision's order): 4 images of "ant", 3 of "bee", 2 of "cow", 5 of "dog"; each
    # image's pixels hold its class and its rank in the class, to read the order back from the loaded batch
    sizes = {"ant": 4, "bee": 3, "cow": 2, "dog": 5}
    for c, (name, count) in enumerate(sizes.items()):
        for k in range(count):
            _png(tmp_path / name / f"{k:02d}.png", np.full((4, 4, 3), (10 * c, 10 * k, 0), np.uint8))
    data = open_dataset(f"imagefolder:{tmp_path}")
    x, y = data.load(list(range(len(data))))
    order = [(int(c), int(round(float(v) * 255)) // 10) for c, v in zip(y, x[:, 1, 0, 0])]
    assert order == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1), (0, 2), (1, 2), (3, 2),
                     (0, 3), (3, 3), (3, 4)]
    assert [round(float(v) * 255) // 10 for v in x[:, 0, 0, 0]] == y.tolist()  # labels are the folders'
    assert data.known_labels().tolist() == y.tolist()
    assert data.describe(1).endswith(str(Path("bee") / "00.png"))  # file names follow the samples
    # the first 4 of 14 hold every class, and subset() has nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = subset(data, 4)
    assert sorted(data.load(ids)[1].tolist()) == [0, 1, 2, 3]


def test_imagefolder_names_an_empty_class_folder(tmp_path):
    for name in ("a", "b", "c"):
        for k in range(2):
            _png(tmp_path / name / f"{k}.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b" / "0.png").unlink()
    (tmp_path / "b" / "1.png").rename(tmp_path / "b" / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as info:
        open_dataset(f"imagefolder:{tmp_path}")
    assert str(info.value) == (
        f"2 class folders ('b', 'empty') under {tmp_path} hold no image (no file ending in .jpg, .jpeg, .png, .ppm, "
        ".bmp, .pgm, .tif, .tiff, .webp; the other 2 class folders hold 4 images): add images to them or remove them")
    (tmp_path / "b" / "notes.txt").unlink()
    (tmp_path / "b").rmdir()
    with pytest.raises(UserError, match=rf"^class folder 'empty' under {re.escape(str(tmp_path))} holds no image \(.*; the other 2 "
                       r"class folders hold 4 images\): add images to it or remove it$"):
        open_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_sizes(tmp_path):
    _png(tmp_path / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "b" / "2.png", np.full((12, 10, 3), 255, np.uint8))
    data = open_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(
        UserError,
        match=r"sample 1 \(.*2\.png\) has shape \(3, 12, 10\) but sample 0 has \(3, 8, 8\).*:size=N",
    ):
        data.load([0, 1])
    resized = open_dataset(f"imagefolder:{tmp_path}:size=4")
    x, y = resized.load([0, 1])
    assert x.shape == (2, 3, 4, 4) and float(x[0].max()) == 0.0 and float(x[1].min()) == 1.0
    assert resized.name == f"imagefolder:{tmp_path}:size=4"


def test_imagefolder_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="ImageFolder root .* does not exist"):
        open_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match=r"no images under .*expected ROOT/<class name>/<image file>"):
        open_dataset(f"imagefolder:{tmp_path}")
    _png(tmp_path / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = open_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(UserError, match=r"sample 1 \(.*2\.png\): cannot read it"):
        data.load([1])


# ------------------------------------------------------------------------------------ tensor files


def test_tensor_files_round_trip(tmp_path):
    x = torch.rand(5, 3, 4, 4)
    y = torch.tensor([0, 2, 1, 2, 0])
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy(), class_names=np.array(["a", "b", "c", "d"]))
    pt, npz = open_dataset(f"tensors:{tmp_path / 'd.pt'}"), open_dataset(f"tensors:{tmp_path / 'd.npz'}")
    assert (pt.num_classes, pt.class_names, npz.num_classes, npz.class_names) == (
        3,
        None,
        4,
        ["a", "b", "c", "d"],
    )
    for data in (pt, npz):
        xb, yb = data.load(range(5))
        assert torch.equal(xb, x) and torch.equal(yb, y) and data.sample_shape == (3, 4, 4)
    assert pt.name == f"tensors:{tmp_path / 'd.pt'}"


def test_tensor_files_bad_inputs(tmp_path):
    with pytest.raises(UserError, match=r"expected a \.pt or \.npz file"):
        open_dataset(f"tensors:{tmp_path / 'd.csv'}")
    with pytest.raises(UserError, match="d.pt does not exist"):
        open_dataset(f"tensors:{tmp_path / 'd.pt'}")
    torch.save(
        {"x": torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8), "y": torch.tensor([0, 1])},
        tmp_path / "u.pt",
    )
    with pytest.raises(
        UserError,
        match=r"u\.pt: images must be floats in \[0, 1\], got dtype uint8 \(use x.float\(\) / 255\)",
    ):
        open_dataset(f"tensors:{tmp_path / 'u.pt'}")
    torch.save({"images": torch.rand(2, 1, 4, 4)}, tmp_path / "k.pt")
    with pytest.raises(UserError, match=r"missing key\(s\) x, y.*found \['images'\]"):
        open_dataset(f"tensors:{tmp_path / 'k.pt'}")
    torch.save(
        {"x": torch.rand(2, 1, 4, 4), "y": torch.tensor([0, 1]), "fn": os.getcwd}, tmp_path / "evil.pt"
    )
    with pytest.raises(
        UserError,
        match=r"evil.pt: refused: it holds Python objects \((posix|nt|os)\.getcwd\), not only tensors",
    ):
        open_dataset(f"tensors:{tmp_path / 'evil.pt'}")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "u.pt").read_bytes()[:50])
    with pytest.raises(UserError, match="cannot read .*cut.pt"):
        open_dataset(f"tensors:{tmp_path / 'cut.pt'}")
    np.savez(tmp_path / "nhwc.npz", x=np.random.rand(2, 9, 9, 3), y=np.array([0, 1]))
    with pytest.raises(UserError, match=r"nhwc\.npz: images of shape \(2, 9, 9, 3\) look channels-last"):
        open_dataset(f"tensors:{tmp_path / 'nhwc.npz'}")
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(UserError, match="object arrays are refused"):
        open_dataset(f"tensors:{tmp_path / 'obj.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read .*junk.npz"):
        open_dataset(f"tensors:{tmp_path / 'junk.npz'}")


def test_cifar10_labels_are_not_coerced(tmp_path):
    folder = _write_cifar(tmp_path)
    for labels, match in (
        ([0.7, 1], r"'labels' must be integer class indices; label 0 is 0\.7 \(float\)"),
        ([True, 1], r"label 0 is True \(bool\)"),
        ([2**70, 1], r"integer class indices in int64 range"),
        ([0], r"2 images but 1 labels"),
    ):
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f, protocol=2)
        with pytest.raises(UserError, match=match):
            open_dataset(f"cifar10:{tmp_path}")
    # protocol 2 writes empty pixel bytes as bytes(): read, then refused for what it is
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f, protocol=2)
    with pytest.raises(UserError, match=r"cifar10:.*: no images"):
        open_dataset(f"cifar10:{tmp_path}")


def test_mnist_header_sizes_do_not_overflow(tmp_path):
    _write_mnist(tmp_path, "t10k", 3, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB3I", 0, 0, 8, 3, *[2**32 - 1] * 3) + bytes(16))
    with pytest.raises(UserError, match=r"header says .* = 79228162458924105385300197375 bytes, file holds 16"):
        open_dataset(f"mnist:{tmp_path}")


def test_tensor_files_odd_arrays(tmp_path):
    x = np.random.RandomState(0).rand(3, 1, 4, 4)
    np.savez(tmp_path / "be.npz", x=x.astype(">f4"), y=np.array([0, 1, 2], ">i8"))
    xb, yb = open_dataset(f"tensors:{tmp_path / 'be.npz'}").load([0, 1, 2])  # big-endian: converted
    assert torch.allclose(xb, torch.from_numpy(x).float()) and yb.tolist() == [0, 1, 2]
    for name, arrays, match in (
        ("s.npz", {"x": np.array(["a", "b"]), "y": np.array([0, 1])}, r"x is a numpy array of dtype <U1"),
        ("t.npz", {"x": np.zeros((2, 1, 4, 4), "datetime64[s]"), "y": np.array([0, 1])}, "datetime64"),
        ("z.npz", {"x": np.float32(0.5), "y": np.array([0])}, r"got 0-D \(\)"),
        ("c.npz", {"x": x, "y": np.arange(3), "class_names": np.array("abc")}, "'class_names' must be a list"),
        ("f.npz", {"x": x, "y": np.array([0.0, 1.5, 2.0])},
         r"got float64 with non-integer values \(sample 1 has label 1\.5; 1 such labels\)"),
        ("n.npz", {"x": np.where(x > 0.9, np.nan, x), "y": np.arange(3)}, r"NaN or Inf pixels \(\d+ NaN pixels in"),
    ):
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError, match=match):
            open_dataset(f"tensors:{tmp_path / name}")
    for name, entries, match in (
        ("sp.pt", {"x": torch.rand(2, 1, 4, 4).to_sparse(), "y": torch.tensor([0, 1])}, "sparse_coo tensor"),
        ("m.pt", {"x": torch.empty(2, 1, 4, 4, device="meta"), "y": torch.tensor([0, 1])}, "'meta' device"),
    ):
        torch.save(entries, tmp_path / name)
        with pytest.raises(UserError, match=match):
            open_dataset(f"tensors:{tmp_path / name}")
    (tmp_path / "e.pt").write_bytes(b"e")  # torch.load raises IndexError on it
    with pytest.raises(UserError, match=r"cannot read .*e\.pt: not a torch.save file"):
        open_dataset(f"tensors:{tmp_path / 'e.pt'}")
