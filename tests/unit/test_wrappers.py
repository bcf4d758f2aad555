"""Normalize, parse_normalize, LogitsOutput and prepare: arithmetic checked against hand computation."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from robustaudit.core.errors import UserError
from robustaudit.models.wrappers import (
    LogitsOutput,
    Normalize,
    parse_normalize,
    prepare,
)


class _Returns(nn.Module):
    """A model whose forward returns ``make(x)``: stands in for models with structured outputs."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(x)


# --------------------------------------------------------------------------------------- Normalize


def test_normalize_matches_per_channel_arithmetic():
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = Normalize(nn.Identity(), mean, std)(x)
    expected = torch.empty_like(x)
    for c in range(3):
        expected[:, c] = (x[:, c] - mean[c]) / std[c]
    assert out.shape == (2, 3, 4, 5)
    assert torch.allclose(out, expected, atol=1e-6)
    # Spot-check one number by hand: (0.75 - 0.3) / 0.125 = 3.6
    assert Normalize(nn.Identity(), mean, std)(torch.full((1, 3, 1, 1), 0.75))[
        0, 2, 0, 0
    ].item() == pytest.approx(3.6)


def test_normalize_buffers_shape_dtype_and_state_dict():
    norm = Normalize(nn.Conv2d(3, 2, 1), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert norm.mean.shape == (1, 3, 1, 1) and norm.std.shape == (1, 3, 1, 1)
    # Configuration, not learned state: only the wrapped model's tensors are saved.
    assert sorted(norm.state_dict()) == ["model.bias", "model.weight"]
    norm = norm.double()
    assert norm.mean.dtype == torch.float64
    assert norm(torch.rand(1, 3, 2, 2, dtype=torch.float64)).dtype == torch.float64


def test_normalize_single_value_applies_to_every_channel():
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    out = Normalize(nn.Identity(), [0.5], [0.25])(x)
    assert torch.allclose(out, (x - 0.5) / 0.25)
    out_gray = Normalize(nn.Identity(), [0.5], [0.25])(x[:, :1])  # any channel count is fine
    assert out_gray.shape == (2, 1, 2, 2)


def test_normalize_gradient_is_one_over_std():
    x = torch.rand(1, 2, 3, 3, requires_grad=True)
    Normalize(nn.Identity(), [0.0, 0.0], [0.5, 0.25])(x).sum().backward()
    assert torch.allclose(x.grad[:, 0], torch.full((1, 3, 3), 2.0))
    assert torch.allclose(x.grad[:, 1], torch.full((1, 3, 3), 4.0))


def test_normalize_channel_mismatch_is_a_user_error():
    norm = Normalize(nn.Identity(), [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    with pytest.raises(UserError, match=r"3 channels .* input has 1 \(shape \(2, 1, 4, 4\)\)"):
        norm(torch.rand(2, 1, 4, 4))
    with pytest.raises(UserError, match=r"expects \(N, C, H, W\)"):
        norm(torch.rand(3, 4, 4))


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([0.5, 0.5, 0.5], [0.2, 0.0, 0.2], r"std must be > 0"),
        ([0.5], [-1.0], r"std must be > 0"),
        ([0.5, 0.5, 0.5], [0.2, 0.2], r"3 mean values but 2 std values"),
        ([], [0.2], r"at least one"),
        ([float("nan")], [0.2], r"finite"),
        (["a"], [0.2], r"sequences of numbers"),
    ],
)
def test_normalize_rejects_bad_statistics(mean, std, match):
    with pytest.raises(UserError, match=match):
        Normalize(nn.Identity(), mean, std)


# --------------------------------------------------------------------------------- parse_normalize


@pytest.mark.parametrize(
    ("spec", "mean", "std"),
    [
        ("mean=0.49,0.48,0.45,std=0.25,0.24,0.26", [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]),
        ("std=0.25,0.24,0.26,mean=0.49,0.48,0.45", [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]),
        (" mean = 0.5 , 0.4, 0.3  std = 0.2,0.2 ,0.1 ", [0.5, 0.4, 0.3], [0.2, 0.2, 0.1]),
        ("mean=0.5,std=0.25", [0.5], [0.25]),
        ("mean=0,0,0,std=1", [0.0, 0.0, 0.0], [1.0]),
        ("mean=1e-1;std=2.5E-1", [0.1], [0.25]),
        ("imagenet", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ("MNIST", [0.1307], [0.3081]),
    ],
)
def test_parse_normalize_accepts(spec, mean, std):
    got_mean, got_std = parse_normalize(spec)
    assert got_mean == pytest.approx(mean) and got_std == pytest.approx(std)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", r"empty normalize"),
        ("mean=0.5,0.5,0.5", r"lacks 'std='"),
        ("std=0.2", r"lacks 'mean='"),
        ("mean=0.5,abc,std=0.2", r"'abc' .* is not a number"),
        ("mean=0.5,std=0", r"std must be > 0"),
        ("mean=0.5,std=0.2,-0.1,0.2", r"std must be > 0"),
        ("mean=0.1,0.2,0.3,std=0.1,0.2", r"3 mean values but 2 std values"),
        ("avg=0.5,std=0.2", r"unknown normalize key 'avg'"),
        ("0.5,mean=0.5,std=0.2", r"must start with 'mean=' or 'std='"),
        ("mean=0.5,mean=0.4,std=0.2", r"gives 'mean' twice"),
        ("mean=,std=0.2", r"no values for 'mean'"),
        ("mean=nan,std=0.2", r"finite"),
        ("cifar10", r"must start with 'mean=' or 'std='"),
    ],
)
def test_parse_normalize_rejects(spec, match):
    with pytest.raises(UserError, match=match):
        parse_normalize(spec)


# ------------------------------------------------------------------------------------ LogitsOutput

_X = torch.arange(6, dtype=torch.float32).view(2, 3)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: x, id="tensor"),
        pytest.param(lambda x: {"out": x, "aux": x * 0}, id="dict-out"),
        pytest.param(lambda x: {"logits": x}, id="dict-logits"),
        pytest.param(lambda x: (x, x * 0), id="tuple"),
        pytest.param(lambda x: [x], id="list"),
        pytest.param(lambda x: ((x, None), 1), id="nested-tuple"),
        # torchvision's GoogLeNet/Inception style: .logits is used even when it is not element 0.
        pytest.param(
            lambda x: namedtuple("Out", ["aux", "logits"])(x * 0, x), id="namedtuple-logits"
        ),
        pytest.param(lambda x: SimpleNamespace(logits=x, hidden=None), id="object-logits"),
    ],
)
def test_logits_output_unwraps(make):
    out = LogitsOutput(_Returns(make))(_X)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, _X)


def test_logits_output_hf_style_dict_with_logits_attribute():
    class ModelOutput(dict):  # Hugging Face outputs are dicts that also expose keys as attributes
        @property
        def logits(self):
            return self["logits"]

    out = LogitsOutput(_Returns(lambda x: ModelOutput(loss=None, logits=x + 1)))(_X)
    assert torch.equal(out, _X + 1)


def test_logits_output_errors_name_what_was_returned():
    with pytest.raises(UserError, match=r"dict without an 'out' or 'logits' entry \(keys: 'aux', 'feat'\)"):
        LogitsOutput(_Returns(lambda x: {"aux": x, "feat": x}))(_X)
    with pytest.raises(UserError, match=r"returned str; expected a logits tensor"):
        LogitsOutput(_Returns(lambda x: "nope"))(_X)
    with pytest.raises(UserError, match=r"returned tuple"):
        LogitsOutput(_Returns(lambda x: ()))(_X)


# ----------------------------------------------------------------------------------------- prepare


def test_prepare_wraps_and_normalizes():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    plain = prepare(net)
    assert isinstance(plain, LogitsOutput) and plain.model is net
    assert torch.equal(plain(x), net(x))

    wrapped = prepare(net, normalize=([0.5, 0.4, 0.3], [0.2, 0.2, 0.2]))
    assert isinstance(wrapped, LogitsOutput) and isinstance(wrapped.model, Normalize)
    manual = net((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    assert torch.allclose(wrapped(x), manual, atol=1e-6)


def test_prepare_does_not_stack_logits_output():
    net = nn.Identity()
    once = prepare(net)
    assert prepare(once) is once
    twice = prepare(once, normalize=([0.5], [0.5]))
    assert isinstance(twice.model, Normalize) and twice.model.model is net


def test_prepare_rejects_non_modules():
    with pytest.raises(UserError, match=r"expected a torch.nn.Module, got function"):
        prepare(lambda x: x)  # type: ignore[arg-type]
