"""timm:NAME with a fine-tuned head, as torchvision:ARCH: the class count comes from the weights file, or
from ``:num_classes=N`` in the spec (random weights, no network)."""

from __future__ import annotations


import pytest
import torch

from robustaudit.core.errors import UserError
from robustaudit.models.loading import load_model

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'robustaudit[timm]')")


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: every connection fails loudly


@pytest.fixture(scope="module")
def ten_class_weights(tmp_path_factory):
    """A 10-class resnet18 state dict (random weights) and the model it came from."""
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    path = tmp_path_factory.mktemp("w") / "timm_r18_10.pt"
    torch.save(reference.state_dict(), path)
    return path, reference


def _normalized(reference, x):
    cfg = reference.pretrained_cfg
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg["mean"], cfg["std"]))
    return (x - mean) / std


def test_the_class_count_comes_from_the_weights_file(ten_class_weights):
    # once: "'fc.weight' has shape (10, 512) in the file but (1000, 512) in the model"
    path, reference = ten_class_weights
    loaded = load_model("timm:resnet18", weights=path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference(_normalized(reference, x)), rtol=0, atol=1e-5)
    assert loaded.module(x).shape == (2, 10)


def test_num_classes_in_the_spec(ten_class_weights):
    # once: "unknown timm model 'resnet18:num_classes=10'"
    path, _ = ten_class_weights
    loaded = load_model("timm:resnet18:num_classes=10", weights=path)
    with torch.no_grad():
        assert loaded.module(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_a_spec_class_count_the_file_does_not_have_says_which_layer(ten_class_weights):
    path, _ = ten_class_weights
    with pytest.raises(UserError, match=r"'fc.weight' has shape \(10, 512\) in the file but \(7, 512\)"):
        load_model("timm:resnet18:num_classes=7", weights=path)


def test_a_malformed_setting_is_one_line(ten_class_weights):
    path, _ = ten_class_weights
    with pytest.raises(UserError, match="is not KEY=VALUE"):
        load_model("timm:resnet18:num_classes", weights=path)


def test_a_misspelt_setting_suggests_the_close_one(ten_class_weights):
    path, _ = ten_class_weights
    with pytest.raises(UserError, match=r"unexpected keyword argument 'num_clases' \(did you mean 'num_classes'\?\)"):
        load_model("timm:resnet18:num_clases=10", weights=path)


def test_timm_imports_without_torchs_jit_deprecation_line():
    """timm's import makes torch warn that torch.jit.interface is deprecated: a stray stderr line before any
    one-line error. Imported through import_timm it stays quiet (a fresh process: timm not yet imported)."""
    import subprocess
    import sys

    code = "from robustaudit.models.timm_models import import_timm; assert import_timm() is not None"
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
