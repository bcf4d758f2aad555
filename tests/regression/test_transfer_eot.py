"""Adaptive and transfer attacks do what they are for, and our BIM / MI-FGSM match torchattacks.

* BIM and MI-FGSM against torchattacks' implementations, per sample (paired, as in test_crosscheck);
* EOT breaks a randomized model at least as well as plain PGD, and is reproducible given the seed;
* BPDA breaks a model whose quantizing front end zeroes the gradients, where plain PGD cannot;
* a transfer attack is weaker than white-box on another model and equal to it on the surrogate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustaudit.attacks.gradient import BIM, MIFGSM, PGD
from robustaudit.attacks.registry import from_spec
from robustaudit.attacks.transfer import Transfer
from robustaudit.attacks.wrappers import EOT, Expectation
from robustaudit.core.threat import ThreatModel

torchattacks = pytest.importorskip("torchattacks")
from test_crosscheck import assert_not_weaker  # noqa: E402 - same folder; needs foolbox/torchattacks


@pytest.fixture(scope="module")
def correct(digits_cnn):
    """Test samples digits-cnn gets right (the ones an audit attacks): x (N, 1, 8, 8), y (N,)."""
    from robustaudit.data.digits import digits_split

    x, y = digits_split("test").load(range(96))
    with torch.no_grad():
        keep = digits_cnn(x).argmax(1) == y
    return x[keep], y[keep]


def _robust(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(1) == y


# ------------------------------------------------------------------------------ vs torchattacks
def test_bim_not_weaker_than_torchattacks(digits_cnn, correct):
    x, y = correct
    eps = 0.1  # mid-curve (about 70% robust), where a weaker attack would show
    ours = _robust(digits_cnn, BIM()(digits_cnn, x, y, ThreatModel("linf", eps)), y)
    ref = _robust(digits_cnn, torchattacks.BIM(digits_cnn, eps=eps, alpha=1.25 * eps / 10, steps=10)(x, y), y)
    assert_not_weaker(ours, ref)  # measured: the same 0.69 robust, per sample (b = c = 0)
    assert 0.3 < ours.float().mean() < 0.9


def test_mifgsm_not_weaker_than_torchattacks(digits_cnn, correct):
    x, y = correct
    eps = 0.1
    ours = _robust(digits_cnn, MIFGSM()(digits_cnn, x, y, ThreatModel("linf", eps)), y)
    ref = _robust(digits_cnn, torchattacks.MIFGSM(digits_cnn, eps=eps, alpha=eps / 10, steps=10, decay=1.0)(x, y), y)
    assert_not_weaker(ours, ref)  # measured: the same 0.72 robust, per sample (b = c = 0)
    assert 0.3 < ours.float().mean() < 0.9


# ------------------------------------------------------------------------------------------- EOT
class Noisy(nn.Module):
    """digits-cnn seeing its input plus Gaussian noise (sigma 0.1) on every forward pass, eval mode included."""

    def __init__(self, net: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


def test_eot_breaks_a_randomized_model_at_least_as_well_as_pgd(digits_cnn, correct):
    x, y = correct[0][:48], correct[1][:48]
    noisy = Noisy(digits_cnn)
    threat = ThreatModel("linf", 0.15)
    torch.manual_seed(0)
    plain = PGD(steps=10)(noisy, x, y, threat)
    torch.manual_seed(0)
    eot = EOT(PGD(steps=10), k=10)(noisy, x, y, threat)
    # judge on the expected prediction (mean logits over 64 draws), the same draws for both
    judge = Expectation(noisy, 64)
    torch.manual_seed(1)
    robust_plain = _robust(judge, plain, y)
    torch.manual_seed(1)
    robust_eot = _robust(judge, eot, y)
    assert_not_weaker(robust_eot, robust_plain)
    # measured on these 48: plain PGD 0.69 robust, EOT 0.56 (EOT alone broke 8, PGD alone 2)
    assert robust_eot.sum() < robust_plain.sum()
    torch.manual_seed(0)
    again = EOT(PGD(steps=10), k=10)(noisy, x, y, threat)
    assert torch.equal(eot, again)  # the model's noise seeded the same: the same result


# ------------------------------------------------------------------------------------------ BPDA
class Quantize(nn.Module):
    """Round each pixel to one of 4 levels: torch.round has zero gradient almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 3) / 3


class Defended(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.preprocess = Quantize()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.preprocess(x))


def test_bpda_breaks_gradient_masking_by_quantization(digits_cnn, correct):
    x, y = correct[0][:48], correct[1][:48]
    model = Defended(digits_cnn)
    threat = ThreatModel("linf", 0.3)
    clean = _robust(model, x, y).float().mean().item()
    plain = _robust(model, PGD(steps=10)(model, x, y, threat), y).float().mean().item()
    bpda = _robust(model, from_spec("bpda(pgd:steps=10)")(model, x, y, threat), y).float().mean().item()
    # measured: clean 1.0, plain PGD 0.98 (only its random start moves), BPDA 0.0
    assert clean > 0.95
    assert plain > clean - 0.1, "the gradients are masked: plain PGD should barely move"
    assert bpda < clean - 0.3 and bpda < 0.2


# -------------------------------------------------------------------------------------- transfer
def test_transfer_is_weaker_than_white_box_on_another_model(digits_cnn, digits_cnn_pgdat, correct):
    x, y = correct
    threat = ThreatModel("linf", 0.2)
    recorded: list[int] = []
    handle = digits_cnn_pgdat.register_forward_hook(lambda m, i, o: recorded.append(1))
    try:
        transfer = Transfer(PGD(steps=10), [digits_cnn])(digits_cnn_pgdat, x, y, threat)
    finally:
        handle.remove()
    assert not recorded, "a transfer attack must never query the target"
    white = PGD(steps=10)(digits_cnn_pgdat, x, y, threat)
    robust_transfer = _robust(digits_cnn_pgdat, transfer, y)
    robust_white = _robust(digits_cnn_pgdat, white, y)
    # measured on the 96: transfer 0.97, white-box 0.66 robust on the adversarially trained model
    assert robust_transfer.float().mean() > robust_white.float().mean() + 0.15
    assert_not_weaker(robust_white, robust_transfer)


def test_transfer_on_its_own_surrogate_is_white_box(digits_cnn, correct):
    x, y = correct
    threat = ThreatModel("linf", 0.15)
    transfer = Transfer(PGD(steps=10), [digits_cnn])(digits_cnn, x, y, threat)
    assert torch.equal(transfer, PGD(steps=10)(digits_cnn, x, y, threat))


def test_input_diversity_is_keyed_per_sample(digits_cnn, digits_cnn_pgdat, correct):
    x, y = correct[0][:40], correct[1][:40]
    threat = ThreatModel("linf", 0.2)
    attack = Transfer(MIFGSM(), {"digits-cnn": digits_cnn}, input_diversity=0.5)
    assert attack.randomized and attack.settings()["surrogates"] == ["digits-cnn"]
    a = attack(digits_cnn_pgdat, x, y, threat, seed=1)
    assert torch.equal(a, attack(digits_cnn_pgdat, x, y, threat, seed=1))
    assert not torch.equal(a, attack(digits_cnn_pgdat, x, y, threat, seed=2))
    assert not torch.equal(a, Transfer(MIFGSM(), [digits_cnn])(digits_cnn_pgdat, x, y, threat, seed=1))
    # a sample's draws follow its id, not its batch
    ids = torch.arange(len(x))
    parts = torch.cat([attack(digits_cnn_pgdat, x[i : i + 7], y[i : i + 7], threat, ids=ids[i : i + 7], seed=1)
                       for i in range(0, len(x), 7)])
    assert torch.allclose(a, parts, atol=1e-5)
    # on 8x8 digits, shrinking by up to 2 pixels is a strong transformation: the examples fool the
    # undiversified surrogate far less (measured 0.80 robust, 0.07 without DI) but still some
    assert _robust(digits_cnn, a, y).float().mean() < 0.95
