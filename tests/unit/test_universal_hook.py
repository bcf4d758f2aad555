"""The runner's hook for universal (two-phase) attacks: fitted once per (model, eps) on training data,
never on the audited samples; artifacts saved under ``out``; an unfitted call is refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import robustaudit
from robustaudit.attacks.base import Attack, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


class _Shift(Attack):
    """Adds one fixed perturbation to every input (what a fitted universal perturbation does)."""

    name = "shift"

    def __init__(self, *, delta: torch.Tensor) -> None:
        self.delta = delta

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        return x + self.delta.to(x.device)

    def save(self, path) -> None:
        torch.save(self.delta, path)


class _MeanSign(UniversalAttack):
    """A toy universal perturbation: eps times the sign of the mean input gradient over the train set."""

    name = "mean-sign"
    norms = ("linf",)

    def __init__(self) -> None:
        self.fitted_on: list[tuple[int, float]] = []

    def fit(self, model, train, threat, *, seed=0, task=None, device="cpu", progress=None):
        x, y = train.load(range(len(train)))
        self.fitted_on.append((len(train), threat.eps))
        x = x.to(device).requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), y.to(device))
        (grad,) = torch.autograd.grad(loss, x)
        return _Shift(delta=threat.eps * grad.mean(0, keepdim=True).sign())


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fitted_once_per_model_and_eps_on_training_data(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    attack = _MeanSign()
    test, train = _data(40, 1), _data(96, 2)
    result = robustaudit.audit(model, test, attacks=[attack], eps=[0.1, 0.3], checks="off", cost=False,
                               train_data=train, out=tmp_path, batch_size=16)
    assert attack.fitted_on == [(96, 0.1), (96, 0.3)]  # the 96 training samples, not the 40 audited
    fits = json.loads((tmp_path / "results.json").read_text())["provenance"]["fits"]
    assert [(f["attack"], f["eps"]) for f in fits] == [("mean-sign", 0.1), ("mean-sign", 0.3)]
    assert all(f["backward_passes"] == 96 for f in fits)
    delta = torch.load(tmp_path / fits[1]["artifact"])
    assert delta.abs().max().item() == pytest.approx(0.3)
    # the fitted perturbation is what the audited samples got: robust accuracy is the model's accuracy
    # on the shifted (and clipped) inputs, among the clean-correct ones
    x, y = test
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        shifted = model((x + delta).clamp(0, 1)).argmax(1) == y
    records = result.records.set_index(["attack", "eps"])
    assert records.loc[("mean-sign", 0.3), "n_robust"] == int((clean & shifted).sum())


def test_unfitted_call_and_missing_training_split_are_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = _data(4, 0)
    with pytest.raises(UserError, match=r"is universal: it is fitted on training data as a column of its own"):
        _MeanSign()(model, x, y, ThreatModel("linf", 0.1))
    with pytest.raises(UserError, match="universal attacks are fitted on a training split"):
        robustaudit.audit(model, (x, y), attacks=[_MeanSign()], eps=[0.1], checks="off", cost=False)
