"""Our attacks against reference implementations, per sample, on the same points and settings.

A robustness figure that is too high is the worst bug we can ship: ours must break at least as many
samples as foolbox's and torchattacks' PGD/FGSM, up to a small tolerance for their randomness.
"""

from __future__ import annotations

import pytest
import torch

from robustaudit.attacks.gradient import FGSM, PGD
from robustaudit.core.threat import ThreatModel

foolbox = pytest.importorskip("foolbox")
torchattacks = pytest.importorskip("torchattacks")

EPS = 0.1


@pytest.fixture(scope="module")
def setup(digits_cnn):
    from robustaudit.data.digits import digits_split

    x, y = digits_split("test").load(range(200))
    with torch.no_grad():
        keep = digits_cnn(x).argmax(1) == y
    return digits_cnn, x[keep], y[keep]


def assert_not_weaker(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Paired per-sample comparison of robust masks ``(N,)``: ours may leave robust a sample the
    reference breaks only as often as restart noise explains (McNemar: b - c within ~2 sigma + 2)."""
    b = int((ours & ~ref).sum())  # the reference is stronger here
    c = int((ref & ~ours).sum())  # we are stronger here
    assert b - c <= 2 * (b + c) ** 0.5 + 2, f"ours weaker on {b} samples, stronger on {c}"


def _robust(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) == y


def test_pgd_at_least_as_strong_as_foolbox_and_torchattacks(setup):
    model, x, y = setup
    ours = _robust(model, PGD(steps=20, step_size=EPS / 8)(model, x, y, ThreatModel("linf", EPS)), y)
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    _, fb_adv, _ = foolbox.attacks.LinfPGD(abs_stepsize=EPS / 8, steps=20)(fmodel, x, y, epsilons=EPS)
    fb = _robust(model, fb_adv, y)
    ta = _robust(model, torchattacks.PGD(model, eps=EPS, alpha=EPS / 8, steps=20)(x, y), y)
    assert_not_weaker(ours, fb)
    assert_not_weaker(ours, ta)
    assert ours.float().mean() < 0.8  # the check is not vacuous: the attack breaks samples


def test_fgsm_matches_references_exactly(setup):
    model, x, y = setup
    ours = FGSM()(model, x, y, ThreatModel("linf", EPS))
    ta = torchattacks.FGSM(model, eps=EPS)(x, y)
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    _, fb, _ = foolbox.attacks.FGSM()(fmodel, x, y, epsilons=EPS)
    # deterministic single step: the same points up to float rounding
    assert torch.allclose(ours, ta, atol=1e-6)
    assert torch.allclose(ours, fb, atol=1e-6)


def test_l2_pgd_against_foolbox(setup):
    model, x, y = setup
    eps = 0.5  # mid-curve (about 60% robust), where a weaker attack would show
    ours = _robust(model, PGD(steps=20, step_size=eps / 8)(model, x, y, ThreatModel("l2", eps)), y)
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    _, fb_adv, _ = foolbox.attacks.L2PGD(abs_stepsize=eps / 8, steps=20)(fmodel, x, y, epsilons=eps)
    fb = _robust(model, fb_adv, y)
    assert_not_weaker(ours, fb)
    assert 0.1 < ours.float().mean() < 0.9
