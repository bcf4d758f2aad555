"""Hostile inputs through ``main(argv)``: every bad file, model, argument and config file gets ONE line
on stderr and exit code 2, never a traceback.

``CASES`` is the source of truth of the table in docs/errors.md: one row per case, in this order
(input, example, what robustaudit says, exit code). Files are written in their real on-disk formats
(``torch.save``, ``np.savez``, CIFAR-10 python pickles, MNIST idx(.gz), PNG/JPEG in class folders).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file

from robustaudit.cli import main

# Every audit is tiny: the whole module stays well under 30 s on a 2-core CPU.
SMALL = ["--n", "8", "--eps", "0.1", "--checks", "off"]
GOOD_X = np.random.RandomState(0).rand(10, 1, 8, 8).astype(np.float32)
GOOD_Y = np.arange(10) % 10


def audit(tmp: Path, *extra: str, model: str | None = "digits-cnn", attack: str | None = "fgsm") -> list[str]:
    """``audit`` argv with a fresh --out; ``model``/``attack`` None leaves them to ``extra`` (or the config)."""
    argv = ["audit", "--out", str(tmp / "out"), *SMALL]
    if model is not None:
        argv += ["--model", model]
    if attack is not None:
        argv += ["--attack", attack]
    return [*argv, *extra]


# ------------------------------------------------------------------------------------ file writers


def pt_file(tmp: Path, name: str = "d.pt", **entries: object) -> str:
    path = tmp / name
    torch.save(entries, path)
    return f"tensors:{path}"


def npz_file(tmp: Path, name: str = "d.npz", **arrays: object) -> str:
    path = tmp / name
    np.savez(path, **arrays)
    return f"tensors:{path}"


def raw_file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cut(path: Path) -> Path:
    """Keep the first half of ``path``: a download or copy that stopped midway."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def cut_spec(spec: str) -> str:
    """``cut`` the file of a ``tensors:FILE`` spec."""
    cut(Path(spec.partition(":")[2]))
    return spec


def with_nan(x: np.ndarray, value: float = float("nan")) -> np.ndarray:
    x = x.copy()
    x[2, 0, 3, 3] = value
    x[5, 0, 0, :2] = value
    return x


def cifar(tmp: Path, batch: object = None, *, raw: bytes | None = None, meta: object = None) -> str:
    """``ROOT/cifar-10-batches-py/test_batch`` pickled as the original python-2 files (protocol 2)."""
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    if batch is None and raw is None:
        batch = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}
    if raw is not None:
        (folder / "test_batch").write_bytes(raw)
    else:
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    if meta is not None:
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return f"cifar10:{tmp / 'cifar'}"


def idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An MNIST idx file: magic ``00 00 type ndim``, big-endian sizes, then the data."""
    return struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist(tmp: Path, images: bytes | None = None, labels: bytes | None = None, *, gz: bool = False) -> str:
    raw = tmp / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = images if images is not None else idx(np.zeros((10, 28, 28), np.uint8))
    labels = labels if labels is not None else idx(np.arange(10, dtype=np.uint8))
    for stem, data in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(raw / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (raw / stem).write_bytes(data)
    return f"mnist:{tmp / 'mnist'}"


def png_bytes(size: int = 8, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(size).randint(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _with_empty_class(spec: str, name: str) -> str:
    """``spec`` (an ``imagefolder:ROOT``) with an empty class folder ``ROOT/name`` added."""
    (Path(spec.partition(":")[2]) / name).mkdir()
    return spec


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def folder(tmp: Path, files: dict[str, bytes], *, fill: int = 10) -> str:
    """``ROOT/<class>/<image>``: ``files`` first (sorted names), then good 8x8 PNGs up to ``fill`` images,
    so ``--n 8`` never warns about a small data set before the bad file is read."""
    root = tmp / "images"
    for rel, data in files.items():
        raw_file(root, rel, data)
    for i in range(fill - len(files)):
        raw_file(root, f"b/z{i}.png", png_bytes(8))
    return f"imagefolder:{root}"


NET_SOURCE = textwrap.dedent(
    """
    import sys
    import torch
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self, k=10):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(64, k)

        def forward(self, x):
            return self.fc(x.flatten(1))


    def build():
        return Net()


    def three_classes():
        return Net(3)


    class Rgb(Net):
        # 10 outputs on 3x8x8 images (ImageFolder's); optionally naming them
        def __init__(self, names=None):
            super().__init__()
            self.fc = nn.Linear(192, 10)
            if names is not None:
                self.class_names = names


    def rgb():
        return Rgb()


    def rgb_named():
        return Rgb(["cat"] + [f"x{i}" for i in range(9)])


    class Raises(Net):
        def forward(self, x):
            raise ValueError("boom")


    class InPlace(nn.Module):
        # scales its input in place: fine on clean data, refused by autograd on an attack's input
        def __init__(self):
            super().__init__()
            from robustaudit.models.catalog import create_model
            self.net = create_model("digits-cnn")

        def forward(self, x):
            x.mul_(1.0)
            return self.net(x)


    class Exits(Net):
        def forward(self, x):
            sys.exit(3)


    class NaNs(Net):
        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")


    class Labels(Net):
        def forward(self, x):
            return self.fc(x.flatten(1)).argmax(1)


    class OneRow(Net):
        def forward(self, x):
            return self.fc(x.flatten(1))[:1]


    class Text(Net):
        def forward(self, x):
            return "logits"


    class ToCuda(Net):
        def forward(self, x):
            return self.fc(x.to("cuda").flatten(1))


    def raises():
        return Raises()


    def half():
        return Net().half()


    def meta():
        return Net().to("meta")


    def to_cuda():
        return ToCuda()


    def in_place():
        return InPlace()


    def exits():
        return Exits()


    def nans():
        return NaNs()


    def labels():
        return Labels()


    def one_row():
        return OneRow()


    def text():
        return Text()


    def not_a_module():
        return 42


    def factory_fails():
        raise RuntimeError("factory failed")


    def needs_args(depth):
        return Net()
    """
)


def net(tmp: Path, attr: str) -> str:
    path = tmp / "nets.py"
    path.write_text(NET_SOURCE)
    return f"{path}:{attr}"


def linear_weights(tmp: Path, name: str = "w.pt", k: int = 10) -> Path:
    """A state_dict that fits ``nets.py:build``, saved as ``torch.save`` or ``.safetensors``."""
    state = {"fc.weight": torch.zeros(k, 64), "fc.bias": torch.zeros(k)}
    path = tmp / name
    if name.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def tampered_card(tmp: Path) -> Path:
    """Weights whose card ``w.pt.json`` (the format of the shipped manifests) records another sha256."""
    path = linear_weights(tmp)
    (tmp / "w.pt.json").write_text('{"name": "w", "sha256": "' + "0" * 64 + '", "reported": {}}')
    return path


def tampered_catalog(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the shipped weights with one byte flipped, put where the catalog looks for them."""
    from robustaudit.models import catalog

    weights = tmp / "weights"
    weights.mkdir()
    for name in ("digits-cnn.pt", "digits-cnn-pgdat.pt"):
        data = bytearray((catalog.WEIGHTS_DIR / name).read_bytes())
        data[-100] ^= 0xFF
        (weights / name).write_bytes(bytes(data))
    monkeypatch.setattr(catalog, "WEIGHTS_DIR", weights)


def torchscript(tmp: Path) -> Path:
    """Half of a TorchScript file."""
    path = tmp / "net.pt"
    with warnings.catch_warnings():  # torch deprecates its TorchScript API; users still have such files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), torch.rand(1, 1, 8, 8)),
                       str(path))
    return cut(path)


def pickled_model(tmp: Path) -> Path:
    path = tmp / "whole.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), path)
    return path


def generator_file(tmp: Path, *, card: bool = True, **meta: object) -> Path:
    """A saved ATN generator (``atn.pt`` and its card ``atn.pt.json``) for 1x8x8 inputs at Linf 0.1, with
    ``meta`` overriding its card's fields (``input_shape``, ``eps``, ``attack``...)."""
    from robustaudit.attacks.learned import GeneratorAttack, PerturbationNet

    fields = {"attack": "atn", "input_shape": [1, 8, 8], "num_classes": 10, "norm": "linf", "eps": 0.1,
              "target": None, "arch": {"class": "PerturbationNet", "width": 4, "down": 1}, **meta}
    path = GeneratorAttack(generator=PerturbationNet(1, width=4, down=1), meta=fields).save(tmp / "atn.pt")
    if not card:
        Path(f"{path}.json").unlink()
    return path


def store_file(tmp: Path) -> None:
    raw_file(tmp, "out/results.sqlite", b"this is not an SQLite database" * 40)


def segfolder(tmp: Path, *, mask_size: int = 64, mask_value: int = 1, mask_name: str = "s0.png",
              mask_mode: str = "L", masks: bool = True, images: bool = True) -> str:
    """``segfolder:ROOT`` with eight 64x64 PNG images and their masks (class indices), the first mask
    broken by the arguments; ``classes=3`` so that a value >= 3 other than 255 is out of range."""
    root = tmp / "seg"
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i in range(8):
        if images:
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "images" / f"s{i}.png")
        if masks:
            size, value, mode, name = (mask_size, mask_value, mask_mode, mask_name) if i == 0 else (64, 1, "L", f"s{i}.png")
            Image.fromarray(np.full((size, size), value, np.uint8)).convert(mode).save(root / "masks" / name)
    return f"segfolder:{root}:classes=3:channels=1"


def voc(tmp: Path, *, split_file: bool = True, mask: bool = True) -> str:
    """``voc:ROOT`` over a VOCdevkit/VOC2012 folder in the real layout, one thing missing."""
    base = tmp / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    if split_file:
        (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(base / "JPEGImages" / "2007_000033.jpg")
    if mask:
        Image.fromarray(np.zeros((30, 40), np.uint8)).convert("P").save(base / "SegmentationClass" / "2007_000033.png")
    return f"voc:{tmp}:size=64"


def config(tmp: Path, text: str | bytes, *, model: str | None = None) -> list[str]:
    path = tmp / "audit.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return audit(tmp, "--config", str(path), model=model, attack=None)


# ---------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One hostile input: what it is, how a user would write it, and the phrase its message must hold."""

    group: str  # files / models / arguments / configuration
    what: str  # the table's "input" column
    example: str  # the table's "example" column
    argv: Callable[..., list[str]]  # (tmp_path, monkeypatch) -> argv
    phrase: str


def C(group: str, what: str, example: str, argv: Callable[..., list[str]], phrase: str) -> Case:
    return Case(group, what, example, argv, phrase)


def _a(build: Callable[[Path], list[str]]) -> Callable[..., list[str]]:
    return lambda tmp, monkeypatch: build(tmp)


def _rb(build: Callable[[Path], list[str]]) -> Callable[..., list[str]]:
    """A case that needs the robustbench package (skipped, saying so, without it)."""
    def argv(tmp: Path, monkeypatch) -> list[str]:
        from robustaudit.core.errors import UserError
        from robustaudit.models.robustbench_models import _robustbench

        try:
            _robustbench()
        except UserError:
            pytest.skip("robustbench is not installed (pip install 'robustaudit[robustbench]')")
        return build(tmp)
    return argv


def _timm(build: Callable[[Path], list[str]]) -> Callable[..., list[str]]:
    """A case that needs the timm package (skipped, saying so, without it)."""
    def argv(tmp: Path, monkeypatch) -> list[str]:
        pytest.importorskip("timm", reason="timm is not installed (pip install 'robustaudit[timm]')")
        return build(tmp)
    return argv


def timm_cache(tmp: Path) -> Path:
    """A Hugging Face hub cache whose test_vit weights file is cut in half."""
    snap = tmp / "hf" / "models--timm--test_vit.r160_in1k" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("r1")
    save_file({"w": torch.zeros(64)}, str(snap / "model.safetensors"))
    cut(snap / "model.safetensors")
    return tmp / "hf"


F, M, A, T = "files", "models", "arguments", "configuration"
X, Y = GOOD_X, GOOD_Y
CLASSES = np.array([str(i) for i in range(10)])

CASES: list[Case] = [
    # ------------------------------------------------------------------ tensor files (.pt, .npz)
    C(F, "tensors .pt: truncated", "half of a `torch.save` file",
      _a(lambda t: audit(t, "--data", cut_spec(pt_file(t, x=torch.from_numpy(X), y=torch.from_numpy(Y))))),
      "not a torch.save file, or truncated"),
    C(F, "tensors .pt: wrong format", "a text file named `d.pt`",
      _a(lambda t: audit(t, "--data", f"tensors:{raw_file(t, 'd.pt', b'x,y')}")), "not a torch.save file"),
    C(F, "tensors .pt: Python objects inside", "`{'x': x, 'y': y, 'fn': os.getcwd}`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.from_numpy(Y), fn=os.getcwd))),
      "refused: it holds Python objects"),
    C(F, "tensors .pt: NaN pixels", "`x[2, 0, 3, 3] = nan` (and 2 more)",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(with_nan(X)), y=torch.from_numpy(Y)))),
      "has NaN or Inf pixels (3 NaN pixels in 2 of 10 samples)"),
    C(F, "tensors .pt: Inf pixels", "`x[2, 0, 3, 3] = inf` (and 2 more)",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(with_nan(X, float("inf"))), y=torch.from_numpy(Y)))),
      "(3 Inf pixels in 2 of 10 samples)"),
    C(F, "tensors .pt: wrong shape, 3-D", "`x` of shape (10, 8, 8)",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X[:, 0]), y=torch.from_numpy(Y)))),
      "for grayscale (N, H, W) use x.unsqueeze(1)"),
    C(F, "tensors .pt: wrong shape, channels last", "`x` of shape (10, 9, 9, 3)",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.rand(10, 9, 9, 3), y=torch.from_numpy(Y)))),
      "look channels-last"),
    C(F, "tensors .pt: empty data set", "`x` of shape (0, 1, 8, 8)",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.zeros(0, 1, 8, 8), y=torch.zeros(0, dtype=torch.long)))),
      "no images"),
    C(F, "tensors .pt: labels out of range", "label 12 with a 10-class model",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.tensor([12] * 10)))),
      "has 10 outputs but data"),
    C(F, "tensors .pt: negative labels", "`y[3] = -1`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.tensor([0, 1, 2, -1, 4, 5, 6, 7, 8, 9])))),
      "sample 3 has negative label -1"),
    C(F, "tensors .pt: labels not integers", "`y = arange(10) + 0.5`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.arange(10) + 0.5))),
      "non-integer values (sample 0 has label 0.5; 10 such labels)"),
    C(F, "tensors .pt: labels whole floats", "`y = arange(10).float()`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.arange(10).float()))),
      "use y.long()"),
    C(F, "tensors .pt: one-hot labels", "`y` of shape (10, 10)",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.eye(10, dtype=torch.long)))),
      "one-hot labels? use y.argmax(1)"),
    C(F, "tensors .pt: x and y of different lengths", "10 images, 7 labels",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.arange(7)))),
      "10 images but 7 labels"),
    C(F, "tensors .pt: uint8 pixels", "`x` uint8 in [0, 255]",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy((X * 255).astype(np.uint8)), y=torch.from_numpy(Y)))),
      "use x.float() / 255"),
    C(F, "tensors .pt: float pixels in [0, 255]", "`x * 255` as float32",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X * 255), y=torch.from_numpy(Y)))),
      "divide by 255"),
    C(F, "tensors .pt: key missing", "`{'x': x}`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X)))), "missing key(s) y"),
    C(F, "tensors .pt: not a dict", "`torch.save(x, path)`",
      _a(lambda t: audit(t, "--data", f"tensors:{_save(t / 'd.pt', torch.from_numpy(X))}")), "expected a dict with keys 'x' and 'y'"),
    C(F, "tensors .pt: sparse images", "`x.to_sparse()`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X).to_sparse(), y=torch.from_numpy(Y)))),
      "x is a sparse_coo tensor"),
    C(F, "tensors .pt: meta tensors", "`torch.empty(..., device='meta')`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.empty(10, 1, 8, 8, device="meta"), y=torch.from_numpy(Y)))),
      "on the 'meta' device"),
    C(F, "tensors .pt: images not an array", "`{'x': 'abc', 'y': y}`",
      _a(lambda t: audit(t, "--data", pt_file(t, x="abc", y=torch.from_numpy(Y)))), "x must be a tensor or numpy array"),
    C(F, "tensors .pt: bad class_names", "`class_names = 5`",
      _a(lambda t: audit(t, "--data", pt_file(t, x=torch.from_numpy(X), y=torch.from_numpy(Y), class_names=5))),
      "'class_names' must be a list of strings"),
    C(F, "tensors: unknown suffix", "`--data tensors:d.csv`",
      _a(lambda t: audit(t, "--data", f"tensors:{t / 'd.csv'}")), "expected a .pt or .npz file"),
    C(F, "tensors: missing file", "`--data tensors:nope.pt`",
      _a(lambda t: audit(t, "--data", f"tensors:{t / 'nope.pt'}")), "does not exist"),
    C(F, "tensors .npz: truncated", "half of an `np.savez` file",
      _a(lambda t: audit(t, "--data", cut_spec(npz_file(t, x=X, y=Y)))),
      "not an .npz file or truncated"),
    C(F, "tensors .npz: wrong format", "a pickle named `d.npz`",
      _a(lambda t: audit(t, "--data", f"tensors:{raw_file(t, 'd.npz', pickle.dumps({'x': 1}))}")),
      "expected a zip archive from np.savez"),
    C(F, "tensors .npz: NaN pixels", "`x[2, 0, 3, 3] = nan` (and 2 more)",
      _a(lambda t: audit(t, "--data", npz_file(t, x=with_nan(X), y=Y))), "(3 NaN pixels in 2 of 10 samples)"),
    C(F, "tensors .npz: wrong shape, 2-D", "`x` of shape (10, 64)",
      _a(lambda t: audit(t, "--data", npz_file(t, x=X.reshape(10, 64), y=Y))), "images must be 4-D (N, C, H, W), got 2-D"),
    C(F, "tensors .npz: empty data set", "`x` of shape (0, 1, 8, 8)",
      _a(lambda t: audit(t, "--data", npz_file(t, x=X[:0], y=Y[:0]))), "no images"),
    C(F, "tensors .npz: labels out of range", "label 12 with `class_names` of 10",
      _a(lambda t: audit(t, "--data", npz_file(t, x=X, y=np.full(10, 12), class_names=CLASSES))),
      "sample 0 has label 12, outside [0, 10) for 10 classes"),
    C(F, "tensors .npz: labels not integers", "`y = arange(10) / 3`",
      _a(lambda t: audit(t, "--data", npz_file(t, x=X, y=np.arange(10) / 3))), "non-integer values (sample 1 has label 0.333333"),
    C(F, "tensors .npz: x and y of different lengths", "10 images, 9 labels",
      _a(lambda t: audit(t, "--data", npz_file(t, x=X, y=Y[:9]))), "10 images but 9 labels"),
    C(F, "tensors .npz: object arrays", "`x` of dtype object",
      _a(lambda t: audit(t, "--data", npz_file(t, x=np.array([object()] * 2, dtype=object), y=Y[:2]))),
      "object arrays are refused"),
    C(F, "tensors .npz: strings", "`x` of dtype `<U3`",
      _a(lambda t: audit(t, "--data", npz_file(t, x=np.array(["abc"] * 10), y=Y))), "expected a numeric array"),
    C(F, "tensors .npz: bad class_names", "`class_names = array('abc')` (0-d)",
      _a(lambda t: audit(t, "--data", npz_file(t, x=X, y=Y, class_names=np.array("abc")))),
      "'class_names' must be a list of strings"),
    # --------------------------------------------------------------------- CIFAR-10 python pickles
    C(F, "CIFAR-10: truncated batch", "half of `test_batch`",
      _a(lambda t: audit(t, "--data", cifar(t, raw=pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10}, protocol=2)[:4000]))),
      "truncated or not a python pickle"),
    C(F, "CIFAR-10: wrong format", "an `.npz` renamed `test_batch`",
      _a(lambda t: audit(t, "--data", cifar(t, raw=b"PK\x03\x04" + bytes(200)))), "truncated or not a python pickle"),
    C(F, "CIFAR-10: hostile pickle", "`test_batch` that calls `os.system`",
      _a(lambda t: audit(t, "--data", cifar(t, raw=b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."))),
      "refused to load global 'posix.system'"),
    C(F, "CIFAR-10: float pixels with NaN", "`data` float32 (10, 3072), NaN",
      _a(lambda t: audit(t, "--data", cifar(t, {b"data": np.full((10, 3072), np.nan, np.float32), b"labels": [0] * 10}))),
      "expected key 'data' holding uint8 pixels of shape (N, 3072), got float32"),
    C(F, "CIFAR-10: wrong shape", "`data` of shape (10, 1024)",
      _a(lambda t: audit(t, "--data", cifar(t, {b"data": np.zeros((10, 1024), np.uint8), b"labels": [0] * 10}))),
      "got uint8 (10, 1024)"),
    C(F, "CIFAR-10: empty batch", "`data` of shape (0, 3072)",
      _a(lambda t: audit(t, "--data", cifar(t, {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}))), "no images"),
    C(F, "CIFAR-10: labels out of range", "label 10",
      _a(lambda t: audit(t, "--data", cifar(t, {b"data": np.zeros((10, 3072), np.uint8), b"labels": [10] * 10}))),
      "has label 10, outside [0, 10)"),
    C(F, "CIFAR-10: labels not integers", "`labels = [0.5, ...]`",
      _a(lambda t: audit(t, "--data", cifar(t, {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0.5] * 10}))),
      "'labels' must be integer class indices; label 0 is 0.5 (float)"),
    C(F, "CIFAR-10: x and y of different lengths", "10 images, 9 labels",
      _a(lambda t: audit(t, "--data", cifar(t, {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 9}))),
      "10 images but 9 labels"),
    C(F, "CIFAR-10: not a dict", "a pickled list",
      _a(lambda t: audit(t, "--data", cifar(t, [1, 2, 3]))), "expected a pickled dict"),
    C(F, "CIFAR-10: bad batches.meta", "`label_names = 5`",
      _a(lambda t: audit(t, "--data", cifar(t, meta={b"label_names": 5}))), "expected key 'label_names'"),
    C(F, "CIFAR-10: no batches", "an empty folder",
      _a(lambda t: audit(t, "--data", f"cifar10:{t}")), "no CIFAR-10 data under"),
    C(F, "CIFAR-10: missing root", "`--data cifar10:nope`",
      _a(lambda t: audit(t, "--data", f"cifar10:{t / 'nope'}")), "does not exist"),
    # ------------------------------------------------------------------------- MNIST idx(.gz)
    C(F, "MNIST: truncated idx", "images file cut by 100 bytes",
      _a(lambda t: audit(t, "--data", mnist(t, idx(np.zeros((10, 28, 28), np.uint8))[:-100]))),
      "is truncated or corrupt: header says 10x28x28 = 7840 bytes, file holds 7740"),
    C(F, "MNIST: truncated .gz", "first 30 bytes of the .gz",
      _a(lambda t: audit(t, "--data", _cut_gz(mnist(t, gz=True)))), "cannot read MNIST file"),
    C(F, "MNIST: wrong format", "a PNG named `t10k-images-idx3-ubyte`",
      _a(lambda t: audit(t, "--data", mnist(t, png_bytes()))), "is not an MNIST idx file"),
    C(F, "MNIST: float pixels", "idx of type 0x0D (float32)",
      _a(lambda t: audit(t, "--data", mnist(t, idx(np.zeros((10, 28, 28), ">f4"), 0x0D)))), "expected magic 0x00000803"),
    C(F, "MNIST: header lies about the size", "dims 2^32-1 x 2^32-1 x 2^32-1",
      _a(lambda t: audit(t, "--data", mnist(t, struct.pack(">BBBB3I", 0, 0, 8, 3, *[2**32 - 1] * 3) + bytes(16)))),
      "is truncated or corrupt"),
    C(F, "MNIST: empty", "0 images, 0 labels",
      _a(lambda t: audit(t, "--data", mnist(t, idx(np.zeros((0, 28, 28), np.uint8)), idx(np.zeros(0, np.uint8))))), "no images"),
    C(F, "MNIST: labels out of range", "label 12",
      _a(lambda t: audit(t, "--data", mnist(t, labels=idx(np.full(10, 12, np.uint8))))), "has label 12, outside [0, 10)"),
    C(F, "MNIST: x and y of different lengths", "10 images, 9 labels",
      _a(lambda t: audit(t, "--data", mnist(t, labels=idx(np.zeros(9, np.uint8))))), "has 10 images but t10k-labels-idx1-ubyte has 9 labels"),
    C(F, "MNIST: missing files", "`--data mnist:EMPTY_DIR`",
      _a(lambda t: audit(t, "--data", f"mnist:{t}")), "no MNIST file t10k-images-idx3-ubyte"),
    # --------------------------------------------------------------------------- ImageFolder
    C(F, "ImageFolder: corrupt image", "`a/1.png` holding garbage after the PNG signature",
      _a(lambda t: audit(t, "--data", folder(t, {"a/1.png": b"\x89PNG\r\n\x1a\n not really"}))), "cannot read it"),
    C(F, "ImageFolder: truncated image", "half of a JPEG",
      _a(lambda t: audit(t, "--data", folder(t, {"a/1.jpg": half(png_bytes(64, "JPEG"))}))), "image file is truncated"),
    C(F, "ImageFolder: empty image file", "`a/1.png` of 0 bytes",
      _a(lambda t: audit(t, "--data", folder(t, {"a/1.png": b""}))), "cannot read it: not an image file"),
    C(F, "ImageFolder: images of different sizes", "8x8 and 9x9 PNGs",
      _a(lambda t: audit(t, "--data", folder(t, {"a/1.png": png_bytes(9)}), model=net(t, "build"))),
      "images must all have one size"),
    C(F, "ImageFolder: no images", "class folders with `.txt` files only",
      _a(lambda t: audit(t, "--data", f"imagefolder:{raw_file(t, 'im/a/x.txt', b'hi').parent.parent}")),
      "im: its class folders ('a') hold no file ending in .jpg"),
    C(F, "ImageFolder: an empty class folder", "`a/` empty beside 10 images in `b/`",
      _a(lambda t: audit(t, "--data", _with_empty_class(folder(t, {}), "a"))),
      "images holds no image (no file ending in .jpg"),
    C(F, "ImageFolder: a single class", "10 images in `b/` only, a 10-output model",
      _a(lambda t: audit(t, "--data", folder(t, {}), model=net(t, "rgb"))),
      "images' has a single class ('b'): a classifier audited on the data's classes always predicts it"),
    C(F, "ImageFolder: missing root", "`--data imagefolder:nope`",
      _a(lambda t: audit(t, "--data", f"imagefolder:{t / 'nope'}")), "does not exist or is not a folder"),
    C(F, "ImageFolder: bad size", "`imagefolder:ROOT:size=0`",
      _a(lambda t: audit(t, "--data", folder(t, {}) + ":size=0")), "size must be a positive integer, got '0'"),
    C(F, "ImageFolder: unknown setting", "`imagefolder:ROOT:sz=32`",
      _a(lambda t: audit(t, "--data", folder(t, {}) + ":sz=32")), "(did you mean 'size'?)"),
    C(F, "data: unknown data set", "`--data digitz`",
      _a(lambda t: audit(t, "--data", "digitz")), "unknown dataset 'digitz' (did you mean 'digits'?)"),
    C(F, "data: location missing", "`--data cifar10`",
      _a(lambda t: audit(t, "--data", "cifar10")), "needs a location"),
    # ------------------------------------------------------------------ segmentation data (segfolder, voc)
    C(F, "segfolder: mask of another size", "a 32x32 mask for a 64x64 image",
      _a(lambda t: seg(t, segfolder(t, mask_size=32))), "is 32x32 but its image s0.png is 64x64"),
    C(F, "segfolder: class index out of range", "mask value 7 with `:classes=3`",
      _a(lambda t: seg(t, segfolder(t, mask_value=7))), "has class index 7 in its mask, outside [0, 3)"),
    C(F, "segfolder: image without a mask", "`images/s0.png`, no `masks/s0.png`",
      _a(lambda t: seg(t, segfolder(t, mask_name="other.png"))), "has no mask: expected"),
    C(F, "segfolder: JPEG mask", "`masks/s0.jpg`",
      _a(lambda t: seg(t, segfolder(t, mask_name="s0.jpg"))), "is not a PNG; masks must be lossless PNGs"),
    C(F, "segfolder: RGB mask", "a colour PNG as mask",
      _a(lambda t: seg(t, segfolder(t, mask_mode="RGB"))), "masks must be single-channel class indices"),
    C(F, "segfolder: no masks folder", "`ROOT/images/` only",
      _a(lambda t: seg(t, segfolder(t, masks=False))), "has images/ but no masks/ folder"),
    C(F, "segfolder: empty images folder", "`ROOT/images/` and `ROOT/masks/` empty",
      _a(lambda t: seg(t, segfolder(t, images=False))), "no images in"),
    C(F, "segfolder: bad size", "`segfolder:ROOT:size=64,x`",
      _a(lambda t: seg(t, segfolder(t) + ":size=64,x")), "size must be N or H,W (positive integers)"),
    C(F, "voc: no VOCdevkit", "`--data voc:ROOT` on an empty folder",
      _a(lambda t: seg(t, f"voc:{t}")), "no PASCAL VOC 2012 under"),
    C(F, "voc: split file missing", "no `ImageSets/Segmentation/val.txt`",
      _a(lambda t: seg(t, voc(t, split_file=False))), "val.txt is missing"),
    C(F, "voc: listed mask missing", "`val.txt` names an image without `SegmentationClass/*.png`",
      _a(lambda t: seg(t, voc(t, mask=False))), "val.txt lists '2007_000033' but the mask"),
    C(F, "digit-scenes: bad channels", "`--data digit-scenes:channels=2`",
      _a(lambda t: seg(t, "digit-scenes:channels=2")), "channels must be 1 or 3, got '2'"),
    C(F, "tensors: masks of another size", "`x` (10, 1, 64, 64), `y` (10, 32, 32) masks",
      _a(lambda t: seg(t, npz_file(t, x=np.zeros((10, 1, 64, 64), np.float32), y=np.zeros((10, 32, 32), np.int64)))),
      "images are 64x64 but masks 32x32"),
    C(F, "tensors: float masks", "`y` (10, 64, 64) of 0.5",
      _a(lambda t: seg(t, npz_file(t, x=np.zeros((10, 1, 64, 64), np.float32), y=np.full((10, 64, 64), 0.5)))),
      "masks must hold integer class indices"),
    # -------------------------------------------------------------------------------- models
    C(M, "wrong output size", "`nets.py:three_classes` (3 logits) on digits (10 classes)",
      _a(lambda t: audit(t, model=net(t, "three_classes"))), "has 3 outputs but data 'digits' has 10 classes"),
    C(M, "output names match only some classes", "outputs named `cat`, `x0`..`x8`; folders `b/`, `cat/`",
      _a(lambda t: audit(t, "--data", folder(t, {"cat/0.png": png_bytes(8)}), model=net(t, "rgb_named"))),
      "not every class name matches exactly one output: class 'b' matches no output's name; give --class-map"),
    C(M, "returns class indices", "forward returns `logits.argmax(1)`",
      _a(lambda t: audit(t, model=net(t, "labels"))), "returned int64 outputs; it must return float logits"),
    C(M, "returns the wrong number of rows", "forward returns `logits[:1]`",
      _a(lambda t: audit(t, model=net(t, "one_row"))), "returned 1 rows of logits (shape (1, 10)) for a batch of 8"),
    C(M, "returns something else", "forward returns a string",
      _a(lambda t: audit(t, model=net(t, "text"))), "the model returned str"),
    C(M, "raises in forward", "`raise ValueError('boom')`",
      _a(lambda t: audit(t, model=net(t, "raises"))), "raised ValueError in forward: boom"),
    C(M, "raises in forward during the attack", "`x.mul_(1.0)` on the input (autograd refuses it)",
      _a(lambda t: audit(t, model=net(t, "in_place"))), "in forward during attack 'fgsm'"),
    C(M, "calls sys.exit in forward", "`sys.exit(3)`",
      _a(lambda t: audit(t, model=net(t, "exits"))), "called sys.exit(3)"),
    C(M, "float16 weights", "`return Net().half()`",
      _a(lambda t: audit(t, model=net(t, "half"))), "has float16 weights: audits take a float32 model"),
    C(M, "weights on the meta device", "`return Net().to('meta')`",
      _a(lambda t: audit(t, model=net(t, "meta"))), "has its weights on the 'meta' device"),
    C(M, "forward moves tensors to an absent device", "`x.to('cuda')` in forward on a CPU machine",
      _a(lambda t: audit(t, "--device", "cpu", model=net(t, "to_cuda"))), "moves tensors to another device in forward"),
    C(M, "returns NaN", "logits `* nan`",
      _a(lambda t: audit(t, model=net(t, "nans"))), "returned NaN or infinite logits"),
    C(M, "factory returns a non-module", "`def not_a_module(): return 42`",
      _a(lambda t: audit(t, model=net(t, "not_a_module"))), "returned int, expected torch.nn.Module"),
    C(M, "factory raises", "`raise RuntimeError('factory failed')`",
      _a(lambda t: audit(t, model=net(t, "factory_fails"))), "raised RuntimeError: factory failed"),
    C(M, "factory needs arguments", "`def needs_args(depth)`",
      _a(lambda t: audit(t, model=net(t, "needs_args"))), "needs arguments (depth)"),
    C(M, "file.py with a syntax error", "`def f(:`",
      _a(lambda t: audit(t, model=f"{raw_file(t, 'bad.py', b'def f(:')}:f")), "syntax error in"),
    C(M, "file.py that fails to import", "`import no_such_module_xyz`",
      _a(lambda t: audit(t, model=f"{raw_file(t, 'imp.py', b'import no_such_module_xyz')}:f")),
      "raised ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    C(M, "missing callable", "`nets.py:biuld`",
      _a(lambda t: audit(t, model=net(t, "biuld"))), "has no callable 'biuld' (did you mean 'build'?)"),
    C(M, "missing file.py", "`--model nope.py:build`",
      _a(lambda t: audit(t, model=f"{t / 'nope.py'}:build")), "not found"),
    C(M, "unknown catalog model", "`--model digits-cnnn`",
      _a(lambda t: audit(t, model="digits-cnnn")), "did you mean 'digits-cnn'?"),
    C(M, "unknown torchvision architecture", "`--model torchvision:resnett18`",
      _a(lambda t: audit(t, model="torchvision:resnett18")), "did you mean 'resnet18'?"),
    C(M, "unknown torchvision weights enum", "`--model torchvision:resnet18:weights=IMAGENET1K_V3`",
      _a(lambda t: audit(t, model="torchvision:resnet18:weights=IMAGENET1K_V3")),
      "ResNet18_Weights has no weights 'IMAGENET1K_V3' (did you mean 'IMAGENET1K_V1'?)"),
    C(M, "torchvision setting misspelt", "`--model torchvision:resnet18:weigths=IMAGENET1K_V1`",
      _a(lambda t: audit(t, model="torchvision:resnet18:weigths=IMAGENET1K_V1")),
      "unexpected keyword argument 'weigths' (did you mean 'weights'?)"),
    C(M, "torchvision weights not in the cache", "`--model torchvision:squeezenet1_1:weights=DEFAULT --model-dir D` (empty D)",
      _a(lambda t: audit(t, "--model-dir", str(t), model=TV_SPEC)), "are not in the cache: expected '"),
    C(M, "torchvision weights download fails", "`--allow-download` without a network (name resolution fails)",
      lambda t, monkeypatch: (offline(monkeypatch), audit(t, "--model-dir", str(t), "--allow-download", model=TV_SPEC))[1],
      "could not download https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth to '"),
    C(M, "truncated cached torchvision weights", "half of `D/checkpoints/squeezenet1_1-b8a52dc0.pth`",
      _a(lambda t: audit(t, "--model-dir", str(tv_cache(t, cut)), model=TV_SPEC)),
      "are unusable: could not read weights file"),
    C(M, "cached torchvision weights of random bytes", "random bytes as `squeezenet1_1-b8a52dc0.pth`",
      _a(lambda t: audit(t, "--model-dir", str(tv_cache(t, lambda p: p.write_bytes(bytes(range(7, 256))))),
                         model=TV_SPEC)), "neither a zip archive (torch.save) nor a pickle"),
    C(M, "cached torchvision weights of another architecture", "mobilenet_v3_small's state_dict as `squeezenet1_1-b8a52dc0.pth`",
      _a(lambda t: audit(t, "--model-dir", str(tv_cache(t, foreign_weights)), model=TV_SPEC)),
      "are not SqueezeNet1_1_Weights's"),
    C(M, "timm model without timm installed", "`--model timm:resnet18` (no timm package)",
      lambda t, monkeypatch: (monkeypatch.setitem(__import__("sys").modules, "timm", None),
                              audit(t, model="timm:resnet18"))[1], "install robustaudit[timm]"),
    C(M, "unknown RobustBench model", "`--model robustbench:Standart`",
      _rb(lambda t: audit(t, model="robustbench:Standart")), "(did you mean 'Standard'?)"),
    C(M, "RobustBench dataset that is not one", "`--model robustbench:Standard:dataset=mnist`",
      _rb(lambda t: audit(t, model="robustbench:Standard:dataset=mnist")),
      "dataset=mnist is not one of cifar10, cifar100, imagenet"),
    C(M, "RobustBench model of another threat", "`--model robustbench:Carmon2019Unlabeled:threat=L2`",
      _rb(lambda t: audit(t, model="robustbench:Carmon2019Unlabeled:threat=L2")),
      "it has one for dataset=cifar10,threat=Linf"),
    C(M, "RobustBench weights not in the cache", "`--model robustbench:Standard --model-dir D` (empty D)",
      _rb(lambda t: audit(t, "--model-dir", str(t), model="robustbench:Standard")),
      "are not in the cache: expected '"),
    C(M, "truncated cached RobustBench weights", "half of `D/cifar10/Linf/Standard.pt`",
      _rb(lambda t: audit(t, "--model-dir", str(rb_cache(t, cut)), model="robustbench:Standard")),
      "are unusable: could not read weights file"),
    C(M, "cached RobustBench weights of random bytes", "random bytes as `D/cifar10/Linf/Standard.pt`",
      _rb(lambda t: audit(t, "--model-dir", str(rb_cache(t, lambda p: p.write_bytes(bytes(range(7, 256))))),
                          model="robustbench:Standard")), "neither a zip archive (torch.save) nor a pickle"),
    C(M, "cached RobustBench weights of another architecture", "a small state_dict as `D/cifar10/Linf/Standard.pt`",
      _rb(lambda t: audit(t, "--model-dir", str(rb_cache(t, lambda p: None)), model="robustbench:Standard")),
      "are not its architecture's: weights '"),
    C(M, "RobustBench model without robustbench installed", "`--model robustbench:Standard` (no robustbench package)",
      lambda t, monkeypatch: (monkeypatch.setitem(__import__("sys").modules, "robustbench", None),
                              audit(t, model="robustbench:Standard"))[1], "pip install 'robustaudit[robustbench]'"),
    C(M, "RobustBench entry built through timm, weights not in the cache",
      "`--model robustbench:Debenedetti2022Light_XCiT-S12` (empty torch hub cache)",
      lambda t, monkeypatch: (monkeypatch.setattr(__import__("torch").hub, "_hub_dir", str(t / "hub")),
                              _rb(lambda t: audit(t, model="robustbench:Debenedetti2022Light_XCiT-S12"))(t, monkeypatch))[1],
      "(built through timm: torch hub's cache, TORCH_HOME)"),
    C(M, "RobustBench entry built from torchvision's weights", "`--model robustbench:Standard_R50:dataset=imagenet`",
      _rb(lambda t: audit(t, model="robustbench:Standard_R50:dataset=imagenet")),
      "from torchvision's weights: use torchvision:resnet50:weights=IMAGENET1K_V1"),
    C(M, "timm weights not in the cache", "`--model timm:test_vit --model-dir D` (empty D)",
      _timm(lambda t: audit(t, "--model-dir", str(t), model="timm:test_vit")),
      "are not in timm's cache: expected '"),
    C(M, "truncated cached timm weights", "half of `D/models--timm--test_vit.r160_in1k/snapshots/R/model.safetensors`",
      _timm(lambda t: audit(t, "--model-dir", str(timm_cache(t)), model="timm:test_vit")),
      "cached weights of 'timm:test_vit' are unusable"),
    C(M, "model spec is a folder", "`--model ./models/`",
      _a(lambda t: audit(t, model=str(t))), "is a directory"),
    C(M, "state_dict that does not fit (keys)", "`--model digits-cnn --weights linear.pt`",
      _a(lambda t: audit(t, "--weights", str(linear_weights(t)))), "do not fit the model: keys 10 missing"),
    C(M, "state_dict that does not fit (shapes)", "3-class weights for the 10-class net",
      _a(lambda t: audit(t, "--weights", str(linear_weights(t, k=3)), model=net(t, "build"))),
      "'fc.weight' has shape (3, 64) in the file but (10, 64) in the model"),
    C(M, "truncated .pt weights", "half of a `torch.save` state_dict",
      _a(lambda t: audit(t, "--weights", str(cut(linear_weights(t))), model=net(t, "build"))),
      "(corrupt, truncated or not a PyTorch file?): a zip archive cut short"),
    C(M, "truncated .safetensors weights", "half of a `.safetensors` file",
      _a(lambda t: audit(t, "--weights", str(cut(linear_weights(t, "w.safetensors"))), model=net(t, "build"))),
      "corrupt or truncated safetensors?"),
    C(M, "weights file of random bytes", "`--weights noise.pt`",
      _a(lambda t: audit(t, "--weights", str(raw_file(t, "noise.pt", bytes(range(7, 256)))), model=net(t, "build"))),
      "neither a zip archive (torch.save) nor a pickle"),
    C(M, "missing weights file", "`--weights nope.pt`",
      _a(lambda t: audit(t, "--weights", str(t / "nope.pt"))), "weights file '"),
    C(M, "weights whose sha256 does not match their card", "`w.pt` with a card `w.pt.json` of another sha256",
      _a(lambda t: audit(t, "--weights", str(tampered_card(t)), model=net(t, "build"))),
      "but its card 'w.pt.json' expects 000000000000…: refused"),
    C(M, "tampered catalog weights", "one byte of the shipped `digits-cnn.pt` flipped",
      lambda t, monkeypatch: (tampered_catalog(t, monkeypatch), audit(t))[1],
      "but the card of 'digits-cnn' expects"),
    C(M, "truncated TorchScript model", "half of a `torch.jit.save` file",
      _a(lambda t: audit(t, model=str(torchscript(t)))), "a zip archive cut short or damaged"),
    C(M, "corrupt torch.export model", "a `.pt2` of zeros",
      _a(lambda t: audit(t, model=str(raw_file(t, "m.pt2", bytes(64))))), "could not load torch.export archive"),
    C(M, "pickled whole model", "`torch.save(model, 'whole.pt')` without --trust-pickle",
      _a(lambda t: audit(t, model=str(pickled_model(t)))), "pass --trust-pickle if you trust its source"),
    C(M, "bad normalization", "`--normalize mean=abc`",
      _a(lambda t: audit(t, "--normalize", "mean=abc")), "is not a number"),
    C(M, "normalization for 3 channels on 1", "`--normalize mean=.5,.5,.5,std=.2,.2,.2`",
      _a(lambda t: audit(t, "--normalize", "mean=.5,.5,.5,std=.2,.2,.2")), "normalize has 3 channels"),
    # ----------------------------------------------------------------------------- arguments
    C(A, "unknown flag", "`--epz 0.1`", _a(lambda t: audit(t, "--epz", "0.1")), "(did you mean '--eps'?)"),
    C(A, "unknown command", "`robustaudit audti`", _a(lambda t: ["audti"]), "(did you mean 'audit'?)"),
    C(A, "unknown norm", "`--norm linff`", _a(lambda t: audit(t, "--norm", "linff")), "(did you mean 'linf'?)"),
    C(A, "unknown attack", "`--attack pgdd`", _a(lambda t: audit(t, attack="pgdd")), "unknown attack 'pgdd' (did you mean 'pgd'?)"),
    C(A, "unknown attack setting", "`--attack pgd:stepz=3`",
      _a(lambda t: audit(t, attack="pgd:stepz=3")), "has no setting 'stepz' (did you mean 'steps'?)"),
    C(A, "eps negative", "`--eps=-1`", _a(lambda t: audit(t, "--eps=-1")), "eps must be >= 0"),
    C(A, "eps NaN", "`--eps nan`", _a(lambda t: audit(t, "--eps", "nan")), "eps must be finite"),
    C(A, "eps infinite", "`--eps inf`", _a(lambda t: audit(t, "--eps", "inf")), "eps must be finite"),
    C(A, "eps not a number", "`--eps abc`", _a(lambda t: audit(t, "--eps", "abc")), "cannot parse eps 'abc'"),
    C(A, "eps beyond the data range", "`--eps 8` on [0, 1] images", _a(lambda t: audit(t, "--eps", "8")),
      "eps 8 (linf) reaches every image: images are in [0, 1], so an linf radius must be below 1 (did you mean 8/255?)"),
    C(A, "eps divides by zero", "`--eps 1/0`", _a(lambda t: audit(t, "--eps", "1/0")), "cannot parse eps '1/0'"),
    C(A, "eps list with a hole", "`--eps 0.1,,0.2`", _a(lambda t: audit(t, "--eps", "0.1,,0.2")), "cannot parse eps ''"),
    C(A, "device that is not there", "`--device cuda:7`", _a(lambda t: audit(t, "--device", "cuda:7")), "'cuda:7'"),
    C(A, "device that is no device", "`--device gpu`", _a(lambda t: audit(t, "--device", "gpu")), "unknown device 'gpu' (did you mean 'cuda'?)"),
    C(A, "device in capitals", "`--device CPU`", _a(lambda t: audit(t, "--device", "CPU")), "(did you mean 'cpu'?)"),
    C(A, "attack steps zero", "`--attack pgd:steps=0`", _a(lambda t: audit(t, attack="pgd:steps=0")),
      "steps must be an integer >= 1 and <= 100000, got 0"),
    C(A, "attack steps beyond the cap", "`--attack pgd:steps=1e20`", _a(lambda t: audit(t, attack="pgd:steps=1e20")),
      "steps must be an integer >= 1 and <= 100000, got 1e+20"),
    C(A, "attack steps a huge integer", "`--attack pgd:steps=100000000000000000000`",
      _a(lambda t: audit(t, attack="pgd:steps=100000000000000000000")),
      "steps must be an integer >= 1 and <= 100000, got 100000000000000000000"),
    C(A, "attack steps a fraction", "`--attack pgd:steps=2.5`", _a(lambda t: audit(t, attack="pgd:steps=2.5")),
      "steps must be an integer >= 1 and <= 100000, got 2.5"),
    C(A, "attack restarts negative", "`--attack pgd:restarts=-1`", _a(lambda t: audit(t, attack="pgd:restarts=-1")),
      "restarts must be an integer >= 1 and <= 1000, got -1"),
    C(A, "square queries beyond the cap", "`--attack square:queries=1000000000000`",
      _a(lambda t: audit(t, attack="square:queries=1000000000000")),
      "queries must be an integer >= 1 and <= 1000000, got 1000000000000"),
    C(A, "eot passes beyond the cap", "`--attack eot:k=100000(pgd)`",
      _a(lambda t: audit(t, attack="eot:k=100000(pgd)")), "k must be an integer >= 1 and <= 10000, got 100000"),
    C(A, "attack unknown setting", "`--attack pgd:foo=1`", _a(lambda t: audit(t, attack="pgd:foo=1")), "attack 'pgd' has no setting 'foo'"),
    C(A, "attack steps not a number", "`--attack pgd:steps=abc`", _a(lambda t: audit(t, attack="pgd:steps=abc")), "got 'abc'"),
    C(A, "attack step size NaN", "`--attack pgd:step_size=nan`", _a(lambda t: audit(t, attack="pgd:step_size=nan")), "step_size must be a finite number"),
    C(A, "attack switch not a boolean", "`--attack pgd:random_start=maybe`",
      _a(lambda t: audit(t, attack="pgd:random_start=maybe")), "random_start is a switch: true or false"),
    C(A, "attack setting without value", "`--attack pgd:steps=`", _a(lambda t: audit(t, attack="pgd:steps=")), "expected key=value"),
    C(A, "attack setting twice", "`--attack pgd:steps=3,steps=4`", _a(lambda t: audit(t, attack="pgd:steps=3,steps=4")), "given twice"),
    C(A, "wrapper without its attack", "`--attack eot`", _a(lambda t: audit(t, attack="eot")), "wraps another attack"),
    C(A, "unbalanced parentheses", "`--attack eot(pgd`", _a(lambda t: audit(t, attack="eot(pgd")), "unbalanced parentheses"),
    C(A, "attack for another norm", "`--attack cw` with linf", _a(lambda t: audit(t, attack="cw:steps=2")), "supports norms l2, not 'linf'"),
    C(A, "foolbox setting of the wrong type", "`--attack foolbox:LinfPGD:steps=abc`",
      _a(lambda t: audit(t, attack="foolbox:LinfPGD:steps=abc")), "steps must be an integer, got 'abc'"),
    C(A, "transfer surrogate for other images", "`--attack transfer:surrogate=digits32-cnn(pgd)` on 8x8 digits",
      _a(lambda t: audit(t, attack="transfer:surrogate=digits32-cnn(pgd)")),
      "surrogate 'digits32-cnn' takes 1x32x32 inputs but data 'digits' has 1x8x8 images"),
    C(A, "transfer surrogate a segmentation model", "`--attack transfer:surrogate=unet-tiny(pgd)`",
      _a(lambda t: audit(t, attack="transfer:surrogate=unet-tiny(pgd)")),
      "surrogate 'unet-tiny' is a segmentation model, not a classifier"),
    C(A, "--n zero", "`--n 0`", _a(lambda t: audit(t, "--n", "0")), "--n must be >= 1, got 0"),
    C(A, "--n negative", "`--n=-5`", _a(lambda t: audit(t, "--n=-5")), "--n must be >= 1, got -5"),
    C(A, "--n not a number", "`--n abc`", _a(lambda t: audit(t, "--n", "abc")), "invalid int value: 'abc'"),
    C(A, "--batch-size zero", "`--batch-size 0`", _a(lambda t: audit(t, "--batch-size", "0")), "--batch-size must be >= 1, got 0"),
    C(A, "--batch-size negative", "`--batch-size=-1`", _a(lambda t: audit(t, "--batch-size=-1")), "--batch-size must be >= 1, got -1"),
    C(A, "--seed beyond 64 bits", "`--seed 18446744073709551616`",
      _a(lambda t: audit(t, "--seed", str(2**64))), "--seed must fit in 64 bits"),
    C(A, "--fail-under outside [0, 1]", "`--fail-under 7`", _a(lambda t: audit(t, "--fail-under", "7")), "accuracy in [0, 1]"),
    C(A, "--out is a file", "`--out results.json`",
      _a(lambda t: audit(t, "--out", str(raw_file(t, "f.txt", b"x")))), "is a file, not a directory"),
    C(A, "--out is empty", "`--out ''`", _a(lambda t: audit(t, "--out", "")), "--out is empty"),
    C(A, "--out holds a corrupt store", "`results.sqlite` of text",
      _a(lambda t: (store_file(t), audit(t))[1]), "is not a robustaudit results store"),
    C(A, "--resume with --overwrite", "`--resume --overwrite`",
      _a(lambda t: audit(t, "--resume", "--overwrite")), "exclude each other"),
    C(A, "--weights for two models", "`--model a --model b --weights w.pt`",
      _a(lambda t: audit(t, "--model", "digits-cnn-pgdat", "--weights", str(linear_weights(t)))), "give one --weights per --model"),
    C(A, "report of a folder without results", "`robustaudit report empty/`",
      _a(lambda t: ["report", str(t)]), "no results.json in"),
    C(A, "report of a foreign JSON file", "`results.json` holding `[1, 2]`",
      _a(lambda t: ["report", str(raw_file(t, "r/results.json", b"[1, 2]").parent)]), "is not a robustaudit results file"),
    C(A, "list of an unknown kind", "`robustaudit list modles`", _a(lambda t: ["list", "modles"]), "(did you mean 'models'?)"),
    # ------------------------------------------------------------------------- configuration
    C(T, "config: missing file", "`--config nope.toml`",
      _a(lambda t: audit(t, "--config", str(t / "nope.toml"), model=None, attack=None)), "not found"),
    C(T, "config: a folder", "`--config ./`",
      _a(lambda t: audit(t, "--config", str(t), model=None, attack=None)), "is a directory"),
    C(T, "config: bad TOML syntax", "`model = [`", _a(lambda t: config(t, "model = [\n")), "is not valid TOML"),
    C(T, "config: not UTF-8", "bytes `ff fe 00`", _a(lambda t: config(t, b"\xff\xfe\x00")), "cannot read config"),
    C(T, "config: unknown key", "`modle = 'digits-cnn'`",
      _a(lambda t: config(t, "modle = 'digits-cnn'\n")), "unknown key 'modle' (did you mean 'model'?)"),
    C(T, "config: wrong type (int)", "`n = '5'`", _a(lambda t: config(t, "n = '5'\n")), "'n' must be int, got '5'"),
    C(T, "config: wrong type (bool)", "`trust_pickle = 'yes'`",
      _a(lambda t: config(t, "trust_pickle = 'yes'\n")), "'trust_pickle' must be bool"),
    C(T, "config: wrong type (eps)", "`eps = true`", _a(lambda t: config(t, "eps = true\n")), "cannot parse eps True"),
    C(T, "config: wrong type (model)", "`model = 5`", _a(lambda t: config(t, "model = 5\n")), "'model' must be a string or a list of strings"),
    C(T, "config: [audit] not a table", "`audit = 5`", _a(lambda t: config(t, "audit = 5\n")), "'audit' must be a table"),
    C(T, "config: keys outside [audit]", "`eps = 0.1` above `[audit]`",
      _a(lambda t: config(t, "eps = 0.1\n[audit]\nn = 3\n")), "key 'eps' is outside the [audit] table"),
    C(T, "config: [[models]] unknown key", "`[[models]]` with `wieghts = ...`",
      _a(lambda t: config(t, "[[models]]\nspec = 'digits-cnn'\nwieghts = 'w.pt'\n")),
      "[[models]] entry 1 has unknown key 'wieghts' (did you mean 'weights'?)"),
    C(T, "config: [[models]] without spec", "`[[models]]` with `weights` only",
      _a(lambda t: config(t, "[[models]]\nweights = 'w.pt'\n")), "[[models]] entry 1 needs a 'spec' key"),
    C(T, "config: [[models]] spec not a string", "`spec = 5`",
      _a(lambda t: config(t, "[[models]]\nspec = 5\n")), "'spec' must be a string, got 5"),
    # ------------------------------------------------------------------ segmentation (task mismatches)
    C(A, "segmentation: a classification attack", "`--data digit-scenes --model unet-tiny --attack fgsm`",
      _a(lambda t: audit(t, "--data", "digit-scenes", model="unet-tiny", attack="fgsm")),
      "attack 'fgsm' attacks classifiers, not segmentation models"),
    C(A, "classification: a segmentation attack", "`--data digits --attack segpgd`",
      _a(lambda t: audit(t, attack="segpgd")), "attack 'segpgd' attacks segmentation models"),
    C(A, "--task segmentation on classification data", "`--data digits --task segmentation`",
      _a(lambda t: audit(t, "--task", "segmentation")), "--task segmentation needs segmentation data"),
    C(A, "--task classification on segmentation data", "`--data digit-scenes --task classification`",
      _a(lambda t: audit(t, "--data", "digit-scenes", "--task", "classification", model="unet-tiny", attack="pgd")),
      "is a segmentation set (a class per pixel)"),
    C(M, "segmentation: a classifier", "`--data digit-scenes --model digits-cnn`",
      _a(lambda t: audit(t, "--data", "digit-scenes", attack="pgd")), "model 'digits-cnn' is a classifier"),
    C(M, "classification: a segmentation model", "`--data digits --model unet-tiny`",
      _a(lambda t: audit(t, model="unet-tiny")), "model 'unet-tiny' is a segmentation model"),
    C(M, "catalog model for other image sizes", "`--data digits32 --model digits-cnn`",
      _a(lambda t: audit(t, "--data", "digits32")),
      "model 'digits-cnn' takes 1x8x8 inputs but data 'digits32' has 1x32x32 images (catalog models for it: "
      "digits32-cnn"),
    C(A, "segmentation: --resume of a classification run", "`--data digit-scenes --resume` on an OUT holding a "
      "classification run", _a(lambda t: _classification_store(t) or audit(t, "--data", "digit-scenes", "--resume",
                                                                       model="unet-tiny", attack="pgd")),
      "the task differs (stored 'classification', now 'segmentation')"),
    C(A, "segmentation: physical-world proxies", "`--data digit-scenes --physical`",
      _a(lambda t: audit(t, "--data", "digit-scenes", "--physical", model="unet-tiny", attack="pgd")),
      "a segmentation audit takes none"),
    C(A, "segmentation: detectors", "`--data digit-scenes --defense squeeze`",
      _a(lambda t: audit(t, "--data", "digit-scenes", "--defense", "squeeze", model="unet-tiny", attack="pgd")),
      "detectors (--defense) wrap classifiers"),
    C(A, "segmentation: bad DAG target", "`--attack dag:target=sky`",
      _a(lambda t: audit(t, "--data", "digit-scenes", model="unet-tiny", attack="dag:target=sky")),
      "dag: target must be 'shift', a class index"),
    C(A, "segmentation: target class out of range", "`--attack segpgd:target=40` (11 classes)",
      _a(lambda t: audit(t, "--data", "digit-scenes", model="unet-tiny", attack="segpgd:target=40,steps=1")),
      "target class 40 does not exist: the model has 11 classes"),
    # ------------------------------------------------------------------ adversarial patches (docs/physical.md)
    C(A, "patch: images too small", "`--attack patch --norm patch` on the 8x8 digits",
      _a(lambda t: audit(t, "--norm", "patch", attack="patch:steps=1")), "are too small for a patch"),
    C(A, "patch: target class out of range", "`--attack patch:target=12` (10 classes)",
      _a(lambda t: patch_audit(t, "patch:target=12,steps=1")), "target class 12 does not exist: the model has 10 classes"),
    C(A, "patch: bad shape", "`--attack patch:shape=triangle`",
      _a(lambda t: patch_audit(t, "patch:shape=triangle")), "shape must be one of square, circle"),
    C(A, "patch: area share too large", "`--norm patch --eps 0.7`",
      _a(lambda t: patch_audit(t, "patch:steps=1", "--eps", "0.7")), "must be in (0, 0.5]"),
    C(A, "patch: without --norm patch", "`--attack patch --norm linf`",
      _a(lambda t: audit(t, "--data", "digits32", model="digits32-cnn", attack="patch")), "needs --norm patch"),
    C(A, "--norm patch with a non-patch attack", "`--norm patch --attack fgsm`",
      _a(lambda t: audit(t, "--norm", "patch")), "--norm patch is the adversarial patch's threat model"),
    C(F, "patch file missing", "`--attack patch:load=nope.pt`",
      _a(lambda t: patch_audit(t, f"patch:load={t / 'nope.pt'}")), "not found"),
    C(F, "patch file of another kind", "`torch.save({'x': 1})` as the patch",
      _a(lambda t: patch_audit(t, f"patch:load={_save(t / 'p.pt', {'x': 1})}")), "is not a patch saved by robustaudit"),
    C(F, "patch file corrupt", "random bytes as `p.pt`",
      _a(lambda t: patch_audit(t, f"patch:load={raw_file(t, 'p.pt', b'not a patch' * 9)}")),
      "is not a patch saved by robustaudit (.pt) or an image"),
    C(F, "patch file with other channels", "an RGB patch for grayscale images",
      _a(lambda t: patch_audit(t, f"patch:load={rgb_patch(t)}")), "has 3 channel(s) but the images have 1"),
    C(F, "uap file missing", "`--attack uap:load=nope.pt`",
      _a(lambda t: audit(t, attack=f"uap:load={t / 'nope.pt'}")), "not found"),
    C(F, "uap file of another kind", "`torch.save({'x': 1})` as the perturbation",
      _a(lambda t: audit(t, attack=f"uap:load={_save(t / 'v.pt', {'x': 1})}")),
      "is not a perturbation saved by robustaudit (expected format robustaudit-uap/1)"),
    C(F, "uap file corrupt", "random bytes as `v.pt`",
      _a(lambda t: audit(t, attack=f"uap:load={raw_file(t, 'v.pt', b'not a tensor' * 9)}")),
      "is not a perturbation saved by robustaudit: UnpicklingError"),
    C(F, "uap file of another shape", "a 32×32 perturbation for 8×8 images",
      _a(lambda t: audit(t, attack=f"uap:load={uap_file(t, torch.zeros(1, 32, 32))}")),
      "holds a perturbation of shape (1, 32, 32), but the images have shape (1, 8, 8)"),
    C(F, "uap file not finite", "a perturbation holding NaN",
      _a(lambda t: audit(t, attack=f"uap:load={uap_file(t, torch.full((1, 8, 8), float('nan')))}")),
      "expected finite floats of shape (C, H, W)"),
    C(F, "uap file of another norm", "an L2 perturbation under `--norm linf`",
      _a(lambda t: audit(t, attack=f"uap:load={uap_file(t, torch.zeros(1, 8, 8), norm='l2')}")),
      "is an l2 perturbation; the audit's norm is linf"),
    C(F, "uap file larger than its eps", "a perturbation of L∞ norm 0.5 saved with eps 0.1",
      _a(lambda t: audit(t, attack=f"uap:load={uap_file(t, torch.full((1, 8, 8), 0.5))}")),
      "holds a perturbation of linf norm 0.5, larger than its eps 0.1"),
    C(T, "config: physical not a bool", "`physical = 'yes'`",
      _a(lambda t: config(t, "physical = 'yes'\n", model="digits-cnn")), "'physical' must be bool"),
    C(T, "config: bad task", "`task = 'detection'`",
      _a(lambda t: config(t, "task = 'detection'\n", model="digits-cnn")), "--task must be one of auto, classification"),
    # ------------------------------------------------------------------ scale: precision, TF32, torchrun / srun
    C(A, "unknown precision", "`--precision fp8`", _a(lambda t: audit(t, "--precision", "fp8")),
      "argument --precision: invalid choice: 'fp8'"),
    C(A, "fp16 on CPU", "`--precision fp16 --device cpu`",
      _a(lambda t: audit(t, "--precision", "fp16", "--device", "cpu")), "--precision fp16 needs a GPU"),
    C(A, "TF32 not on/off", "`--tf32 yes`", _a(lambda t: audit(t, "--tf32", "yes")),
      "argument --tf32: invalid choice: 'yes'"),
    C(T, "config: unknown precision", "`precision = 'half'`",
      _a(lambda t: config(t, "precision = 'half'\n", model="digits-cnn")),
      "--precision must be one of fp32, bf16, fp16, got 'half'"),
    C(T, "config: tf32 not a bool", "`tf32 = 'on'`",
      _a(lambda t: config(t, "tf32 = 'on'\n", model="digits-cnn")), "'tf32' must be bool"),
    C(A, "torchrun: malformed RANK", "`RANK=x WORLD_SIZE=2`",
      lambda t, mp: _env(mp, RANK="x", WORLD_SIZE="2") or audit(t), "environment variable RANK='x' is not an integer"),
    C(A, "srun without MASTER_ADDR", "`srun -n 2` without `MASTER_ADDR`/`MASTER_PORT`",
      lambda t, mp: _env(mp, SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_STEP_ID="0") or audit(t),
      "MASTER_ADDR and MASTER_PORT are not set"),
    C(A, "torchrun: one GPU for all", "`torchrun --nproc-per-node=2 ... --device cuda:1`",
      lambda t, mp: _env(mp, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0") or audit(t, "--device", "cuda:1"),
      "--device cuda:1 cannot be shared by 2 processes"),
    C(A, "resume: multi-process run without torchrun", "`--resume` on an OUT holding `ranks/rank-*.sqlite`",
      _a(lambda t: _ranks(t) or audit(t, "--resume")), "holds a run of 2 processes"),
    # ------------------------------------------------------------------ learned attacks (atn, advgan)
    C(F, "generator: missing file", "`--attack atn:load=gone.pt`",
      _a(lambda t: audit(t, attack=f"atn:load={t / 'gone.pt'}")), "does not exist"),
    C(F, "generator: a folder", "`--attack atn:load=OUT/artifacts`",
      _a(lambda t: audit(t, attack=f"atn:load={t}")), "is a directory, not a generator file"),
    C(F, "generator: not a torch.save file", "a text file named `g.pt`",
      _a(lambda t: audit(t, attack=f"atn:load={raw_file(t, 'g.pt', b'weights')}")), "cannot read generator file"),
    C(F, "generator: truncated", "half of a saved generator, no card",
      _a(lambda t: audit(t, attack=f"atn:load={cut(generator_file(t, card=False))}")), "cannot read generator file"),
    C(F, "generator: model weights instead", "a classifier's `state_dict` as `load=`",
      _a(lambda t: audit(t, attack=f"atn:load={linear_weights(t)}")), "is not a robustaudit generator file"),
    C(F, "generator: replaced file", "`atn.pt` changed after its card `atn.pt.json` was written",
      _a(lambda t: audit(t, attack=f"atn:load={cut(generator_file(t))}")), "does not match the sha256 on its card"),
    C(F, "generator: other input shape", "fit for 1x16x16 inputs, audited on 8x8 digits",
      _a(lambda t: audit(t, attack=f"atn:load={generator_file(t, input_shape=[1, 16, 16])}")),
      "was fit for inputs (1, 16, 16), the data has (1, 8, 8)"),
    C(F, "generator: other eps", "fit at Linf 0.3, audited at `--eps 0.1`",
      _a(lambda t: audit(t, attack=f"atn:load={generator_file(t, eps=0.3)}")),
      "was fit for linf eps 0.3, the audit asks for linf eps 0.1"),
    C(F, "generator: other class count", "fit against a 5-class model",
      _a(lambda t: audit(t, attack=f"atn:load={generator_file(t, num_classes=5)}")),
      "was fit against a 5-class model, this model has 10 outputs"),
    C(F, "generator: another attack's file", "an AdvGAN generator as `atn:load=`",
      _a(lambda t: audit(t, attack=f"atn:load={generator_file(t, attack='advgan')}")), "was made by 'advgan', not 'atn'"),
    C(A, "atn: reranking factor <= 1", "`--attack atn:alpha=1`", _a(lambda t: audit(t, attack="atn:alpha=1")),
      "alpha must be > 1"),
    C(A, "advgan: zero epochs", "`--attack advgan:epochs=0`", _a(lambda t: audit(t, attack="advgan:epochs=0")),
      "epochs must be an integer >= 1"),
    C(A, "advgan: target outside the classes", "`--attack advgan:target=12` (10 classes)",
      _a(lambda t: audit(t, attack="advgan:target=12")), "target 12 is not a class of a model with 10 outputs"),
    C(A, "learned attack under L1", "`--attack atn --norm l1`", _a(lambda t: audit(t, "--norm", "l1", attack="atn")),
      "supports norms linf, l2, not 'l1'"),
    # ------------------------------------------------------------------ the label map (--class-map)
    C(A, "class map: unknown class", "`--class-map b=1,cta=2` (folders `b/`, `cat/`)",
      _a(lambda t: cmap(t, "b=1,cta=2")), "'cta' is not a class of data 'imagefolder:"),
    C(A, "class map: a class missing", "`--class-map cat=2`",
      _a(lambda t: cmap(t, "cat=2")), "no output given for class 'b'"),
    C(A, "class map: two classes on one output", "`--class-map b=2,cat=2`",
      _a(lambda t: cmap(t, "b=2,cat=2")), "classes 'b' and 'cat' both map to output 2"),
    C(A, "class map: output out of range", "`--class-map b=1,cat=10` (10 outputs)",
      _a(lambda t: cmap(t, "b=1,cat=10")), "output 10 of class 'cat' is out of range: model 'nets:rgb' has 10 outputs"),
    C(A, "class map: index not a number", "`--class-map b=one,cat=2`",
      _a(lambda t: cmap(t, "b=one,cat=2")), "the output index of class 'b' must be an integer >= 0, got 'one'"),
    C(A, "class map: class given twice", "`--class-map b=1,b=2`",
      _a(lambda t: cmap(t, "b=1,b=2")), "class 'b' is given twice"),
    C(A, "class map: neither pairs nor a file", "`--class-map cat:1`",
      _a(lambda t: cmap(t, "cat:1")), "is neither a file nor NAME=INDEX pairs"),
    C(A, "class map: JSON file not an object", "a file holding `[1, 2]`",
      _a(lambda t: cmap(t, str(raw_file(t, "map.json", b"[1, 2]")))), "must hold one JSON object"),
    C(A, "class map: segmentation audit", "`--data digit-scenes --class-map 0=0`",
      _a(lambda t: seg(t, "digit-scenes") + ["--class-map", "0=0"]), "it does not apply to a segmentation audit"),
    C(A, "train: segmentation data", "`train --model unet-tiny --data digit-scenes --eps 0.02 --out t.pt`",
      _a(lambda t: train(t, "--model", "unet-tiny", "--data", "digit-scenes", "--eps", "0.02")),
      "data 'digit-scenes' is segmentation data (a class per pixel): train supports classification only"),
    C(A, "train: --out under a file", "`train --model digits-cnn --out afile/x.pt` (afile a regular file)",
      _a(lambda t: train(t, out=_touch(t / "afile") / "x.pt")), "afile' is a file, not a directory"),
    C(A, "train: --out exists", "`train --model digits-cnn --out old.pt` (old.pt there)",
      _a(lambda t: train(t, out=_touch(t / "old.pt"))), "exists; give --overwrite to replace it and its card"),
    C(A, "train: standard without --eps off digits", "`train --model digits-cnn --data mnist:ROOT --out m.pt`",
      _a(lambda t: train(t, "--data", f"mnist:{t}")),
      "give --eps: the radius of the final PGD-20 evaluation on the test split (standard training itself uses none)"),
    C(A, "train: --beta contradicts the defense spec", "`train --defense trades:beta=6 --beta 3`",
      _a(lambda t: train(t, "--defense", "trades:beta=6", "--beta", "3")),
      "--beta 3.0 conflicts with --defense trades:beta=6 (beta=6): give one"),
    C(A, "train: --steps contradicts the defense spec", "`train --defense pgd-at:steps=3 --steps 5`",
      _a(lambda t: train(t, "--defense", "pgd-at:steps=3", "--steps", "5")),
      "--steps 5 conflicts with --defense pgd-at:steps=3 (steps=3): give one"),
    C(T, "config: class_map of the wrong type", "`class_map = 3`",
      _a(lambda t: config(t, "class_map = 3\n", model="digits-cnn")), "'class_map' must be a string"),
    C(T, "config: bad value", "`norm = 'l7'`", _a(lambda t: config(t, "norm = 'l7'\n", model="digits-cnn")), "unknown norm 'l7'"),
    C(T, "config: bad device", "`device = 'gpu'`",
      _a(lambda t: config(t, "device = 'gpu'\n", model="digits-cnn")), "(did you mean 'cuda'?)"),
    C(T, "config: weights without a model", "`weights = 'w.pt'`",
      _a(lambda t: config(t, "weights = 'w.pt'\n")), "'weights' must come with 'model'"),
]


def cmap(tmp: Path, value: str) -> list[str]:
    """``--class-map value`` for a 10-output model on an ImageFolder with classes ``b`` and ``cat``."""
    return audit(tmp, "--data", folder(tmp, {"cat/0.png": png_bytes(8)}), "--class-map", value, model=net(tmp, "rgb"))


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """A launcher's environment (torchrun, srun) for this case only."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID",
                "MASTER_ADDR", "MASTER_PORT", "ROBUSTAUDIT_DISTRIBUTED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _ranks(tmp: Path) -> None:
    """An OUT holding the stores of a 2-process run."""
    (tmp / "out" / "ranks").mkdir(parents=True)
    for k in range(2):
        (tmp / "out" / "ranks" / f"rank-{k}.sqlite").touch()


def _classification_store(tmp: Path) -> None:
    """An OUT holding an unfinished classification run's store (its fingerprint has no task key)."""
    from robustaudit.evaluate.store import STORE_FILE, Store

    with Store(tmp / "out" / STORE_FILE) as store:
        store.put_meta("fingerprint", {"store": 4, "n": 8})


def seg(tmp: Path, data: str) -> list[str]:
    """A segmentation audit of unet-tiny on ``data``."""
    return audit(tmp, "--data", data, model="unet-tiny", attack="pgd")


def train(tmp: Path, *words: str, out: Path | None = None) -> list[str]:
    """A one-epoch ``robustaudit train`` of digits-cnn (``words`` come after, so they may override)."""
    return ["train", "--model", "digits-cnn", "--epochs", "1", "--out", str(out or tmp / "m.pt"), *words]


def _touch(path: Path) -> Path:
    path.write_text("a regular file")
    return path


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _cut_gz(spec: str) -> str:
    gz = Path(spec.partition(":")[2]) / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:30])
    return spec


def patch_audit(tmp: Path, attack: str, *extra: str) -> list[str]:
    """A patch audit of digits32-cnn on digits32 (32x32: room for a patch)."""
    return audit(tmp, "--data", "digits32", "--norm", "patch", *extra, model="digits32-cnn", attack=attack)


def uap_file(tmp: Path, v: torch.Tensor, norm: str = "linf", eps: float = 0.1) -> Path:
    """A universal perturbation in robustaudit's format (``torch.save`` of its dict)."""
    return _save(tmp / "v.pt", {"format": "robustaudit-uap/1", "v": v, "norm": norm, "eps": eps, "record": {}})


def rgb_patch(tmp: Path) -> Path:
    """A patch file in robustaudit's format whose patch has 3 channels."""
    from robustaudit.attacks.patch import FittedPatch

    path = tmp / "rgb.pt"
    FittedPatch(torch.rand(3, 6, 6), shape="square", target=None, eot={}, trained_eps=0.1).save(path)
    return path


TV_SPEC = "torchvision:squeezenet1_1:weights=DEFAULT"


def tv_cache(tmp: Path, spoil: Callable[[Path], object]) -> Path:
    """A torch hub directory holding squeezenet1_1's file (random weights), spoilt by ``spoil``."""
    import torchvision

    path = tmp / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    spoil(path)
    return tmp / "hub"


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads fail as they do without a network (and never reach one)."""
    def fail(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)


def rb_cache(tmp: Path, spoil: Callable[[Path], object]) -> Path:
    """A RobustBench model_dir holding a small state_dict as cifar10/Linf/Standard.pt, spoilt by ``spoil``."""
    path = tmp / "rb" / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save(nn.Linear(3, 2).state_dict(), path)
    spoil(path)
    return tmp / "rb"


def foreign_weights(path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)


PROGRESS_LINE = re.compile(r"^\[ *\d+\.\d s\] ")


def stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one non-empty line on stderr (rich prints with soft_wrap=True: no wrapping) besides the progress
    lines of the stages that finished before the failure (``[  1.2 s] model: attack: 8/8, done in 1s``)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}: {c.what}" for c in CASES])
def test_hostile_input_gets_one_line_and_exit_2(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    if case.what == "device that is not there" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    argv = case.argv(tmp_path, monkeypatch)
    assert main(argv) == 2, capsys.readouterr().err
    line = stderr_line(capsys)
    assert line.startswith("error: ") and case.phrase in line, line


def test_every_group_is_covered() -> None:
    groups = {c.group for c in CASES}
    assert groups == {F, M, A, T}
    assert len({c.what for c in CASES}) == len(CASES)  # one row per input in docs/errors.md


# ------------------------------------------------------------ what must still work after the refusals


def test_pickled_model_loads_with_trust_pickle(tmp_path: Path, capsys) -> None:
    path = pickled_model(tmp_path)
    assert main(audit(tmp_path, "--trust-pickle", model=str(path))) == 0, capsys.readouterr().err


def test_weights_matching_their_card_load(tmp_path: Path, capsys) -> None:
    from robustaudit.models.loading import file_sha256

    weights = linear_weights(tmp_path)
    (tmp_path / "w.pt.json").write_text('{"name": "w", "sha256": "%s"}' % file_sha256(weights))
    assert main(audit(tmp_path, "--weights", str(weights), "--json", model=net(tmp_path, "build"))) == 0
    doc = __import__("json").loads(capsys.readouterr().out)
    assert doc["provenance"]["models"][0]["weights_sha256"] == file_sha256(weights)


def test_big_endian_arrays_are_read(tmp_path: Path, capsys) -> None:
    spec = npz_file(tmp_path, x=X.astype(">f4"), y=Y.astype(">i8"))
    assert main(audit(tmp_path, "--data", spec)) == 0, capsys.readouterr().err


def test_transfer_surrogate_for_other_channels_is_one_error_line(tmp_path: Path, capsys) -> None:
    # not a catalog model (no card to check first): probed on the first batch; once "mat1 and mat2 shapes
    # cannot be multiplied" / "expected input to have 3 channels" with exit 3. The error is one line; the
    # random-initialization warning of the weightless surrogate comes before it.
    argv = audit(tmp_path, attack="transfer:surrogate=torchvision:resnet18(pgd)")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "transfer surrogate 'torchvision:resnet18' does not take the data's 1x8x8 inputs" in line
