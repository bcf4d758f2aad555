"""Segmentation sets read from files: ``segfolder:ROOT`` (images and PNG masks of class indices) and
``voc:ROOT`` (PASCAL VOC through torchvision's file list), resized on request.

Images come out float32 in ``[0, 1]`` ``(B, C, H, W)``, masks int64 ``(B, H, W)`` (255 = ignore). A
mistake in the files (a mask of another size than its image, a class index out of range, an RGB or
JPEG mask, an image without a mask) is a :class:`UserError` of one line naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from robustaudit.core.errors import UserError
from robustaudit.core.task import IGNORE_INDEX
from robustaudit.data.segmentation import SegmentationData
from robustaudit.data.validate import (
    check_class_names,
    check_masks,
    check_num_classes,
    index_tensor,
    sample_text,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VOC_CLASSES",
    "FileSegmentationData",
    "open_segfolder",
    "open_voc",
    "parse_size",
]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The 21 classes of PASCAL VOC segmentation, in index order (0 = background).
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip
# PIL modes whose pixel values are class indices as stored: grayscale, palette (VOC: the index, not the
# colour), 16/32-bit integers. RGB(A) masks are colour pictures of classes, which we do not guess at.
_MASK_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")


def parse_size(value: str, spec: str) -> tuple[int, int] | int:
    """``size=N`` (shorter side to N, then a centred N x N crop) or ``size=H,W`` (resize to exactly H x W)."""
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or any(n <= 0 for n in numbers):
        raise UserError(f"dataset '{spec}': size must be N or H,W (positive integers), got '{value}'")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def _resize_pair(image, mask, size: tuple[int, int] | int | None):
    """Resize a PIL image (bilinear) and its mask (nearest: class indices must not be blended)."""
    from PIL import Image

    if size is None:
        return image, mask
    if isinstance(size, tuple):
        h, w = size
        return image.resize((w, h), Image.Resampling.BILINEAR), mask.resize((w, h), Image.Resampling.NEAREST)
    w0, h0 = image.size
    scale = size / min(w0, h0)
    w1, h1 = max(size, round(w0 * scale)), max(size, round(h0 * scale))
    image = image.resize((w1, h1), Image.Resampling.BILINEAR)
    mask = mask.resize((w1, h1), Image.Resampling.NEAREST)
    left, top = (w1 - size) // 2, (h1 - size) // 2
    box = (left, top, left + size, top + size)
    return image.crop(box), mask.crop(box)


def _open_image(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read {what} {path}: not an image or truncated ({exc})") from None
    return image


def _mask_array(mask, path: Path) -> np.ndarray:
    if mask.mode not in _MASK_MODES:
        raise UserError(
            f"mask {path} has PIL mode {mask.mode}; masks must be single-channel class indices "
            "(PNG mode L or P, 255 = ignore), not colour pictures"
        )
    return np.array(mask, dtype=np.int64)  # a writable copy: torch.from_numpy warns on read-only arrays


class FileSegmentationData(SegmentationData):
    """Image files and their PNG masks, read lazily: ``pairs`` lists ``(image path, mask path)``.

    Images are read as RGB (``channels=3``) or grayscale (``channels=1``), masks as class indices.
    ``size`` resizes each pair (see :func:`parse_size`); without it every image must have the size of the
    first. Each loaded batch is validated (mask size, class indices in range).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        *,
        name: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        size: tuple[int, int] | int | None = None,
        channels: int = 3,
        size_hint: str = "",
    ) -> None:
        if not pairs:
            raise UserError(f"{name}: no images")
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.name = name
        self.num_classes = check_num_classes(num_classes, name)
        self.class_names = check_class_names(class_names, self.num_classes, name)
        self.size = size
        self.channels = channels
        self._size_hint = size_hint or f"give a size: '{name.split(':size=')[0]}:size=N'"
        if size is None:
            h, w = self._header_size(0)
        elif isinstance(size, tuple):
            h, w = size
        else:
            h = w = size
        self.sample_shape = (channels, h, w)

    def _header_size(self, i: int) -> tuple[int, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.pairs[i][0]
        try:
            with Image.open(path) as image:
                w, h = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"cannot read image {path}: not an image or truncated ({exc})") from None
        return h, w

    def describe(self, i: int) -> str:
        return self.pairs[i][0].name

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``: image uint8 ``(H, W, C)`` and mask int64 ``(H, W)`` (resized when asked)."""
        image_path, mask_path = self.pairs[i]
        image = _open_image(image_path, "image")
        mask = _open_image(mask_path, "mask")
        if image.size != mask.size:
            raise UserError(
                f"mask {mask_path} is {mask.size[1]}x{mask.size[0]} but its image {image_path.name} is "
                f"{image.size[1]}x{image.size[0]} (height x width); a mask must have its image's size"
            )
        _mask_array(mask, mask_path)  # the mode check, before resizing could convert it
        image = image.convert("RGB" if self.channels == 3 else "L")
        image, mask = _resize_pair(image, mask, self.size)
        pixels = np.array(image, dtype=np.uint8)
        return (pixels[:, :, None] if pixels.ndim == 2 else pixels), _mask_array(mask, mask_path)

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` float32 images in [0, 1] and ``(B, H, W)`` int64 masks, read and checked now."""
        idx = index_tensor(indices, len(self), self.name).tolist()
        c, h, w = self.sample_shape
        if not idx:
            return torch.empty((0, c, h, w)), torch.empty((0, h, w), dtype=torch.int64)
        images, masks = [], []
        for i in idx:
            pixels, mask = self.read(i)
            if pixels.shape[:2] != (h, w):
                raise UserError(
                    f"{self.name}: {sample_text(i, None, self.describe)} is {pixels.shape[0]}x{pixels.shape[1]} "
                    f"but sample 0 is {h}x{w}; images must all have one size: {self._size_hint}"
                )
            images.append(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
            masks.append(torch.from_numpy(mask))
        x = torch.stack(images).to(torch.float32).div_(255.0)
        y = check_masks(torch.stack(masks), self.num_classes, self.name, ids=idx, describe=self.describe)
        return x, y


def _scan_num_classes(pairs: Sequence[tuple[Path, Path]], name: str) -> int:
    """Largest class index in any mask (255 excluded) + 1: reads every mask once."""
    top = -1
    for _, mask_path in pairs:
        values = np.unique(_mask_array(_open_image(mask_path, "mask"), mask_path))
        values = values[values != IGNORE_INDEX]
        if values.size:
            top = max(top, int(values.max()))
    if top < 0:
        raise UserError(f"{name}: every mask pixel is the ignore index 255; give the classes with ':classes=K'")
    return top + 1


def _segfolder_dir(root: Path, split: str) -> Path:
    """``ROOT/<split>`` when ROOT has split folders (``test`` may be called ``val``), else ROOT."""
    if not root.is_dir():
        raise UserError(f"segfolder root {root} does not exist or is not a folder")
    if (root / "images").is_dir():
        if split == "train":
            # one folder is what gets audited: fitting a universal perturbation or training on it would
            # leak the test images, so there is no train split rather than the same one twice
            raise UserError(
                f"segfolder {root} has a single split (no {root / 'train'}/images): "
                "nothing to train or fit on apart from the audited images"
            )
        return root
    names = ("train",) if split == "train" else ("test", "val")
    for folder in names:
        if (root / folder / "images").is_dir():
            return root / folder
    if any((root / f / "images").is_dir() for f in ("train", "test", "val")):
        raise UserError(f"segfolder root {root} has no {split} split: expected {root / names[0] / 'images'}")
    raise UserError(f"no images under {root}: expected {root / 'images'} and {root / 'masks'} (same file stems)")


def _segfolder_pairs(folder: Path) -> list[tuple[Path, Path]]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not masks_dir.is_dir():
        raise UserError(f"segfolder {folder} has images/ but no masks/ folder")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not images:
        raise UserError(f"no images in {images_dir}")
    stray = [p for p in images if p.suffix.lower() not in IMAGE_SUFFIXES]
    if stray:
        raise UserError(
            f"{stray[0]} is not an image file (expected {', '.join(IMAGE_SUFFIXES)}); "
            f"{images_dir} must hold images only"
        )
    masks = {p.stem: p for p in masks_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    pairs = []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            raise UserError(f"image {image} has no mask: expected {masks_dir / (image.stem + '.png')}")
        if mask.suffix.lower() != ".png":
            raise UserError(
                f"mask {mask} is not a PNG; masks must be lossless PNGs of class indices "
                "(JPEG compression changes the labels)"
            )
        pairs.append((image, mask))
    seen = {image.stem for image in images}
    orphans = sorted(stem for stem in masks if stem not in seen)
    if orphans:
        warnings.warn(
            f"{masks_dir}: {len(orphans)} masks have no image (e.g. {masks[orphans[0]].name}); ignored",
            stacklevel=3,
        )
    if len(seen) != len(images):
        raise UserError(f"{images_dir} holds two images with one stem; each needs its own mask")
    return pairs


def _class_file(root: Path, folder: Path) -> list[str] | None:
    for candidate in (folder / "classes.txt", root / "classes.txt"):
        if candidate.is_file():
            names = [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not names:
                raise UserError(f"{candidate} is empty; it must name one class per line")
            return names
    return None


def open_segfolder(
    root: str | Path,
    split: str = "test",
    *,
    classes: int | None = None,
    size: tuple[int, int] | int | None = None,
    channels: int = 3,
    name: str | None = None,
) -> FileSegmentationData:
    """Images in ``ROOT/images/`` and PNG masks of class indices in ``ROOT/masks/`` (same stem).

    With ``ROOT/train/{images,masks}`` and ``ROOT/test/{images,masks}`` (or ``val``) the split picks
    the folder; otherwise ROOT is the test split only (asking for "train" is a :class:`UserError`, so a
    universal attack or training never fits on the audited images). ``classes`` gives the number of classes; else
    ``ROOT/classes.txt`` (one name per line), else the largest index in any mask plus one (every mask is
    read once to find it). 255 marks ignored pixels.
    """
    root = Path(root).expanduser()
    spec = name or f"segfolder:{root}"
    folder = _segfolder_dir(root, split)
    pairs = _segfolder_pairs(folder)
    names = _class_file(root, folder)
    if classes is None:
        classes = len(names) if names is not None else _scan_num_classes(pairs, spec)
    elif names is not None and len(names) != classes:
        raise UserError(f"{spec}: classes={classes} but classes.txt names {len(names)} classes")
    if classes > IGNORE_INDEX:
        raise UserError(f"{spec}: {classes} classes, but class index 255 means 'ignore'; at most 255 classes")
    return FileSegmentationData(pairs, name=spec, num_classes=classes, class_names=names, size=size,
                                channels=channels)


def _voc_root(root: Path, year: str) -> Path:
    """The folder holding ``VOCdevkit`` (what torchvision calls root), from ROOT or a folder below it."""
    for candidate in (root, root.parent, root.parent.parent):
        if (candidate / "VOCdevkit" / f"VOC{year}").is_dir():
            return candidate
    if not root.exists():
        raise UserError(f"VOC root {root} does not exist")
    raise UserError(
        f"no PASCAL VOC {year} under {root}: expected {root / 'VOCdevkit' / f'VOC{year}'} with JPEGImages, "
        "SegmentationClass and ImageSets/Segmentation (robustaudit never downloads it)"
    )


def open_voc(
    root: str | Path,
    split: str = "test",
    *,
    year: str = "2012",
    size: tuple[int, int] | int | None = 256,
    name: str | None = None,
) -> FileSegmentationData:
    """PASCAL VOC segmentation through torchvision's ``VOCSegmentation`` file list (``download=False``).

    ``split`` "train" reads ``ImageSets/Segmentation/train.txt``, "test" reads ``val.txt`` (VOC's test
    masks are not public). 21 classes, 255 on object borders and difficult regions. Images differ in size,
    so they are resized (shorter side to ``size``, centred ``size x size`` crop; ``size=H,W`` for an
    exact size) bilinearly, masks by nearest neighbour.
    """
    from torchvision.datasets import VOCSegmentation

    root = Path(root).expanduser()
    spec = name or f"voc:{root}"
    if year not in [str(y) for y in range(2007, 2013)]:
        raise UserError(f"dataset '{spec}': year must be one of 2007..2012, got '{year}'")
    base = _voc_root(root, year)
    image_set = "train" if split == "train" else "val"
    list_file = base / "VOCdevkit" / f"VOC{year}" / "ImageSets" / "Segmentation" / f"{image_set}.txt"
    if not list_file.is_file():
        raise UserError(f"VOC {year} under {base}: the split file {list_file} is missing")
    try:
        dataset = VOCSegmentation(str(base), year=year, image_set=image_set, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"cannot open VOC {year} under {base}: {exc}") from None
    pairs = [(Path(a), Path(b)) for a, b in zip(dataset.images, dataset.masks, strict=True)]
    if not pairs:
        raise UserError(f"{list_file} lists no images")
    for image, mask in pairs:
        for path, what in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                raise UserError(f"VOC {year}: {list_file.name} lists '{image.stem}' but the {what} {path} is missing")
    return FileSegmentationData(
        pairs, name=spec, num_classes=21, class_names=VOC_CLASSES, size=size, channels=3,
        size_hint=f"give a size: '{spec.split(':size=')[0]}:size=N'",
    )
