"""load_model: every spec form round-trips to the same outputs, every mistake is a one-line UserError."""

from __future__ import annotations

import json
import sys
import textwrap
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.models.loading import LoadedModel, card_path, check_card, file_sha256, load_model
from robustaudit.models.wrappers import ExportedModule, LogitsOutput, Normalize

# The tiny net every file-based test uses: (N, 1, 8, 8) -> (N, 3). Written to a file for the
# FILE.py:CALLABLE form, and built here from the same source for the reference outputs.
NET_SOURCE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, num_classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


    def build(num_classes=3):
        return TinyNet(num_classes)


    def build_dict():
        return DictNet()


    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyNet()

        def forward(self, x):
            return {"out": self.net(x), "aux": x.mean()}


    def needs_args(depth):
        return TinyNet()


    def broken():
        raise ValueError("bad config")


    def not_a_model():
        return 42
    """
)
_NS: dict = {}
exec(compile(NET_SOURCE, "<tinynet>", "exec"), _NS)  # noqa: S102 - our own source, for reference models
TinyNet = _NS["TinyNet"]

X = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def trained(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every parameter and batch-norm statistic distinct random values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model.eval()


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold equal tensors under equal names (cheaper than a forward pass)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "tinynet.py"
    path.write_text(NET_SOURCE)
    return path


@pytest.fixture
def reference() -> nn.Module:
    return trained(TinyNet())


def outputs(loaded: LoadedModel, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return loaded.module(x)


# -------------------------------------------------------------------------------- FILE.py:CALLABLE


def test_file_callable_with_pt_and_safetensors_weights(tmp_path, net_file, reference):
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(reference.state_dict(), pt)
    save_file(reference.state_dict(), str(st))
    expected = reference(X)

    bare = load_model(f"{net_file}:build")
    assert (
        bare.source == "callable" and bare.name == "tinynet:build" and bare.weights_sha256 is None
    )
    assert not torch.allclose(outputs(bare), expected)  # random init differs: the weights matter

    for weights in (pt, st):
        loaded = load_model(f"{net_file}:build", weights=str(weights))
        assert isinstance(loaded.module, LogitsOutput)
        assert loaded.module.training is False
        assert loaded.weights_sha256 == file_sha256(weights)
        assert loaded.spec == f"{net_file}:build"
        assert outputs(loaded).shape == (2, 3)
        assert torch.allclose(outputs(loaded), expected, atol=1e-6)


def test_checkpoint_dict_and_dataparallel_prefix(tmp_path, net_file, reference):
    for key in ("state_dict", "model"):
        path = tmp_path / f"ckpt_{key}.pth"
        wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
        torch.save({key: wrapped, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
        loaded = load_model(f"{net_file}:build", weights=str(path))
        assert torch.allclose(outputs(loaded), reference(X), atol=1e-6)


def test_num_classes_passed_to_factory_and_normalize(net_file):
    loaded = load_model(f"{net_file}:build", num_classes=5, normalize="mean=0.5,std=0.25")
    assert outputs(loaded).shape == (2, 5)
    inner = loaded.module.model
    assert isinstance(inner, Normalize)
    with torch.no_grad():
        assert torch.allclose(outputs(loaded), inner.model((X - 0.5) / 0.25), atol=1e-6)


def test_dict_output_is_unwrapped(net_file):
    loaded = load_model(f"{net_file}:build_dict")
    out = outputs(loaded)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_package_module_callable(tmp_path, monkeypatch):
    package = tmp_path / "userpkg_loading_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("userpkg_loading_test.nets:build", num_classes=4)
    assert loaded.source == "callable" and loaded.name == "userpkg_loading_test.nets:build"
    assert outputs(loaded).shape == (2, 4)
    with pytest.raises(
        UserError,
        match=r"cannot import module 'nosuch_pkg_xyz.nets' \(no module named 'nosuch_pkg_xyz'\)",
    ):
        load_model("nosuch_pkg_xyz.nets:build")


def test_file_imports_its_sibling_modules(tmp_path):
    (tmp_path / "blocks_sibling.py").write_text("import torch.nn as nn\nWIDTH = 6\n")
    (tmp_path / "main_net.py").write_text(
        "import torch.nn as nn\nfrom blocks_sibling import WIDTH\n\n"
        "def build():\n    return nn.Linear(WIDTH, 2)\n"
    )
    loaded = load_model(f"{tmp_path / 'main_net.py'}:build")
    assert outputs(loaded, torch.rand(2, 6)).shape == (2, 2)
    assert str(tmp_path) not in sys.path  # the folder was only on the path while loading


@pytest.mark.parametrize(
    ("source", "attr", "match"),
    [
        (
            "def build(:\n    pass\n",
            "build",
            r"syntax error in '.*bad\.py' line 1 \(importing '.*bad\.py'\)",
        ),
        (
            "raise RuntimeError('no GPU here')\n",
            "build",
            r"importing '.*bad\.py' raised RuntimeError: no GPU here",
        ),
        ("import sys\nsys.exit(3)\n", "build", r"called sys\.exit\(3\)"),
    ],
)
def test_file_import_failures(tmp_path, source, attr, match):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(UserError, match=match):
        load_model(f"{path}:{attr}")


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ("buld", r"has no callable 'buld' \(did you mean 'build'\?\); callables: .*TinyNet.*build"),
        ("broken", r"tinynet\.py:broken' raised ValueError: bad config"),
        ("not_a_model", r"tinynet\.py:not_a_model' returned int, expected torch\.nn\.Module"),
        ("needs_args", r"needs arguments \(depth\) but is called with none"),
        ("torch", r"'torch' in '.*tinynet\.py' is not callable \(module\)"),
        ("1abc", r"not a Python name"),
    ],
)
def test_factory_failures(net_file, attr, match):
    with pytest.raises(UserError, match=match):
        load_model(f"{net_file}:{attr}")


def test_num_classes_rejected_by_factory_without_it(tmp_path):
    path = tmp_path / "fixed.py"
    path.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(
        UserError, match=r"takes no num_classes argument, but num_classes=10 was given"
    ):
        load_model(f"{path}:build", num_classes=10)


# ---------------------------------------------------------------------------------- weights errors


def test_weights_that_do_not_fit(tmp_path, net_file):
    missing = tmp_path / "missing.pt"
    state = trained(TinyNet()).state_dict()
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("bn.")}
        | {"head.weight": torch.zeros(1)},
        missing,
    )
    with pytest.raises(
        UserError,
        match=r"do not fit the model: keys 5 missing \(bn\.weight, bn\.bias, bn\.running_mean, "
        r"\.\.\.\); 1 unexpected \(head\.weight\)",
    ):
        load_model(f"{net_file}:build", weights=str(missing))

    shaped = tmp_path / "ten.safetensors"
    save_file(TinyNet(num_classes=10).state_dict(), str(shaped))
    with pytest.raises(
        UserError,
        match=r"'fc\.weight' has shape \(10, 144\) in the file but \(3, 144\) in the model",
    ):
        load_model(f"{net_file}:build", weights=str(shaped))


def test_bad_weights_files(tmp_path, net_file):
    spec = f"{net_file}:build"
    with pytest.raises(UserError, match=r"weights file '.*nope\.pt' not found"):
        load_model(spec, weights=str(tmp_path / "nope.pt"))

    good = tmp_path / "good.pt"
    torch.save(TinyNet().state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(
        UserError, match=r"could not read weights file '.*truncated\.pt' \(corrupt, truncated"
    ):
        load_model(spec, weights=str(truncated))

    st = tmp_path / "good.safetensors"
    save_file(TinyNet().state_dict(), str(st))
    broken_st = tmp_path / "broken.safetensors"
    broken_st.write_bytes(st.read_bytes()[:-40])
    with pytest.raises(UserError, match=r"could not read weights file '.*broken\.safetensors'"):
        load_model(spec, weights=str(broken_st))

    not_state = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, not_state)
    with pytest.raises(UserError, match=r"is a dict \('lr', 'epochs'\) but not a state_dict"):
        load_model(spec, weights=str(not_state))

    pickled = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), pickled)
    with pytest.raises(
        UserError, match=r"weights file '.*whole\.pt' is a pickled model .*--trust-pickle"
    ):
        load_model(spec, weights=str(pickled))


# ------------------------------------------------------------------------------------- model files


def test_torchscript_round_trip_detected_by_content(tmp_path, reference):
    path = tmp_path / "scripted.pt"  # a .pt name: the content, not the extension, says TorchScript
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        torch.jit.save(torch.jit.trace(reference, X), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading must not leak torch's deprecation to the user
        loaded = load_model(str(path))
    assert loaded.source == "torchscript" and loaded.name == "scripted"
    assert loaded.weights_sha256 == file_sha256(path)
    assert torch.allclose(outputs(loaded), reference(X), atol=1e-6)

    with pytest.raises(UserError, match=r"TorchScript model, which carries its own weights"):
        load_model(str(path), weights=str(path))
    with pytest.raises(
        UserError, match=r"TorchScript model with fixed classes; drop num_classes=3"
    ):
        load_model(str(path), num_classes=3)
    with pytest.raises(
        UserError, match=r"weights file '.*scripted\.pt' is a TorchScript model, not weights"
    ):
        load_model("torchvision:resnet18", weights=str(path))


def test_export_round_trip_with_dynamic_batch(tmp_path, reference):
    path = tmp_path / "exported.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(reference, (X,), dynamic_shapes=({0: batch},)), str(path))
    loaded = load_model(str(path))
    assert loaded.source == "export" and loaded.weights_sha256 == file_sha256(path)
    assert isinstance(loaded.module.model, ExportedModule)
    assert torch.allclose(outputs(loaded), reference(X), atol=1e-6)
    x5 = torch.rand(5, 1, 8, 8)
    assert torch.allclose(outputs(loaded, x5), reference(x5), atol=1e-6)
    # train()/eval() on a raw exported graph raise; here the mode guard works on it.
    with eval_mode(loaded.module.train()):
        assert loaded.module.training is False
    assert loaded.module.training is True
    with pytest.raises(UserError, match=r"rejects inputs of shape \(2, 3, 8, 8\)"):
        loaded.module(torch.rand(2, 3, 8, 8))
    with pytest.raises(UserError, match=r"carries its own weights"):
        load_model(str(path), weights=str(path))


def test_export_with_fixed_batch_says_how_to_fix(tmp_path, reference):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(reference, (X,)), str(path))
    loaded = load_model(str(path))
    assert torch.allclose(outputs(loaded), reference(X), atol=1e-6)
    with pytest.raises(UserError, match=r"fixed batch size: export with dynamic_shapes"):
        loaded.module(torch.rand(3, 1, 8, 8))


def test_state_dict_given_as_model(tmp_path, reference):
    for name, obj in (
        ("sd.pt", reference.state_dict()),
        ("ckpt.pth", {"state_dict": reference.state_dict(), "epoch": 2}),
    ):
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(
            UserError,
            match=rf"'.*{name}' holds a state_dict, not a model: give the architecture with "
            rf"--model ARCH and the file with --weights .*{name}",
        ):
            load_model(str(path))
    config = tmp_path / "config.pt"
    torch.save({"lr": 0.1}, config)
    with pytest.raises(UserError, match=r"'.*config\.pt' holds dict, not a model"):
        load_model(str(config))
    st = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), str(st))
    with pytest.raises(UserError, match=r"holds weights only \(safetensors\), not a model"):
        load_model(str(st))


def test_pickled_module_needs_trust(tmp_path):
    model = trained(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3)))
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(
        UserError,
        match=r"'.*whole\.pt' is a pickled model \(torch\.nn\.modules\..*\); .*--trust-pickle",
    ):
        load_model(str(path))
    loaded = load_model(str(path), trust_pickle=True)
    assert loaded.source == "pickle" and loaded.weights_sha256 == file_sha256(path)
    assert torch.allclose(outputs(loaded), model(X), atol=1e-6)


def test_pickled_class_that_cannot_be_imported(tmp_path):
    # Pickle a module whose class lives in a throwaway module that is gone at load time.
    throwaway = types.ModuleType("gone_loading_test_mod")
    exec("import torch.nn as nn\nclass Gone(nn.Linear):\n    pass\n", throwaway.__dict__)  # noqa: S102
    sys.modules["gone_loading_test_mod"] = throwaway
    try:
        path = tmp_path / "gone.pt"
        torch.save(throwaway.Gone(2, 2), path)
    finally:
        del sys.modules["gone_loading_test_mod"]
    with pytest.raises(
        UserError,
        match=r"unpickling '.*gone\.pt' failed \(ModuleNotFoundError: .*must be importable",
    ):
        load_model(str(path), trust_pickle=True)


def test_pickled_class_beside_the_file_is_found(tmp_path, monkeypatch):
    """``nets.py`` beside ``net.pt`` (or in the working directory): found as ``python -m`` would, though the
    console script's sys.path holds neither; sys.path is as before afterwards."""
    (tmp_path / "beside_loading_test_mod.py").write_text(
        "import torch.nn as nn\nclass Beside(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import beside_loading_test_mod

    path = tmp_path / "beside.pt"
    torch.save(beside_loading_test_mod.Beside(64, 3), path)
    del sys.modules["beside_loading_test_mod"]
    sys.path.remove(str(tmp_path))
    before = list(sys.path)
    monkeypatch.chdir(tmp_path.parent)  # the working directory is not the file's
    try:
        loaded = load_model(str(path), trust_pickle=True)
        assert loaded.source == "pickle" and "Beside" in [type(m).__name__ for m in loaded.module.modules()]
        assert sys.path == before
    finally:
        sys.modules.pop("beside_loading_test_mod", None)


def test_corrupt_model_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights")
    with pytest.raises(
        UserError, match=r"could not read model file '.*notes\.pt' \(corrupt, truncated"
    ):
        load_model(str(text))
    bad_pt2 = tmp_path / "bad.pt2"
    bad_pt2.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"could not load torch\.export archive '.*bad\.pt2'"):
        load_model(str(bad_pt2))


# ------------------------------------------------------------------------------------- torchvision


@pytest.fixture(scope="module")
def resnet10(tmp_path_factory):
    """A 10-class resnet18 with random "trained" weights saved as .pt and .safetensors.

    ResNet forward passes cost ~0.5 s on a 2-core CPU, so one is compared per spec form and the
    rest of the checks compare state_dicts.
    """
    folder = tmp_path_factory.mktemp("resnet")
    model = trained(torchvision.models.resnet18(num_classes=10), seed=3)
    pt, st = folder / "r18.pt", folder / "r18.safetensors"
    torch.save(model.state_dict(), pt)
    save_file(model.state_dict(), str(st))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
    assert torch.isfinite(expected).all() and expected.std() > 1e-3  # a meaningful comparison
    return model, pt, st, x, expected


def test_torchvision_infers_num_classes_from_weights(resnet10):
    model, pt, st, x, expected = resnet10
    loaded = load_model("torchvision:resnet18", weights=str(pt))
    assert loaded.source == "torchvision" and loaded.name == "torchvision:resnet18"
    assert loaded.weights_sha256 == file_sha256(pt)
    out = outputs(loaded, x)
    assert out.shape == (2, 10)
    assert torch.allclose(out, expected, atol=1e-5)
    # safetensors stores keys sorted, so inference cannot rely on the head being the last key.
    from_st = load_model("torchvision:resnet18", weights=str(st))
    assert from_st.module.model.fc.out_features == 10
    assert same_state(from_st.module.model, model)


def test_torchvision_inline_setting_and_argument(resnet10):
    model, pt, _, _, _ = resnet10
    loaded = load_model("torchvision:resnet18:num_classes=10", weights=str(pt))
    assert same_state(loaded.module.model, model)
    with pytest.warns(UserWarning, match=r"no weights \(random initialization\)"):
        bare = load_model("torchvision:resnet18", num_classes=7)
    assert bare.module.model.fc.out_features == 7 and bare.weights_sha256 is None
    with pytest.warns(UserWarning, match=r"overrides num_classes=4"):
        load_model("torchvision:resnet18:num_classes=10", weights=str(pt), num_classes=4)
    # An explicit num_classes that contradicts the weights: the shape mismatch is named.
    with pytest.raises(
        UserError, match=r"'fc\.weight' has shape \(10, 512\) in the file but \(5, 512\)"
    ):
        load_model("torchvision:resnet18", weights=str(pt), num_classes=5)


def test_torchvision_inference_for_archs_not_buildable_on_meta(tmp_path):
    # RegNet computes its widths with tensors, so the reference model is built on the CPU instead.
    model = trained(torchvision.models.regnet_x_400mf(num_classes=6), seed=5)
    path = tmp_path / "regnet.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model("torchvision:regnet_x_400mf", weights=str(path))
    assert loaded.module.model.fc.out_features == 6
    assert same_state(loaded.module.model, model)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            "torchvision:resnt18",
            r"unknown torchvision classification or segmentation architecture 'resnt18' \(did you mean 'resnet18'\?\)",
        ),
        (
            "torchvision:fasterrcnn_resnet50_fpn",
            r"'fasterrcnn_resnet50_fpn' is not a torchvision classification or segmentation architecture",
        ),
        ("torchvision:resnet18:foo=1", r"torchvision rejected the settings \{'foo': 1\}"),
        (
            "torchvision:resnet18:num_classes=ten",
            r"num_classes must be a positive integer, got 'ten'",
        ),
        ("torchvision:resnet18:num_classes", r"setting 'num_classes' is not KEY=VALUE"),
        ("torchvision:fcn_resnet50:weights_backbone=DEFAULT", r"weights_backbone is not supported"),
    ],
)
def test_torchvision_errors(spec, match):
    with pytest.raises(UserError, match=match):
        load_model(spec)


# ----------------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class _Card:
    num_classes: int
    input_shape: tuple[int, int, int]
    sha256: str


def test_catalog_name_and_weights_override(tmp_path, monkeypatch, reference):
    # A stand-in catalog module, so this test does not depend on which models ship.
    fake = types.ModuleType("robustaudit.models.catalog")
    fake.model_names = lambda: ["tiny-fake"]
    fake.get_card = lambda name: _Card(num_classes=3, input_shape=(1, 8, 8), sha256="ab" * 32)
    fake.create_model = lambda name, *, pretrained=True: trained(
        TinyNet(), seed=9 if pretrained else 8
    )
    monkeypatch.setitem(sys.modules, "robustaudit.models.catalog", fake)

    shipped = load_model("tiny-fake")
    assert (shipped.source, shipped.name, shipped.weights_sha256) == (
        "catalog",
        "tiny-fake",
        "ab" * 32,
    )
    assert torch.allclose(outputs(shipped), trained(TinyNet(), seed=9)(X), atol=1e-6)

    weights = tmp_path / "mine.safetensors"
    save_file(reference.state_dict(), str(weights))
    mine = load_model("tiny-fake", weights=str(weights))
    assert mine.weights_sha256 == file_sha256(weights)
    assert torch.allclose(outputs(mine), reference(X), atol=1e-6)

    with pytest.raises(
        UserError, match=r"catalog model 'tiny-fake' has 3 classes, not num_classes=10"
    ):
        load_model("tiny-fake", num_classes=10)
    with pytest.raises(UserError, match=r"unknown model 'tiny-fak' \(did you mean 'tiny-fake'\?\)"):
        load_model("tiny-fak")


# ------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", r"empty model spec"),
        ("models/missing.pt", r"model file 'models/missing\.pt' not found"),
        ("missing.py:build", r"model file 'missing\.py' not found"),
        ("no_such_model_name_xyz", r"unknown model 'no_such_model_name_xyz'.*FILE\.py:CALLABLE"),
        ("some.module:", r"nothing after ':'"),
        ("bad spec!:x", r"is not FILE\.py:CALLABLE"),
    ],
)
def test_spec_errors(spec, match):
    with pytest.raises(UserError, match=match):
        load_model(spec)


def test_spec_that_is_a_python_file_or_folder(net_file, tmp_path):
    with pytest.raises(
        UserError, match=r"is a Python file: name the function .*tinynet\.py:CALLABLE"
    ):
        load_model(str(net_file))
    with pytest.raises(UserError, match=r"is a directory"):
        load_model(str(tmp_path))


def test_bad_arguments(net_file):
    with pytest.raises(UserError, match=r"num_classes must be a positive integer, got 0"):
        load_model(f"{net_file}:build", num_classes=0)
    with pytest.raises(UserError, match=r"lacks 'std='"):
        load_model(f"{net_file}:build", normalize="mean=0.5")


def test_file_sha256_known_value(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_real_catalog_model_loads_with_its_card_sha():
    from robustaudit.models.catalog import get_card, model_names

    name = model_names()[0]
    card = get_card(name)
    loaded = load_model(name)
    assert (loaded.source, loaded.name) == ("catalog", name)
    assert loaded.weights_sha256 == card.sha256 == file_sha256(card.weights_path)
    x = torch.rand(2, *card.input_shape, generator=torch.Generator().manual_seed(7))
    assert outputs(loaded, x).shape == (2, card.num_classes)


# ------------------------------------------------------------------------------------ model cards


def test_weights_are_checked_against_their_card(tmp_path, net_file, reference):
    weights = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), str(weights))
    card = tmp_path / "w.safetensors.json"
    assert card_path(weights) == card
    assert check_card(weights) is None  # no card: nothing to check
    # the format of the shipped manifests (robustaudit/models/weights/<name>.json)
    card.write_text(json.dumps({"name": "w", "sha256": file_sha256(weights).upper(), "reported": {}}))
    assert check_card(weights) == file_sha256(weights)
    assert load_model(f"{net_file}:build", weights=str(weights)).weights_sha256 == file_sha256(weights)

    card.write_text(json.dumps({"name": "w", "sha256": "ab" * 32}))
    with pytest.raises(UserError, match=r"w\.safetensors' has sha256 [0-9a-f]{12}…, but its card "
                                        r"'w\.safetensors\.json' expects abababababab…: refused"):
        load_model(f"{net_file}:build", weights=str(weights))
    card.write_text(json.dumps({"sha256": "not a digest"}))
    with pytest.raises(UserError, match=r'"sha256" must be 64 hex digits'):
        check_card(weights)
    card.write_text("{oops")
    with pytest.raises(UserError, match=r"cannot read the model card '.*w\.safetensors\.json'"):
        check_card(weights)
    card.write_text(json.dumps({"name": "w"}))  # a card without a digest has nothing to check
    assert check_card(weights) is None


def test_a_model_file_is_checked_against_its_card(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), path)
    (tmp_path / "whole.pt.json").write_text(json.dumps({"sha256": "0" * 64}))
    # refused before unpickling, even with trust_pickle: a replaced file never runs
    with pytest.raises(UserError, match=r"but its card 'whole\.pt\.json' expects 000000000000…"):
        load_model(str(path), trust_pickle=True)


def test_tampered_catalog_weights_are_refused(tmp_path, monkeypatch):
    from robustaudit.models import catalog

    data = bytearray((catalog.WEIGHTS_DIR / "digits-cnn.pt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "digits-cnn.pt").write_bytes(bytes(data))
    monkeypatch.setattr(catalog, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UserError, match=r"but the card of 'digits-cnn' expects aedfd32c6ef0…: "
                                        r"the file is corrupted or was replaced"):
        load_model("digits-cnn")


def test_corrupt_files_are_not_called_pickles(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(7, 256)))
    with pytest.raises(UserError, match=r"neither a zip archive \(torch\.save\) nor a pickle"):
        load_model(str(noise))
    whole = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), whole)
    whole.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(UserError, match=r"a zip archive cut short or damaged"):
        load_model(str(whole))
