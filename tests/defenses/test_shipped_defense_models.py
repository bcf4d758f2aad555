"""The shipped TRADES and label-smoothing digits models keep the numbers they were released with."""

from __future__ import annotations

import pytest
import torch

from robustaudit.attacks.gradient import PGD
from robustaudit.core.threat import ThreatModel


@pytest.fixture(scope="module")
def test_split():
    from robustaudit.data.digits import digits_split

    data = digits_split("test")
    return data.load(range(len(data)))


@pytest.mark.parametrize("name", ["digits-cnn-trades", "digits-cnn-ls"])
def test_clean_accuracy_matches_the_manifest(name, test_split):
    from robustaudit.models.catalog import create_model, get_card

    x, y = test_split
    model = create_model(name)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(get_card(name).reported["clean_accuracy"], abs=1e-3)
    assert acc > 0.97


@pytest.mark.slow
def test_trades_keeps_its_pgd50x5_robustness(test_split):
    """Released with 0.677 under PGD-50x5 at Linf 0.2 (PGD-AT: 0.549, standard: 0.003)."""
    from robustaudit.models.catalog import create_model

    torch.set_num_threads(1)
    x, y = test_split
    model = create_model("digits-cnn-trades")
    adv = PGD(steps=50, restarts=5)(model, x, y, ThreatModel("linf", 0.2), seed=1)
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).float().mean().item()
    assert robust == pytest.approx(0.6769, abs=1e-3)
