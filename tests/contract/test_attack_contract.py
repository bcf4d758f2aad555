"""The Attack contract, tested once for every registered attack, parametrized by what it promises.

Fixed-eps attacks: result inside the eps-ball and the bounds; eps = 0 returns x; the model's mode,
device and dtype untouched; same seed, same result; results independent of batch size; accuracy
drops on digits-cnn; never a non-adversarial result when an earlier query was adversarial.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustaudit.attacks import AttackKind
from robustaudit.attacks.registry import attack_class, get, names
from robustaudit.core.errors import UserError
from robustaudit.core.norms import lp_norm
from robustaudit.core.threat import ThreatModel

# fast settings per attack for the contract (the defaults are what users get)
FAST = {
    "pgd": {"steps": 10},
    "apgd": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 2},
    "square": {"queries": 100},
    "autoattack": {"steps": 10, "queries": 100, "n_target_classes": 2},
    "fast": {"steps": 10, "targets": 2, "target_steps": 5, "screen_queries": 100, "fallback_queries": 100},
}
EPS = {"linf": 0.15, "l2": 1.0, "l1": 4.0}


def _by_kind(*kinds: AttackKind) -> list[str]:
    return [n for n in names() if attack_class(n).kind in kinds]


# score-based attacks (Square) keep every fixed-eps promise, without gradients
FIXED = _by_kind(AttackKind.FIXED_EPS, AttackKind.SCORE_BASED)
FIXED_NORMS = [(n, norm) for n in FIXED for norm in attack_class(n).norms if norm in EPS]


def _make(name: str):
    return get(name, **FAST.get(name, {}))


class Recorder(nn.Module):
    """Wraps a model and keeps every input it sees with its predictions (to audit the attack's queries)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.queries: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.queries.append((x.detach().clone(), out.detach().argmax(1)))
        return out


@pytest.mark.parametrize("name,norm", FIXED_NORMS)
def test_result_in_ball_and_bounds(name, norm, digits_cnn, digits_test):
    x, y = digits_test
    threat = ThreatModel(norm, EPS[norm])
    adv = _make(name)(digits_cnn, x, y, threat)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.all(lp_norm(adv - x, norm) <= EPS[norm] * (1 + 1e-5))


@pytest.mark.parametrize("name", FIXED)
def test_eps_zero_returns_input(name, digits_cnn, digits_test):
    x, y = digits_test
    adv = _make(name)(digits_cnn, x, y, ThreatModel("linf", 0.0))
    assert torch.equal(adv, x)


@pytest.mark.parametrize("name", FIXED)
def test_accuracy_drops_on_standard_model(name, digits_cnn, digits_test):
    x, y = digits_test
    with torch.no_grad():
        clean = (digits_cnn(x).argmax(1) == y).float().mean().item()
        adv = _make(name)(digits_cnn, x, y, ThreatModel("linf", 0.2))
        robust = (digits_cnn(adv).argmax(1) == y).float().mean().item()
    assert clean > 0.95
    assert robust < clean - 0.4, f"{name}: clean {clean:.3f}, robust {robust:.3f}"


@pytest.mark.parametrize("name", FIXED)
def test_model_state_untouched(name, digits_test):
    from robustaudit.models.zoo.digits import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN().double()
    model.train()
    model.classifier.eval()  # a mixed state must come back exactly as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits_test
    adv = _make(name)(model, x.double(), y, ThreatModel("linf", 0.1))
    assert adv.dtype == torch.float64
    assert model.training and model.features.training and not model.classifier.training
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", FIXED)
def test_same_seed_same_result(name, digits_cnn, digits_test):
    x, y = digits_test
    threat = ThreatModel("linf", 0.1)
    a = _make(name)(digits_cnn, x, y, threat, seed=3)
    b = _make(name)(digits_cnn, x, y, threat, seed=3)
    assert torch.equal(a, b)
    if attack_class(name).randomized:
        c = _make(name)(digits_cnn, x, y, threat, seed=4)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", [n for n in FIXED if attack_class(n).batch_independent])
def test_independent_of_batch_size(name, digits_cnn, digits_test):
    x, y = digits_test
    ids = torch.arange(100, 100 + len(x))
    threat = ThreatModel("linf", 0.1)
    attack = _make(name)
    whole = attack(digits_cnn, x, y, threat, ids=ids)
    parts = torch.cat([attack(digits_cnn, x[i : i + 7], y[i : i + 7], threat, ids=ids[i : i + 7])
                       for i in range(0, len(x), 7)])
    # batched CPU kernels may differ in the last bits; the outcome per sample must not
    with torch.no_grad():
        same = (digits_cnn(whole).argmax(1) == digits_cnn(parts).argmax(1)).float().mean().item()
    assert same >= 0.98
    assert torch.allclose(whole, parts, atol=1e-4) or same == 1.0


@pytest.mark.parametrize("name", FIXED)
def test_never_drops_an_adversarial_iterate(name, digits_cnn, digits_test):
    x, y = digits_test
    rec = Recorder(digits_cnn)
    attack = get(name, **{**FAST.get(name, {}), **({"early_stop": False, "step_size": 0.2} if name == "pgd" else {})})
    adv = attack(rec, x, y, ThreatModel("linf", 0.2))
    with torch.no_grad():
        final_wrong = digits_cnn(adv).argmax(1) != y
    flat = x.reshape(len(x), -1)
    ever_wrong = torch.zeros(len(x), dtype=torch.bool)
    for q, pred in rec.queries:
        owner = torch.cdist(q.reshape(len(q), -1), flat).argmin(1)  # which sample each query row belongs to
        ever_wrong[owner[pred != y[owner]]] = True
    assert torch.all(final_wrong[ever_wrong]), "a sample seen adversarial during the attack was returned robust"


@pytest.mark.parametrize("name", FIXED)
def test_unsupported_norm_is_a_user_error(name, digits_cnn, digits_test):
    x, y = digits_test
    unsupported = [n for n in ("l0", "patch") if n not in attack_class(name).norms]
    with pytest.raises(UserError, match="supports norms"):
        _make(name)(digits_cnn, x, y, ThreatModel(unsupported[0], 1.0))


# ------------------------------------------------------------------ universal (two-phase) attacks
# fitted on a tiny training set, then the fitted attack keeps the fixed-eps promises; attacks whose only
# norm is not an Lp ball (the patch) have their own tests (tests/physical)
FIT = {"atn": {"epochs": 1, "width": 8}, "advgan": {"epochs": 1, "width": 8}}
UNIVERSAL = _by_kind(AttackKind.UNIVERSAL)
UNIVERSAL_NORMS = [(n, norm) for n in UNIVERSAL for norm in attack_class(n).norms if norm in EPS]


def _fit(name: str, model: nn.Module, threat: ThreatModel, seed: int = 0):
    from robustaudit.data.base import TensorData
    from robustaudit.data.digits import digits_split

    x, y = digits_split("train").load(range(64))
    return get(name, **FIT.get(name, {})).fit(model, TensorData(x, y, name="digits", num_classes=10), threat, seed=seed)


@pytest.mark.parametrize("name", UNIVERSAL)
def test_universal_attack_refuses_to_run_unfitted(name, digits_cnn, digits_test):
    x, y = digits_test
    norm = attack_class(name).norms[0]
    with pytest.raises(UserError, match="is universal: it is fitted on training data as a column of its own"):
        get(name, **FIT.get(name, {}))(digits_cnn, x, y, ThreatModel(norm, EPS.get(norm, 0.1)))


@pytest.mark.parametrize("name,norm", UNIVERSAL_NORMS)
def test_fitted_universal_attack_keeps_the_fixed_eps_contract(name, norm, digits_cnn, digits_test):
    from robustaudit.models.zoo.digits import DigitsCNN

    x, y = digits_test
    threat = ThreatModel(norm, EPS[norm])
    torch.manual_seed(0)
    model = DigitsCNN()
    model.train()
    model.classifier.eval()  # a mixed state must come back exactly as it was, after the fit and the attack
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fitted = _fit(name, model, threat, seed=3)
    ids = torch.arange(100, 100 + len(x))
    adv = fitted(model, x, y, threat, ids=ids)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert adv.min() >= 0 and adv.max() <= 1 and torch.all(lp_norm(adv - x, norm) <= EPS[norm] * (1 + 1e-5))
    assert torch.equal(fitted(model, x, y, ThreatModel(norm, 0.0)), x)
    assert torch.equal(_fit(name, model, threat, seed=3)(model, x, y, threat, ids=ids), adv)  # same seed
    parts = torch.cat([fitted(model, x[i : i + 7], y[i : i + 7], threat, ids=ids[i : i + 7]) for i in range(0, len(x), 7)])
    assert torch.allclose(parts, adv, atol=1e-5)
    assert fitted(model, x.double(), y, threat).dtype == torch.float64
    assert model.training and model.features.training and not model.classifier.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_attack_has_a_kind_with_a_contract():
    # minimal-norm attacks: tests/contract/test_minimal_norm_contract.py
    covered = {AttackKind.FIXED_EPS, AttackKind.SCORE_BASED, AttackKind.MINIMAL_NORM, AttackKind.UNIVERSAL}
    for n in names():
        assert attack_class(n).kind in covered, f"{n}: add the contract of kind {attack_class(n).kind}"
