"""``torchvision:ARCH:weights=ENUM``: published weights read from torch hub's cache, never the network.

Each test writes a state_dict of the real architecture with random weights into a temporary hub
directory, under the exact file name the enum's url names, and compares the loaded model with
torchvision's own constructor given that state_dict (wrapped with the enum's normalization).
Downloads are sabotaged in every test (``no_network``): a test that reached the network would fail.
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from robustaudit.core.errors import UserError
from robustaudit.core.hashing import file_sha256
from robustaudit.models.loading import load_model
from robustaudit.models.torchvision_weights import cached_file, list_torchvision_weights, weights_enum
from robustaudit.models.wrappers import Normalize

SMALL = "squeezenet1_1"  # 1.2 M parameters: a 5 MB file


@pytest.fixture(autouse=True)
def no_network(offline, monkeypatch):
    """Any download or socket connection fails the test."""
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def write_cache(hub: Path, arch: str, enum: str = "DEFAULT", seed: int = 0) -> tuple[torch.nn.Module, Path]:
    """A random-weight state_dict of ``arch`` at the path torch hub keeps ``enum``'s file; returns the
    reference model (torchvision's constructor with that state_dict, eval mode) and the path."""
    weights = weights_enum(arch, enum, arch)
    path = cached_file(weights, hub)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    reference = torchvision.models.get_model(arch, num_classes=len(weights.meta["categories"]))
    with torch.no_grad():  # BatchNorm statistics away from their init, so a skipped buffer shows
        for name, buf in reference.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
    torch.save(reference.state_dict(), path)
    return reference.eval(), path


def load_quiet(spec: str, **kwargs) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(spec, **kwargs)
    return loaded, [str(w.message) for w in caught]


def test_forward_equals_torchvision_with_the_enums_normalization(tmp_path):
    reference, path = write_cache(tmp_path, SMALL)
    loaded, warned = load_quiet(f"torchvision:{SMALL}:weights=IMAGENET1K_V1", model_dir=tmp_path)
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        want = Normalize(reference, weights.transforms().mean, weights.transforms().std)(x)
        got = loaded.module(x)
    assert got.shape == (3, 1000)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert loaded.source == "torchvision" and loaded.weights_sha256 == file_sha256(path)
    card = loaded.card
    assert card["weights_enum"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert card["published"]["ImageNet-1K"]["acc@1"] == pytest.approx(58.178)
    assert card["input_size"] == [224, 224] and card["resize_size"] == [256]
    assert card["mean"] == pytest.approx([0.485, 0.456, 0.406]) and card["weights_file"] == str(path)
    # random weights are not the published file: its name announces another sha256
    assert card["published_file"] is False
    assert any("is not the file torchvision publishes" in w and "b8a52dc0" in w for w in warned), warned


def test_enum_names_default_and_qualified_resolve_to_one_member(tmp_path):
    write_cache(tmp_path, SMALL)
    names = [f"torchvision:{SMALL}:weights={n}" for n in
             ("DEFAULT", "IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1")]
    cards = [load_quiet(n, model_dir=tmp_path)[0].card["weights_enum"] for n in names]
    assert cards == ["SqueezeNet1_1_Weights.IMAGENET1K_V1"] * 3


def test_hub_dir_comes_from_torch_home_and_is_left_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    write_cache(tmp_path / "hub", SMALL)
    loaded, _ = load_quiet(f"torchvision:{SMALL}:weights=DEFAULT")
    assert loaded.card["weights_file"].startswith(str(tmp_path / "hub" / "checkpoints"))
    assert torch.hub._hub_dir is None  # the builder's read pointed torch hub there, then restored it


@pytest.mark.slow  # a 45 MB random state_dict written and read: about 4 s on one core
def test_resnet18_loads_equal_to_torchvision(tmp_path):
    reference, _ = write_cache(tmp_path, "resnet18", "IMAGENET1K_V1", seed=1)
    loaded, _ = load_quiet("torchvision:resnet18:weights=IMAGENET1K_V1", model_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32)
    t = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), Normalize(reference, t.mean, t.std)(x), rtol=0, atol=0)


def test_download_only_when_allowed(tmp_path, monkeypatch):
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    expected = tmp_path / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    with pytest.raises(UserError, match=r"not in the cache: expected '.*squeezenet1_1-b8a52dc0\.pth'.*--allow-download"):
        load_model(f"torchvision:{SMALL}:weights=DEFAULT", model_dir=tmp_path)
    assert not expected.exists()
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # what torch hub would write
        calls.append((url, dst, hash_prefix))
        torch.save(torchvision.models.get_model(SMALL).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    loaded, _ = load_quiet(f"torchvision:{SMALL}:weights=DEFAULT", model_dir=tmp_path, allow_download=True)
    assert calls == [(weights.url, str(expected), "b8a52dc0")]
    assert loaded.weights_sha256 == file_sha256(expected)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"could not download https://download\.pytorch\.org/.*name resolution"):
        load_model(f"torchvision:{SMALL}:weights=DEFAULT", model_dir=tmp_path, allow_download=True)


def test_model_dir_pointing_at_checkpoints_gets_a_hint(tmp_path):
    _, path = write_cache(tmp_path, SMALL)
    with pytest.raises(UserError, match=r"--model-dir is torch hub's directory, files go in its checkpoints/"):
        load_model(f"torchvision:{SMALL}:weights=DEFAULT", model_dir=path.parent)


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path) -> None:  # another architecture's weights under this file name
    torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), path)


def _pickled(path: Path) -> None:  # torch hub would unpickle this with weights_only=False
    torch.save({"model": torch.nn.Linear(2, 2)}, path)


@pytest.mark.parametrize(("spoil", "match"), [
    (_cut, r"unusable: could not read weights file .*a zip archive cut short.*delete the file"),
    (lambda p: p.write_bytes(bytes(range(7, 256)) * 4), r"unusable: .*neither a zip archive \(torch\.save\) nor a pickle"),
    (_foreign, r"cached weights of squeezenet1_1 are not SqueezeNet1_1_Weights's: .*do not fit the model: keys"),
    (_pickled, r"unusable: weights file .* not a state_dict"),
])
def test_spoilt_cached_file_is_refused_in_one_line(tmp_path, spoil, match):
    _, path = write_cache(tmp_path, SMALL)
    spoil(path)
    with pytest.raises(UserError, match=match) as info:
        load_quiet(f"torchvision:{SMALL}:weights=DEFAULT", model_dir=tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("spec", "kwargs", "match"), [
    ("torchvision:resnett18:weights=DEFAULT", {}, r"unknown torchvision .* 'resnett18' \(did you mean 'resnet18'\?\)"),
    ("torchvision:resnet18:weights=IMAGENET1K_V3", {},
     r"ResNet18_Weights has no weights 'IMAGENET1K_V3' \(did you mean 'IMAGENET1K_V1'\?\); it has DEFAULT, IMAGENET1K_V1 "),
    ("torchvision:resnet18:weights=3", {}, r"weights= takes a weights enum name"),
    (f"torchvision:{SMALL}:weights=DEFAULT", {"normalize": "imagenet"}, r"the weights enum gives the normalization"),
    (f"torchvision:{SMALL}:weights=DEFAULT,num_classes=10", {}, r"torchvision rejected the settings .*num_classes"),
])
def test_bad_specs_are_one_line(tmp_path, spec, kwargs, match):
    write_cache(tmp_path, SMALL)
    with pytest.raises(UserError, match=match):
        load_quiet(spec, model_dir=tmp_path, **kwargs)


def test_weights_file_beside_an_enum_is_refused(tmp_path):
    _, path = write_cache(tmp_path, SMALL)
    with pytest.raises(UserError, match=r"names its weights \(weights=\); drop --weights"):
        load_model(f"torchvision:{SMALL}:weights=DEFAULT", weights=str(path), model_dir=tmp_path)


def test_listing_is_offline_and_marks_the_cache(tmp_path):
    write_cache(tmp_path, SMALL)
    rows = {r["spec"]: r for r in list_torchvision_weights(tmp_path)}
    assert len(rows) > 100  # every classification enum member, DEFAULT aliases not repeated
    row = rows[f"torchvision:{SMALL}:weights=IMAGENET1K_V1"]
    assert row["cached"] and row["default"] and row["params"] == 1235496 and row["acc1"] == pytest.approx(58.178)
    assert sum(r["cached"] for r in rows.values()) == 1
    assert rows["torchvision:resnet50:weights=IMAGENET1K_V2"]["default"]
    assert not rows["torchvision:resnet50:weights=IMAGENET1K_V1"]["default"]
    assert rows["torchvision:vgg16:weights=IMAGENET1K_FEATURES"]["acc1"] is None  # NaN in torchvision's meta


# ---------------------------------------------------------------------------------------------- timm


def test_timm_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, installed or not
    with pytest.raises(UserError, match=r"not installed: install robustaudit\[timm\]"):
        load_model("timm:resnet18")


def test_timm_model_gets_the_weights_file_and_timms_normalization(tmp_path, monkeypatch):
    """timm is stood in for by a module with its two calls: the loader's own logic is what is tested."""
    def create_model(name, pretrained=False, **kwargs):
        assert pretrained is False  # nothing downloaded
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, kwargs.get("num_classes", 5)))
        net.pretrained_cfg = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2), "input_size": (3, 4, 4)}
        return net

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(
        create_model=create_model, list_models=lambda: ["tiny_net"]))
    torch.manual_seed(0)
    reference = create_model("tiny_net")
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    loaded = load_model("timm:tiny_net", weights=str(tmp_path / "w.pt"))
    x = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), Normalize(reference, (0.5, 0.4, 0.3), (0.2,) * 3)(x))
    assert loaded.source == "timm" and loaded.card["input_size"] == [4, 4]
    with pytest.raises(UserError, match=r"unknown timm model 'tiny_nte' \(did you mean 'tiny_net'\?\)"):
        load_model("timm:tiny_nte", weights=str(tmp_path / "w.pt"))
    with pytest.raises(UserError, match=r"timm publishes no hub weights for 'tiny_net'; pass --weights FILE"):
        load_model("timm:tiny_net")
