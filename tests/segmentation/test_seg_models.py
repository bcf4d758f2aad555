"""Segmentation models: the catalog's unet-tiny (architecture, shipped weights and their measured
mIoU), torchvision's FCN / DeepLabV3 / LRASPP through ``torchvision:ARCH`` with user weights, and an
attack's gradient through the ``dict['out']`` wrapper."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from robustaudit.core.errors import UserError
from robustaudit.core.task import SEGMENTATION
from robustaudit.core.threat import ThreatModel
from robustaudit.models.catalog import WEIGHTS_DIR, create_model, get_card
from robustaudit.models.loading import load_model
from robustaudit.models.zoo.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unet_tiny_card_and_shapes():
    card = get_card("unet-tiny")
    assert (card.task, card.dataset, card.input_shape, card.num_classes) == ("segmentation", "digit-scenes", (1, 64, 64), 11)
    assert get_card("digits-cnn").task == "classification"
    model = create_model("unet-tiny", pretrained=False)
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 150_000
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 11, 64, 64)
    # any size divisible by 2 ** (levels - 1) works (here 8: the encoder pools three times)
    assert UNet(3, 5)(torch.rand(1, 3, 40, 24)).shape == (1, 5, 40, 24)


def _tv_seg(arch: str, num_classes: int, tmp: Path, **kw) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=num_classes, **kw)
    # batch-norm statistics of a fresh net (mean 0, var 1) flatten its output to a near constant; one
    # pass in train mode gives it statistics of real inputs, so its prediction depends on the input
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        if arch.startswith("lraspp"):  # and a fresh LRASPP head is tiny: scale it to decisive logits
            for head in (model.classifier.low_classifier, model.classifier.high_classifier):
                head.weight.mul_(100)
    path = tmp / f"{arch}.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_torchvision_segmentation_model_loads_and_an_attack_gradient_flows(tmp_path: Path):
    from robustaudit.attacks.segmentation import PixelPGD

    reference, path = _tv_seg("lraspp_mobilenet_v3_large", 3, tmp_path)
    loaded = load_model("torchvision:lraspp_mobilenet_v3_large", weights=str(path))
    model = loaded.module
    assert loaded.source == "torchvision"
    from robustaudit.data import open_dataset

    x = open_dataset("digit-scenes:channels=3").load([0, 1])[0]
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, reference(x)["out"])  # the wrapper reads dict['out']
    assert logits.shape == (2, 3, 64, 64)  # num_classes read from the weights
    y = logits.argmax(1)
    # the input gradient of the task's loss flows through dict['out']
    probe = x.clone().requires_grad_(True)
    SEGMENTATION.loss(model(probe), y).sum().backward()
    assert probe.grad is not None and float(probe.grad.abs().sum()) > 0
    threat = ThreatModel("linf", 16 / 255)
    adv = PixelPGD(steps=5)(model, x, y, threat, seed=0, task=SEGMENTATION)
    assert float((adv - x).abs().max()) <= threat.eps + 1e-6
    with torch.no_grad():
        before = SEGMENTATION.loss(model(x), y)
        after = SEGMENTATION.loss(model(adv), y)
    # an untrained net is nearly constant (argmax flips are rare), but the attack climbs its loss
    assert bool((after > before + 0.02).all()), (before, after)


@pytest.mark.slow
def test_torchvision_aux_classifier_keys_are_dropped(tmp_path: Path):
    """A checkpoint trained with aux_loss (torchvision's reference recipe) loads: the aux head's keys are
    dropped with a warning, or kept with ':aux_loss=true'. ~5 s: two FCN-ResNet50 builds."""
    reference, path = _tv_seg("fcn_resnet50", 4, tmp_path, aux_loss=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model("torchvision:fcn_resnet50", weights=str(path))
    assert any("aux_classifier weights" in str(w.message) for w in caught)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), reference(x)["out"])
    kept = load_model("torchvision:fcn_resnet50:aux_loss=true", weights=str(path))
    assert kept.module.model.aux_classifier is not None


def test_torchvision_segmentation_refusals(tmp_path: Path):
    _, path = _tv_seg("lraspp_mobilenet_v3_large", 3, tmp_path)
    with pytest.raises(UserError, match="weights_backbone is not supported"):
        load_model("torchvision:deeplabv3_mobilenet_v3_large:weights_backbone=DEFAULT")
    with pytest.raises(UserError, match="did you mean 'lraspp_mobilenet_v3_large'"):
        load_model("torchvision:lraspp_mobilenet_v3_larg", weights=str(path))
    with pytest.raises(UserError, match="do not fit the model"):
        load_model("torchvision:deeplabv3_mobilenet_v3_large", weights=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        untrained = load_model("torchvision:lraspp_mobilenet_v3_large:num_classes=5")
    assert untrained.module(torch.rand(1, 3, 32, 32)).shape == (1, 5, 32, 32)


# ------------------------------------------------------------------------------------ shipped weights


def test_unet_tiny_shipped_weights_reach_the_reported_miou():
    """The shipped weights load (sha256 checked) and reproduce the card's clean mIoU and pixel accuracy on
    all 200 digit-scenes test scenes."""
    from robustaudit.data.digit_scenes import digit_scenes_split
    from robustaudit.evaluate.segmetrics import confusion_matrix, miou, pixel_accuracy

    card = get_card("unet-tiny")
    if card.weights is None:
        pytest.skip("unet-tiny weights not shipped yet")
    record = json.loads((WEIGHTS_DIR / "unet-tiny.json").read_text())
    assert record["sha256"] == card.sha256
    model = create_model("unet-tiny")
    x, y = digit_scenes_split("test").load(range(200))
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 100]).argmax(1) for i in range(0, 200, 100)])
    cm = confusion_matrix(pred, y, 11)
    assert miou(cm) == pytest.approx(card.reported["clean_miou"], abs=1e-4)
    assert pixel_accuracy(cm) == pytest.approx(card.reported["clean_pixel_accuracy"], abs=1e-4)
    assert card.reported["clean_miou"] >= UNET_TINY_MIN_MIOU


UNET_TINY_MIN_MIOU = 0.7
