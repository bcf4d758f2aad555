"""The shipped models keep the numbers they were released with (the foundation's "done when")."""

from __future__ import annotations

import pytest
import torch

from robustaudit.attacks.gradient import PGD
from robustaudit.core.threat import ThreatModel


@pytest.mark.slow
def test_pgdat_keeps_30_points_more_than_standard_under_pgd50x5(digits_cnn, digits_cnn_pgdat):
    from robustaudit.data.digits import digits_split

    data = digits_split("test")
    x, y = data.load(range(len(data)))
    attack = PGD(steps=50, restarts=5)
    acc = {}
    for name, model in (("std", digits_cnn), ("at", digits_cnn_pgdat)):
        adv = attack(model, x, y, ThreatModel("linf", 0.2), seed=0)
        with torch.no_grad():
            acc[name] = (model(adv).argmax(1) == y).float().mean().item()
    assert acc["at"] >= acc["std"] + 0.30, acc
    assert acc["at"] == pytest.approx(0.55, abs=0.05) and acc["std"] < 0.05


def test_clean_accuracy_of_shipped_models(digits_cnn, digits_cnn_pgdat):
    from robustaudit.data.digits import digits_split
    from robustaudit.models.catalog import get_card

    data = digits_split("test")
    x, y = data.load(range(len(data)))
    for name, model in (("digits-cnn", digits_cnn), ("digits-cnn-pgdat", digits_cnn_pgdat)):
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(get_card(name).reported["clean_accuracy"], abs=1e-3)
        assert acc > 0.97


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    from robustaudit.core.errors import UserError
    from robustaudit.models import catalog

    src = catalog.WEIGHTS_DIR / "digits-cnn.pt"
    bad = tmp_path / "digits-cnn.pt"
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(catalog, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UserError, match="sha256"):
        catalog.create_model("digits-cnn")
