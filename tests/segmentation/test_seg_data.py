"""Segmentation data: digit-scenes (shapes, determinism, disjoint digits), segfolder and VOC readers on
files written in their real on-disk formats (PNG masks, palette PNGs, a fake VOCdevkit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustaudit.core.errors import UserError
from robustaudit.data import open_dataset
from robustaudit.data.digit_scenes import CLASS_NAMES, SIZES, digit_scenes_split
from robustaudit.data.segmentation import SegmentationTensorData, check_masks

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN_TRAIN_PIXEL = 0.266498  # the train scenes' mean pixel, pinned with the mask counts


# ------------------------------------------------------------------------------------ digit-scenes


def test_digit_scenes_shapes_and_values():
    for split, n in SIZES.items():
        data = open_dataset("digit-scenes", split=split)
        assert (len(data), data.num_classes, data.task, data.ignore_index) == (n, 11, "segmentation", 255)
        assert data.class_names == CLASS_NAMES == ["background", *"0123456789"]
        assert data.sample_shape == (1, 64, 64)
        x, y = data.load(range(n))
        assert x.shape == (n, 1, 64, 64) and x.dtype == torch.float32
        assert y.shape == (n, 64, 64) and y.dtype == torch.int64
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        values = set(torch.unique(y).tolist())
        assert values == set(range(11)) | {255}
        # every scene holds at least one digit; digits cover ~10% of the pixels, the ignore ring ~5%
        assert bool(((y > 0) & (y < 255)).flatten(1).any(1).all())
        assert 0.05 < float(((y > 0) & (y < 255)).float().mean()) < 0.2
        assert 0.02 < float((y == 255).float().mean()) < 0.1


def test_digit_scenes_are_deterministic_and_fresh():
    a, b = digit_scenes_split("test"), open_dataset("digit-scenes")
    xa, ya = a.load([0, 5, 199])
    xb, yb = b.load([0, 5, 199])
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xa[:] = 0  # callers get copies: the cache is untouched
    assert torch.equal(b.load([0])[0], xb[:1])
    # pinned content: a change of the generation rule must be deliberate (update docs/segmentation.md)
    x, y = digit_scenes_split("train").load(range(1000))
    assert torch.bincount((y % 256).flatten(), minlength=256)[[1, 10, 255]].tolist() == [37819, 37392, 217029]
    assert round(float(x.double().mean()), 6) == pytest.approx(MEAN_TRAIN_PIXEL, abs=1e-6)


def test_digit_scenes_channels_3_repeats_gray():
    gray = open_dataset("digit-scenes").load([3])
    rgb_data = open_dataset("digit-scenes:channels=3")
    assert rgb_data.name == "digit-scenes:channels=3" and rgb_data.sample_shape == (3, 64, 64)
    rgb = rgb_data.load([3])
    assert torch.equal(rgb[0], gray[0].repeat(1, 3, 1, 1)) and torch.equal(rgb[1], gray[1])
    with pytest.raises(UserError, match="channels must be 1 or 3, got '2'"):
        open_dataset("digit-scenes:channels=2")


def test_digit_scenes_train_and_test_digits_are_disjoint():
    """Test scenes show only digits of the ``digits`` test split, train scenes only train digits, and
    each digit placed appears in the mask with its class (digit + 1)."""
    from robustaudit.data.digit_scenes import scene_sources
    from robustaudit.data.digits import _arrays, _split_indices

    labels = _arrays()[1]
    split = _split_indices()
    for name in ("train", "test"):
        sources = scene_sources(name)
        used = np.array(sorted({k for scene in sources for k in scene}))
        assert np.isin(used, split[name]).all()
        assert not np.isin(used, split["train" if name == "test" else "test"]).any()
        assert all(1 <= len(scene) <= 4 for scene in sources)  # 2-4 drawn; one may not fit
        _, y = digit_scenes_split(name).load(range(30))
        for i in range(30):
            present = set(torch.unique(y[i]).tolist()) - {0, 255}
            assert present == {int(labels[k]) + 1 for k in sources[i]}
    # the scenes use many distinct digits, not a handful repeated
    assert len({k for scene in scene_sources("test") for k in scene}) > 250


def test_digit_scenes_label_rule():
    """Pixels labelled with a digit are brighter than the background cap; the mask is 255 only on rims."""
    x, y = digit_scenes_split("test").load(range(50))
    digit = (y > 0) & (y < 255)
    assert float(x[:, 0][digit].min()) > 0.3
    # background pixels are the clipped texture: never above 0.5 except next to a digit's rim
    far = (y == 0) & ~torch.nn.functional.max_pool2d((y != 0).float()[:, None], 9, 1, 4)[:, 0].bool()
    assert float(x[:, 0][far].max()) <= 0.5 + 1e-6


# ------------------------------------------------------------------------------------ masks in memory


def test_check_masks_refusals():
    ok = torch.zeros(2, 4, 4, dtype=torch.int64)
    assert check_masks(ok, 3, "m").dtype == torch.int64
    bad = ok.clone()
    bad[1, 2, 2] = 7
    with pytest.raises(UserError, match=r"sample 1 has class index 7 in its mask, outside \[0, 3\)"):
        check_masks(bad, 3, "m")
    bad[1, 2, 2] = 255
    check_masks(bad, 3, "m")  # the ignore index is fine
    with pytest.raises(UserError, match="masks must be 3-D"):
        check_masks(ok[0], 3, "m")
    with pytest.raises(UserError, match="use y.squeeze"):
        check_masks(ok[:, None], 3, "m")
    with pytest.raises(UserError, match="integer class indices"):
        check_masks(ok.float() + 0.5, 3, "m")
    with pytest.raises(UserError, match="negative class index -1"):
        check_masks(ok - 1, 3, "m")


def test_tensor_data_infers_classes_and_checks_sizes():
    x = torch.rand(3, 1, 4, 4)
    y = torch.randint(0, 4, (3, 4, 4))
    y[0, 0, 0] = 255
    data = SegmentationTensorData(x, y)
    assert data.num_classes == int(y[y != 255].max()) + 1 and data.task == "segmentation"
    assert torch.equal(data.load([0, 2])[1], y[[0, 2]])
    with pytest.raises(UserError, match="images are 4x4 but masks 4x5"):
        SegmentationTensorData(x, torch.zeros(3, 4, 5, dtype=torch.int64))


# ------------------------------------------------------------------------------------ segfolder


def _png(path: Path, array: np.ndarray, mode: str | None = None, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P") if mode is None else image
        image = Image.fromarray(array.astype(np.uint8), mode="L").convert("P")
        image.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    image.save(path)
    return path


def _segfolder(root: Path, n: int = 4, size: tuple[int, int] = (10, 12), classes: int = 3, seed: int = 0,
               palette: bool = False, jpg: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, *size, 3)).astype(np.uint8)
    masks = rng.randint(0, classes, size=(n, *size)).astype(np.uint8)
    masks[:, 0, 0] = 255
    for i in range(n):
        suffix = ".jpg" if jpg else ".png"
        Image.fromarray(images[i]).save(_mkdir(root / "images") / f"s{i}{suffix}")
        _png(root / "masks" / f"s{i}.png", masks[i], palette=palette)
    return images, masks


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_segfolder_reads_pngs_and_infers_classes(tmp_path: Path):
    images, masks = _segfolder(tmp_path, classes=3)
    data = open_dataset(f"segfolder:{tmp_path}")
    assert (len(data), data.num_classes, data.sample_shape, data.task) == (4, 3, (3, 10, 12), "segmentation")
    x, y = data.load([0, 3])
    assert torch.equal(x, torch.from_numpy(images[[0, 3]]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(y, torch.from_numpy(masks[[0, 3]]).long())
    gray = open_dataset(f"segfolder:{tmp_path}:channels=1")
    assert gray.sample_shape == (1, 10, 12)
    # one folder is the audited (test) split: no train split to fit or train on
    with pytest.raises(UserError, match="has a single split"):
        open_dataset(f"segfolder:{tmp_path}", split="train")


def test_segfolder_palette_masks_are_indices(tmp_path: Path):
    _, masks = _segfolder(tmp_path, classes=5, palette=True)
    assert Image.open(tmp_path / "masks" / "s0.png").mode == "P"
    data = open_dataset(f"segfolder:{tmp_path}:classes=6")
    assert data.num_classes == 6
    assert torch.equal(data.load([1])[1][0], torch.from_numpy(masks[1]).long())


def test_segfolder_splits_classes_file_and_resize(tmp_path: Path):
    _segfolder(tmp_path / "train", n=3, size=(20, 30), seed=1)
    _segfolder(tmp_path / "val", n=2, size=(20, 30), seed=2)
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\ncat\n")
    train = open_dataset(f"segfolder:{tmp_path}", split="train")
    test = open_dataset(f"segfolder:{tmp_path}:size=8,10")
    assert (len(train), len(test), train.num_classes, train.class_names) == (3, 2, 4, ["sky", "road", "car", "cat"])
    x, y = test.load([0, 1])
    assert x.shape == (2, 3, 8, 10) and y.shape == (2, 8, 10)
    # nearest resizing keeps class indices: nothing new appears
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}
    square = open_dataset(f"segfolder:{tmp_path}:size=16").load([0])
    assert square[0].shape == (1, 3, 16, 16) and square[1].shape == (1, 16, 16)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda r: _png(r / "masks" / "s1.png", np.zeros((5, 5), np.uint8)), "mask .*s1.png is 5x5 but its image s1.png is 10x12"),
        (lambda r: _png(r / "masks" / "s2.png", np.full((10, 12), 9, np.uint8)), "has class index 9 in its mask, outside \\[0, 3\\)"),
        (lambda r: (r / "masks" / "s3.png").unlink(), "image .*s3.png has no mask"),
        (lambda r: ((r / "masks" / "s0.png").unlink(), Image.fromarray(np.zeros((10, 12), np.uint8)).save(r / "masks" / "s0.jpg")),
         "mask .*s0.jpg is not a PNG"),
        (lambda r: Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(r / "masks" / "s0.png"), "has PIL mode RGB; masks must be single-channel"),
        (lambda r: (r / "masks" / "s0.png").write_bytes(b"not a png"), "cannot read mask"),
    ],
    ids=["size", "class", "missing", "jpeg", "rgb", "corrupt"],
)
def test_segfolder_refusals(tmp_path: Path, break_it, message: str):
    _segfolder(tmp_path)
    break_it(tmp_path)
    with pytest.raises(UserError, match=message):
        data = open_dataset(f"segfolder:{tmp_path}:classes=3")
        data.load(range(len(data)))


def test_segfolder_layout_refusals(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(f"segfolder:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="expected .*images and .*masks"):
        open_dataset(f"segfolder:{tmp_path}")
    _mkdir(tmp_path / "images")
    with pytest.raises(UserError, match="has images/ but no masks/"):
        open_dataset(f"segfolder:{tmp_path}")
    _mkdir(tmp_path / "masks")
    with pytest.raises(UserError, match="no images in"):
        open_dataset(f"segfolder:{tmp_path}")
    with pytest.raises(UserError, match="size must be N or H,W"):
        open_dataset(f"segfolder:{tmp_path}:size=3,x")


def test_segfolder_mixed_sizes_need_size(tmp_path: Path):
    _segfolder(tmp_path, n=2)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "images" / "s1.png")
    _png(tmp_path / "masks" / "s1.png", np.zeros((7, 7), np.uint8))
    data = open_dataset(f"segfolder:{tmp_path}:classes=3")
    with pytest.raises(UserError, match="images must all have one size: give a size"):
        data.load([0, 1])
    assert open_dataset(f"segfolder:{tmp_path}:classes=3:size=6").load([0, 1])[0].shape == (2, 3, 6, 6)


# ------------------------------------------------------------------------------------ VOC


def _fake_voc(root: Path, names: dict[str, list[str]], size: tuple[int, int] = (30, 40)) -> Path:
    """A VOCdevkit in the real layout: JPEGImages/*.jpg, SegmentationClass/*.png (palette),
    ImageSets/Segmentation/{train,val}.txt."""
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.RandomState(0)
    for split, stems in names.items():
        _mkdir(base / "ImageSets" / "Segmentation")
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
        for k, stem in enumerate(stems):
            h, w = size[0] + 2 * k, size[1]
            Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(_mkdir(base / "JPEGImages") / f"{stem}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[5:15, 10:30] = 15  # a person
            mask[4, 10:30] = 255  # VOC's border
            _png(base / "SegmentationClass" / f"{stem}.png", mask, palette=True)
    return root


def test_voc_reads_the_devkit_layout(tmp_path: Path):
    _fake_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    train = open_dataset(f"voc:{tmp_path}:size=20", split="train")
    test = open_dataset(f"voc:{tmp_path}")
    assert (len(train), len(test), train.num_classes, train.class_names[15]) == (2, 1, 21, "person")
    x, y = train.load([0, 1])
    assert x.shape == (2, 3, 20, 20) and y.shape == (2, 20, 20)
    assert set(torch.unique(y).tolist()) == {0, 15, 255}
    assert test.sample_shape == (3, 256, 256)
    # the VOCdevkit folder itself works as ROOT too
    assert len(open_dataset(f"voc:{tmp_path / 'VOCdevkit'}:size=8,8", split="train")) == 2


def test_voc_refusals(tmp_path: Path):
    with pytest.raises(UserError, match="no PASCAL VOC 2012 under"):
        open_dataset(f"voc:{tmp_path}")
    _fake_voc(tmp_path, {"train": ["a", "b"]})
    with pytest.raises(UserError, match="split file .*val.txt is missing"):
        open_dataset(f"voc:{tmp_path}")
    (tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(UserError, match="train.txt lists 'b' but the mask .* is missing"):
        open_dataset(f"voc:{tmp_path}", split="train")
    with pytest.raises(UserError, match="year must be one of 2007..2012"):
        open_dataset(f"voc:{tmp_path}:year=2020")


# ------------------------------------------------------------------------------------ masks from Python


def test_masks_passed_as_tensors_loaders_and_files_are_segmentation_data(tmp_path: Path):
    """``(N, H, W)`` labels make a segmentation set wherever a user hands data over: an ``(x, y)`` pair, a
    DataLoader (materialised without flattening the masks) and a ``tensors:`` file."""
    from torch.utils.data import DataLoader, TensorDataset

    from robustaudit.data import as_image_data

    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 4, (6, 8, 8))
    y[:, 0] = 255
    for data in (as_image_data((x, y)), as_image_data(DataLoader(TensorDataset(x, y), batch_size=4)),
                 open_dataset(f"tensors:{_save_npz(tmp_path, x, y)}")):
        assert data.task == "segmentation" and data.ignore_index == 255 and data.num_classes == 4
        xb, yb = data.load([1, 5])
        assert torch.equal(xb, x[[1, 5]]) and torch.equal(yb, y[[1, 5]])
    # classification pairs are untouched
    assert as_image_data((x, torch.arange(6) % 3)).task == "classification"
    with pytest.raises(UserError, match="class index 9 in its mask"):
        as_image_data((x, torch.full((6, 8, 8), 9)), num_classes=4)


def _save_npz(tmp: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    path = tmp / "masks.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def test_segfolder_feeds_the_segmentation_audit(tmp_path: Path):
    """Files on disk -> reader -> audit: the clean mIoU the audit reports equals the one computed here from
    the same model and masks with evaluate.segmetrics (ignore pixels left out)."""
    import robustaudit
    from robustaudit.evaluate.segmetrics import confusion_matrix, miou
    from robustaudit.models.zoo.unet import UNet

    _segfolder(tmp_path, n=4, size=(16, 16), classes=3)
    torch.manual_seed(0)
    model = UNet(3, 3, widths=(4, 8)).eval()
    result = robustaudit.audit(model, f"segfolder:{tmp_path}", attacks=["pgd"], eps=[0.03], checks="off", cost=False)
    x, y = open_dataset(f"segfolder:{tmp_path}").load(range(4))
    with torch.no_grad():
        expected = miou(confusion_matrix(model(x).argmax(1), y, 3))
    row = result.records.iloc[0]
    assert row["clean_miou"] == pytest.approx(expected) and row["miou"] <= row["clean_miou"]
