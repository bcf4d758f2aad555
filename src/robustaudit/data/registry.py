"""Open a data set from a one-string spec, as written on the command line or in a plan file.

Spec grammar: ``NAME`` or ``NAME:ROOT`` followed by optional ``:key=value`` settings, e.g.
``digits``, ``cifar10:~/data``, ``imagefolder:/data/pets:size=32``, ``tensors:batch.npz``. Settings
are peeled off the END of the spec only (``:key=value`` with a plain identifier key), so a root may
itself contain ``:`` (``C:\\data``, ``/mnt/a:b``) as long as no part of it looks like ``:key=value``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from robustaudit.core.errors import UserError, unknown
from robustaudit.data.base import ImageData, as_image_data

_SETTING = re.compile(r":([A-Za-z_]\w*)=([^:]*)$")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Entry:
    description: str
    needs_root: bool
    settings: tuple[str, ...]
    open: Callable[[str | None, str, dict[str, str], str], ImageData]


def _positive_int(value: str, key: str, spec: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise UserError(f"dataset '{spec}': {key} must be a positive integer, got '{value}'")
    return number


def _digits(root, split, settings, spec):
    from robustaudit.data.digits import digits_split

    return digits_split(split)


def _digits32(root, split, settings, spec):
    from robustaudit.data.digits import digits32_split

    return digits32_split(split)


def _cifar10(root, split, settings, spec):
    from robustaudit.data.vision import open_cifar10

    return open_cifar10(root, split, name=spec)


def _mnist(root, split, settings, spec):
    from robustaudit.data.vision import open_mnist

    return open_mnist(root, split, name=spec)


def _imagefolder(root, split, settings, spec):
    from robustaudit.data.vision import open_imagefolder

    size = _positive_int(settings["size"], "size", spec) if "size" in settings else None
    return open_imagefolder(root, size=size, channels=_channels(settings, spec, 3), name=spec)


def _tensors(root, split, settings, spec):
    from robustaudit.data.tensors import open_tensors

    return open_tensors(root, name=spec)


def _channels(settings, spec, default: int) -> int:
    value = settings.get("channels", str(default))
    if value not in ("1", "3"):
        raise UserError(f"dataset '{spec}': channels must be 1 or 3, got '{value}'")
    return int(value)


def _digit_scenes(root, split, settings, spec):
    from robustaudit.data.digit_scenes import digit_scenes_split

    return digit_scenes_split(split, channels=_channels(settings, spec, 1))


def _segfolder(root, split, settings, spec):
    from robustaudit.data.segfiles import open_segfolder, parse_size

    size = parse_size(settings["size"], spec) if "size" in settings else None
    classes = _positive_int(settings["classes"], "classes", spec) if "classes" in settings else None
    return open_segfolder(root, split, classes=classes, size=size, channels=_channels(settings, spec, 3), name=spec)


def _voc(root, split, settings, spec):
    from robustaudit.data.segfiles import open_voc, parse_size

    size = parse_size(settings["size"], spec) if "size" in settings else 256
    return open_voc(root, split, year=settings.get("year", "2012"), size=size, name=spec)


_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(
        "scikit-learn handwritten digits, 1x8x8, 10 classes (embedded, no download)", False, (), _digits
    ),
    "digits32": _Entry(
        "the digits upsampled (bilinear) to 1x32x32, same split: room for patches and physical transforms",
        False,
        (),
        _digits32,
    ),
    "cifar10": _Entry(
        "CIFAR-10 python batches under ROOT/cifar-10-batches-py, 3x32x32, 10 classes", True, (), _cifar10
    ),
    "mnist": _Entry(
        "MNIST idx files under ROOT/MNIST/raw (optionally .gz), 1x28x28, 10 classes", True, (), _mnist
    ),
    "imagefolder": _Entry(
        "ROOT/<class>/<image> folders, RGB; ':size=N' resizes to NxN, ':channels=1' reads grayscale (one split)",
        True,
        ("size", "channels"),
        _imagefolder,
    ),
    "tensors": _Entry(
        "a .pt dict or .npz with x (N,C,H,W) floats in [0,1] and y (N,) ints (one split)", True, (), _tensors
    ),
    "digit-scenes": _Entry(
        "segmentation: 2-4 sklearn digits on a 1x64x64 textured canvas, 11 classes (background, 0-9), "
        "255 = ignore ring; 1000 train / 200 test, embedded; ':channels=3' for RGB models",
        False,
        ("channels",),
        _digit_scenes,
    ),
    "segfolder": _Entry(
        "segmentation: ROOT/images/* + ROOT/masks/*.png (class indices, 255 = ignore), optional "
        "ROOT/{train,test}/; ':classes=K', ':size=N' or ':size=H,W', ':channels=1'",
        True,
        ("classes", "size", "channels"),
        _segfolder,
    ),
    "voc": _Entry(
        "segmentation: PASCAL VOC under ROOT/VOCdevkit/VOC2012 (train / val as test), 21 classes; "
        "':size=N' (default 256), ':year=2007..2012'",
        True,
        ("size", "year"),
        _voc,
    ),
}


def dataset_names() -> dict[str, str]:
    """Data set name -> one-line description, for ``robustaudit list datasets``."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split a spec into ``(name, root or None, settings)``; settings are the trailing ``:key=value``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(
            f"dataset spec must be a non-empty string like 'digits' or 'cifar10:ROOT', got {spec!r}"
        )
    name, sep, rest = spec.strip().partition(":")
    tail = sep + rest  # keep the colon so that "imagefolder:size=32" parses as a setting with no root
    found: list[tuple[str, str]] = []
    while (match := _SETTING.search(tail)) is not None:
        found.append((match.group(1), match.group(2)))
        tail = tail[: match.start()]
    settings: dict[str, str] = {}
    for key, value in reversed(found):
        if key in settings:
            raise UserError(f"dataset '{spec}': setting '{key}' given twice")
        settings[key] = value
    return name.strip().lower(), (tail[1:] or None), settings


def open_dataset(spec: str, *, split: str = "test") -> ImageData:
    """Open ``spec`` (``"digits"``, ``"cifar10:ROOT"``, ``"mnist:ROOT"``, ``"imagefolder:ROOT[:size=N]"``,
    ``"tensors:FILE"``; segmentation: ``"digit-scenes[:channels=3]"``, ``"segfolder:ROOT[:classes=K]
    [:size=N|H,W]"``, ``"voc:ROOT[:size=N][:year=2012]"``) at ``split`` ("test" or "train"; imagefolder
    and tensors have a single split and ignore it; a segfolder without split folders is a test split
    only). Unknown names get a close-match suggestion.
    """
    name, root, settings = parse_spec(spec)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise unknown("dataset", name, _REGISTRY)
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    if entry.needs_root and root is None:
        raise UserError(f"dataset '{name}' needs a location: '{name}:ROOT'")
    if not entry.needs_root and root is not None:
        raise UserError(f"dataset '{name}' takes no location, got '{spec}'")
    for key in settings:
        if key not in entry.settings:
            if entry.settings:
                raise unknown(f"setting for dataset '{name}'", key, entry.settings)
            raise UserError(f"dataset '{name}' takes no settings, got '{key}'")
    # settings stay in the name (also without a root: 'digit-scenes:channels=3'), so it reopens the same data
    canonical = (name if root is None else f"{name}:{root}") + "".join(f":{k}={v}" for k, v in settings.items())
    return entry.open(root, split, settings, canonical)


#: data sets with one split only: nothing to train or fit on apart from what is audited
_SINGLE_SPLIT = ("imagefolder", "tensors")


def is_segmentation_spec(data: str) -> bool:
    """Whether the data spec names a segmentation set (a class per pixel), judged from its name alone:
    ``train`` refuses one before it reads anything."""
    entry = _REGISTRY.get(parse_spec(data)[0])
    return entry is not None and entry.description.startswith("segmentation:")


def require_train_split(data: str) -> str:
    """The data set's name, when it has a train and a test split; a UserError otherwise."""
    name = parse_spec(data)[0]
    if name in _SINGLE_SPLIT:
        raise UserError(f"dataset '{name}' has a single split; train needs a train and a test split "
                        "(digits, cifar10:ROOT, mnist:ROOT)")
    return name


def train_split_of(data: ImageData, given: object, *, flag: str, purpose: str) -> ImageData:
    """What to fit on: ``given`` (a spec, opened at its train split, or data in any form ``audit``
    takes), else the train split of ``data``'s spec; a UserError naming ``flag`` when there is none.
    ``purpose`` starts the message (``"detectors are fitted"``)."""
    if given is not None:
        return open_dataset(given, split="train") if isinstance(given, str) else as_image_data(given)
    try:
        require_train_split(data.name)
        return open_dataset(data.name, split="train")
    except UserError:
        raise UserError(f"{purpose} on a training split and '{data.name}' has none that robustaudit "
                        f"can open: give one with {flag}") from None
