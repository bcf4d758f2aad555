"""Readers for image data sets on disk: CIFAR-10 (python pickles), MNIST (idx files), ImageFolder.

CIFAR-10 and MNIST are read by our own small readers rather than torchvision's: torchvision checks
md5 sums (CIFAR-10) or asserts on malformed files (MNIST), while a user needs one clear line saying
what is wrong with which file. Pixels stay uint8 in memory (a quarter of float32) and are scaled to
``[0, 1]`` per loaded batch.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from robustaudit.core.errors import UserError
from robustaudit.data.image import DatasetData, ImageData
from robustaudit.data.validate import check_labels, index_tensor

#: How many empty class folders a message names before "...".
_SHOWN = 5

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class ByteImageData(ImageData):
    """Images held as uint8 ``(N, C, H, W)`` in ``[0, 255]``; ``load`` returns them / 255 as float32."""

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        *,
        name: str,
        num_classes: int,
        class_names: list[str] | None,
    ) -> None:
        if len(pixels) == 0:
            raise UserError(f"{name}: no images")
        if len(pixels) != len(labels):
            raise UserError(f"{name}: {len(pixels)} images but {len(labels)} labels")
        self.pixels = pixels
        self.labels = check_labels(labels, num_classes, name)
        self.name = name
        self.num_classes = num_classes
        self.class_names = class_names
        self.sample_shape = tuple(int(d) for d in pixels.shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.labels)

    def known_labels(self) -> torch.Tensor:
        """The ``(N,)`` int64 labels, held in memory."""
        return self.labels

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images in [0, 1] and ``(B,)`` int64 labels."""
        idx = index_tensor(indices, len(self), self.name)
        # uint8 / 255 lies in [0, 1] by construction: nothing left to validate per batch
        return self.pixels[idx].to(torch.float32).div_(255.0), self.labels[idx]


# ---------------------------------------------------------------------------------------- CIFAR-10


def _numpy_attr(module: str, attr: str):
    # numpy 2 moved numpy.core to numpy._core; files pickled under either name must resolve
    for mod in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{attr}")


# Exactly what CIFAR-10 batches need: a dict of bytes/str/int/list plus numpy arrays. Arrays come as
# _reconstruct + ndarray + dtype (protocol 2, the original python-2 files), or as _frombuffer
# (protocol 5); _codecs.encode is how protocol 2 writes bytes from python 3. Nothing here can run
# arbitrary code, so a hostile pickle is refused rather than executed.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    # protocol 2 writes an empty bytes object (the pixels of an empty batch) as bytes(): see _empty_bytes
    ("__builtin__", "bytes"),
    ("builtins", "bytes"),
}


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise _Refused(f"refused to load global '{module}.{name}'")
        if module == "_codecs":
            return _latin1_encode
        if name == "bytes":
            return _empty_bytes
        return _numpy_attr(module, name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # protocol 2 spells bytes as _codecs.encode(text, "latin1"); no other codec is needed or allowed
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"refused codec '{encoding}'")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    # only the no-argument call is needed; bytes(10**12) from a hostile file would allocate a terabyte
    if args:
        raise _Refused("refused call of bytes() with arguments")
    return b""


def _unpickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read CIFAR-10 file {path}: {exc.strerror or exc}") from exc
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise UserError(f"{path} is not a plain CIFAR-10 batch pickle: {exc}") from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        OverflowError,
    ) as exc:
        raise UserError(
            f"cannot read CIFAR-10 file {path}: truncated or not a python pickle ({exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(
            f"{path}: expected a pickled dict (CIFAR-10 python version), got {type(obj).__name__}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_dir(root: Path) -> Path:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    if not root.exists():
        raise UserError(f"CIFAR-10 root {root} does not exist")
    raise UserError(
        f"no CIFAR-10 data under {root}: expected {root / 'cifar-10-batches-py'}/test_batch and "
        "data_batch_1..5 (the python version of CIFAR-10)"
    )


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: pixels uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``."""
    if not path.is_file():
        raise UserError(f"CIFAR-10 file {path} is missing")
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: expected key 'data' holding uint8 pixels of shape (N, 3072), got {got}")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise UserError(f"{path}: expected key 'labels' with one label per image ({len(data)})")
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels; expected one label per image")
    return data.reshape(-1, 3, 32, 32), _cifar_labels(labels, path)


def _cifar_labels(labels: list | tuple | np.ndarray, path: Path) -> np.ndarray:
    """The ``labels`` entry as int64 ``(N,)``; floats (even 3.0), bools and the rest are refused, since
    ``np.asarray(labels, dtype=int64)`` would silently truncate 0.7 to 0 and take True as 1. The
    elements are checked as stored: ``np.asarray([True, 1])`` would already have made True an int."""
    flat = labels.reshape(-1).tolist() if isinstance(labels, np.ndarray) else list(labels)
    bad = next((i for i, v in enumerate(flat) if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise UserError(
            f"{path}: 'labels' must be integer class indices; label {bad} is {flat[bad]!r:.40} "
            f"({type(flat[bad]).__name__})"
        )
    try:
        return np.asarray(labels, dtype=np.int64)
    except OverflowError:  # Python ints beyond int64
        raise UserError(f"{path}: 'labels' must be integer class indices in int64 range") from None


def open_cifar10(root: str | Path, split: str = "test", *, name: str | None = None) -> ByteImageData:
    """CIFAR-10 from ``ROOT/cifar-10-batches-py`` (or ROOT being that folder): ``(N, 3, 32, 32)`` images.

    ``split`` "test" reads ``test_batch``, "train" reads ``data_batch_1`` .. ``data_batch_5``. Class
    names come from ``batches.meta`` (the standard ten when it is absent).
    """
    root = Path(root).expanduser()
    folder = _cifar_dir(root)
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    parts = [_cifar_batch(folder / f) for f in files]
    names = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta").get("label_names")
        if not isinstance(meta, (list, tuple)) or not meta:
            raise UserError(f"{folder / 'batches.meta'}: expected key 'label_names' with the class names")
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta]
    return ByteImageData(
        torch.from_numpy(np.concatenate([p[0] for p in parts])),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
        name=name or f"cifar10:{root}",
        num_classes=len(names),
        class_names=names,
    )


# ------------------------------------------------------------------------------------------ MNIST

_IDX_UBYTE = 0x08


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (magic ``00 00 08 ndim``, big-endian sizes)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut .gz raises EOFError
        raise UserError(f"cannot read MNIST file {path}: {exc}") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise UserError(
            f"{path} is not an MNIST idx file: expected magic 0x0000080{ndim} "
            f"(unsigned bytes, {ndim} dimensions), got 0x{raw[:4].hex() or 'empty'}"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims)  # Python ints: np.prod would wrap around on a hostile header
    if len(raw) - header != expected:
        raise UserError(
            f"{path} is truncated or corrupt: header says {'x'.join(map(str, dims))} = {expected} bytes, "
            f"file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_file(root: Path, stem: str) -> Path:
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    if not root.exists():
        raise UserError(f"MNIST root {root} does not exist")
    raise UserError(f"no MNIST file {stem}[.gz] under {root}: expected {root / 'MNIST' / 'raw' / stem}")


def open_mnist(root: str | Path, split: str = "test", *, name: str | None = None) -> ByteImageData:
    """MNIST from ``ROOT/MNIST/raw/{t10k,train}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's
    layout; ROOT may also be the ``MNIST`` or ``raw`` folder itself): ``(N, 1, 28, 28)`` images."""
    root = Path(root).expanduser()
    prefix = "t10k" if split == "test" else "train"
    images_path = _mnist_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _mnist_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise UserError(
            f"MNIST under {root}: {images_path.name} has {len(images)} images "
            f"but {labels_path.name} has {len(labels)} labels"
        )
    return ByteImageData(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        name=name or f"mnist:{root}",
        num_classes=10,
        class_names=[str(c) for c in range(10)],
    )


# ------------------------------------------------------------------------------------ ImageFolder


class _ToImage:
    """PIL image -> float32 tensor ``(channels, H, W)`` in [0, 1] (RGB, or grayscale with ``channels=1``),
    optionally resized to ``size x size``.

    A class, not a lambda, so DataLoader workers can pickle it.
    """

    def __init__(self, size: int | None, channels: int = 3) -> None:
        self.size, self.channels = size, channels

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.size is not None:
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return pil_to_tensor(image).to(torch.float32).div_(255.0)


def round_robin_order(labels: Sequence[int]) -> list[int]:
    """Positions of ``labels`` taken class by class in turn: each class's first sample (classes in
    ascending order), then each class's second, and so on; within a class the given order is kept.

    ``[0, 0, 0, 1, 1, 2] -> [0, 3, 5, 1, 4, 2]``. A class that runs out is skipped, so every prefix holds
    as many classes as it can (a prefix of ``k * C`` samples holds ``k`` of each of ``C`` classes that
    have them).
    """
    groups: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        groups.setdefault(int(label), []).append(position)
    rows = [groups[c] for c in sorted(groups)]
    return [row[r] for r in range(max(map(len, rows), default=0)) for row in rows if r < len(row)]


def open_imagefolder(root: str | Path, *, size: int | None = None, channels: int = 3,
                     name: str | None = None) -> DatasetData:
    """Images in ``ROOT/<class>/<file>`` (torchvision ImageFolder), read lazily as RGB ``(3, H, W)``, or
    as grayscale ``(1, H, W)`` with ``channels=1`` (for a model of grayscale inputs).

    Class names are the folder names, sorted. All images must share one size unless ``size`` resizes
    each to ``size x size``. Every image is converted to the one mode (grayscale files to RGB, colour
    files to grayscale), so every sample has ``channels`` channels.
    Samples are ordered round-robin over the classes (:func:`round_robin_order`; files sorted within a
    class), not class by class as on disk, so the first ``n`` audited samples cover every class.
    A class folder without an image file is refused, by name.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"ImageFolder root {root} does not exist or is not a folder")
    try:
        # allow_empty: an empty class folder is named by _refuse_empty_classes, not in torchvision's words
        dataset = ImageFolder(str(root), transform=_ToImage(size, channels), allow_empty=True)
    except (FileNotFoundError, OSError) as exc:  # no class folders
        raise UserError(f"no images under {root}: expected ROOT/<class name>/<image file> ({exc})") from exc
    _refuse_empty_classes(dataset.classes, dataset.targets, root)
    # on disk (and in torchvision) the samples come class by class: the first n would cover the first
    # classes only (--n 1000 of ImageNet's validation set: 20 of its 1000 classes)
    order = round_robin_order(dataset.targets)
    dataset.samples = [dataset.samples[i] for i in order]
    dataset.imgs = dataset.samples
    dataset.targets = [label for _, label in dataset.samples]
    spec = name or f"imagefolder:{root}"
    return DatasetData(dataset, name=spec, size_hint=f"resize with '{spec.split(':size=')[0]}:size=N'")


def _refuse_empty_classes(classes: Sequence[str], targets: Sequence[int], root: Path) -> None:
    """One line naming the class folders under ``root`` that hold no image file (all of them: no images)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(classes))
    empty = [c for c, count in zip(classes, counts) if count == 0]
    if not empty:
        return
    listed = ", ".join(f"'{c}'" for c in empty[:_SHOWN]) + (", ..." if len(empty) > _SHOWN else "")
    files = f"no file ending in {', '.join(IMG_EXTENSIONS)}"
    if len(empty) == len(classes):
        raise UserError(f"no images under {root}: its class folders ({listed}) hold {files}; "
                        "expected ROOT/<class name>/<image file>")
    what, verb, them = (f"class folder {listed}", "holds", "it") if len(empty) == 1 else (
        f"{len(empty)} class folders ({listed})", "hold", "them")
    others = len(classes) - len(empty)
    rest = "the other class folder holds" if others == 1 else f"the other {others} class folders hold"
    raise UserError(f"{what} under {root} {verb} no image ({files}; {rest} {len(targets)} images): add images to "
                    f"{them} or remove {them}")
