"""BIM, ILLC, MI-FGSM, the adaptive-attack wrappers (EOT, BPDA), the foolbox bridge and nested specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustaudit.attacks import AttackKind
from robustaudit.attacks.gradient import BIM, ILLC, MIFGSM, PGD
from robustaudit.attacks.registry import (
    WRAPPERS,
    attack_class,
    from_spec,
    get,
    names,
    parse_nested,
    parse_spec,
    valid_settings,
)
from robustaudit.attacks.wrappers import BPDA, EOT, BPDAFunction, Expectation
from robustaudit.core.errors import UserError
from robustaudit.core.norms import lp_norm
from robustaudit.core.threat import ThreatModel


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _least_likely(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).scatter(1, y[:, None], float("inf")).argmin(1)


# ------------------------------------------------------------------------------ BIM, ILLC, MI-FGSM
@pytest.mark.parametrize("cls", [BIM, ILLC, MIFGSM])
@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.5)])
def test_iterative_variants_in_ball_and_break_digits_cnn(cls, norm, eps, digits_cnn, digits_test):
    x, y = digits_test
    adv = cls()(digits_cnn, x, y, ThreatModel(norm, eps))
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert torch.all(lp_norm(adv - x, norm) <= eps * (1 + 1e-5))
    clean, robust = _acc(digits_cnn, x, y), _acc(digits_cnn, adv, y)
    assert clean > 0.95
    # measured robust: linf 0.2 -> bim 0.04, illc 0.46, mifgsm 0.05 (ILLC aims at one class, not any
    # wrong one); l2 1.5 -> 0.0, 0.04, 0.02
    assert robust < (0.6 if cls is ILLC else 0.3), f"{cls.name} {norm}: robust {robust:.3f}"


def test_bim_defaults_follow_the_paper_budget():
    # total travel 1.25 * eps over 10 steps, no random start, one restart
    assert BIM().alpha(0.2) == pytest.approx(0.025)
    assert BIM(steps=20).alpha(0.2) == pytest.approx(0.0125)
    assert BIM(step_size=0.01).alpha(0.2) == 0.01
    assert MIFGSM().alpha(0.2) == pytest.approx(0.02)  # Dong et al.: eps / steps
    b = BIM()
    assert (b.restarts, b.random_start, b.steps) == (1, False, 10)
    assert "restarts" not in b.settings() and "random_start" not in b.settings()
    with pytest.raises(UserError, match="bim: steps"):
        BIM(steps=0)
    with pytest.raises(UserError, match="mifgsm: decay"):
        MIFGSM(decay=-1.0)


def test_illc_reaches_the_least_likely_class(digits_cnn, digits_test):
    x, y = digits_test
    adv = ILLC()(digits_cnn, x, y, ThreatModel("linf", 0.3))
    with torch.no_grad():
        pred = digits_cnn(adv).argmax(1)
    hit = (pred == _least_likely(digits_cnn, x, y)).float().mean().item()
    assert hit > 0.55, f"least-likely class reached on {hit:.3f}"  # measured 0.61 on these 96
    assert (pred == y).float().mean().item() < 0.05  # success counted as misclassification: 0.02


def test_illc_uses_explicit_targets(digits_cnn, digits_test):
    x, y = digits_test
    targets = (y + 1) % 10
    adv = ILLC(rel_step_size=0.2)(digits_cnn, x, y, ThreatModel("linf", 0.3), targets=targets)
    with torch.no_grad():
        pred = digits_cnn(adv).argmax(1)
    assert (pred == targets).float().mean().item() > 0.8


def test_illc_keeps_a_misclassified_iterate_when_the_target_is_out_of_reach(digits_cnn, digits_test):
    x, y = digits_test
    queries: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = digits_cnn

        def forward(self, t):
            out = self.net(t)
            queries.append((t.detach().clone(), out.detach().argmax(1)))
            return out

    adv = ILLC()(Recorder(), x, y, ThreatModel("linf", 0.2))
    with torch.no_grad():
        pred = digits_cnn(adv).argmax(1)
    ever_wrong = torch.zeros(len(x), dtype=torch.bool)
    for q, p in queries:
        owner = torch.cdist(q.reshape(len(q), -1), x.reshape(len(x), -1)).argmin(1)
        ever_wrong[owner[p != y[owner]]] = True
    # ILLC stops only at y_LL (reached by 5% at this eps), yet no sample seen misclassified on the
    # way is returned correct (measured: 54% misclassified)
    assert (pred == _least_likely(digits_cnn, x, y)).float().mean().item() < 0.2
    assert torch.all(pred[ever_wrong] != y[ever_wrong])
    assert ever_wrong.float().mean().item() > 0.4


def test_mifgsm_without_momentum_is_bim(digits_cnn, digits_test):
    x, y = digits_test
    threat = ThreatModel("linf", 0.1)
    # decay 0: the direction is sign(grad / |grad|_1) = sign(grad), BIM's step
    a = MIFGSM(decay=0.0, step_size=0.0125)(digits_cnn, x, y, threat)
    b = BIM(step_size=0.0125)(digits_cnn, x, y, threat)
    assert torch.equal(a, b)
    c = MIFGSM(step_size=0.0125)(digits_cnn, x, y, threat)
    assert not torch.equal(a, c)  # momentum changes the path


def test_mifgsm_momentum_survives_compaction(digits_cnn, digits_test):
    # samples leave the active set every 2 steps: the momentum rows must follow their samples
    x, y = digits_test
    threat = ThreatModel("linf", 0.15)
    attack = MIFGSM(steps=12, compact_every=2)
    whole = attack(digits_cnn, x, y, threat)
    one_by_one = torch.cat([attack(digits_cnn, x[i : i + 1], y[i : i + 1], threat) for i in range(24)])
    assert torch.allclose(whole[:24], one_by_one, atol=1e-5)
    no_stop = MIFGSM(steps=12, early_stop=False)(digits_cnn, x, y, threat)
    assert _acc(digits_cnn, whole, y) <= _acc(digits_cnn, no_stop, y) + 0.03


# ------------------------------------------------------------------------------------------- EOT
def test_expectation_is_the_mean_of_k_passes():
    torch.manual_seed(0)
    calls: list[int] = []

    class Counter(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x * len(calls)

    out = Expectation(Counter(), 4)(torch.ones(2, 3))
    assert torch.allclose(out, torch.full((2, 3), 2.5))  # (1 + 2 + 3 + 4) / 4
    assert len(calls) == 4


def test_eot_adopts_the_wrapped_attack():
    eot = EOT(PGD(steps=3), k=3)
    assert eot.kind is AttackKind.FIXED_EPS and eot.norms == PGD.norms and eot.randomized
    assert repr(eot).startswith("EOT(attack=PGD(steps=3") and eot.settings()["k"] == 3
    with pytest.raises(UserError, match="k must be"):
        EOT(PGD(), k=0)
    with pytest.raises(UserError, match="wraps an attack"):
        EOT("pgd")  # type: ignore[arg-type]


def test_eot_on_a_deterministic_model_is_the_plain_attack(digits_cnn, digits_test):
    x, y = digits_test
    threat = ThreatModel("linf", 0.1)
    a = EOT(BIM(), k=2)(digits_cnn, x, y, threat)
    b = BIM()(digits_cnn, x, y, threat)
    assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------ BPDA
class Quantize(nn.Module):
    def forward(self, x):
        return torch.round(x * 3) / 3


class Defended(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.preprocess = Quantize()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.preprocess(x))


def test_bpda_function_forward_value_backward_substitute():
    x = torch.tensor([0.1, 0.4, 0.9], requires_grad=True)
    out = BPDAFunction.apply(x, torch.round(x * 3) / 3, None)
    assert torch.allclose(out, torch.tensor([0.0, 1 / 3, 1.0]))
    (g,) = torch.autograd.grad((out * torch.tensor([1.0, 2.0, 3.0])).sum(), x)
    assert torch.equal(g, torch.tensor([1.0, 2.0, 3.0]))  # identity backward
    out = BPDAFunction.apply(x, torch.round(x * 3) / 3, lambda t: t**2)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(g, 2 * x.detach())  # the substitute's gradient


def test_bpda_finds_preprocess_through_robustaudit_wrappers(digits_cnn, digits_test):
    from robustaudit.models.wrappers import prepare

    x, y = digits_test
    wrapped = prepare(Defended(digits_cnn), normalize=([0.0], [1.0]))  # LogitsOutput(Normalize(...))
    adv = BPDA(BIM())(wrapped, x[:32], y[:32], ThreatModel("linf", 0.3))
    assert _acc(wrapped, adv, y[:32]) < 0.2
    assert not Defended(digits_cnn).preprocess._forward_hooks  # nothing left behind


def test_bpda_user_errors(digits_cnn, digits_test):
    x, y = digits_test
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(UserError, match="^bpda: the audited model has no 'preprocess' attribute; give"):
        BPDA(BIM())(digits_cnn, x[:4], y[:4], threat)
    from robustaudit.attacks.uap import UAP

    # a universal attack inside another: the CLI's way out first, the Python one after
    with pytest.raises(UserError, match=r"^attack 'uap' is universal: it is fitted on training data as a column "
                                        r"of its own \(--attack uap\), not run inside another attack"):
        UAP()(digits_cnn, x[:4], y[:4], threat)

    class Skips(Defended):
        def forward(self, x):  # never calls its preprocess
            return self.classifier(x)

    with pytest.raises(UserError, match="never called its preprocess"):
        BPDA(BIM())(Skips(digits_cnn), x[:4], y[:4], threat)
    with pytest.raises(UserError, match="not part of the attacked model"):
        BPDA(BIM(), preprocess=Quantize())(Defended(digits_cnn), x[:4], y[:4], threat)
    with pytest.raises(UserError, match="must be the nn.Module"):
        BPDA(BIM(), preprocess=lambda t: t)  # type: ignore[arg-type]
    model = Defended(digits_cnn)
    # an explicit module inside the model works too, and its hook is removed afterwards
    adv = BPDA(BIM(), preprocess=model.preprocess)(model, x[:16], y[:16], ThreatModel("linf", 0.3))
    assert _acc(model, adv, y[:16]) < 0.3 and not model.preprocess._forward_hooks


# ------------------------------------------------------------------------------------- specs
def test_parse_nested():
    assert parse_nested("eot:k=20(pgd:steps=50)") == ("eot", {"k": 20}, "pgd:steps=50")
    assert parse_nested("bpda(pgd)") == ("bpda", {}, "pgd")
    assert parse_nested(" eot:k=10( bpda(apgd) ) ") == ("eot", {"k": 10}, "bpda(apgd)")
    assert parse_nested("transfer:surrogate=a+b,di=0.5(mifgsm:steps=3,decay=0.5)") == (
        "transfer", {"surrogate": "a+b", "di": 0.5}, "mifgsm:steps=3,decay=0.5")
    assert parse_nested("foolbox:L2CarliniWagnerAttack:steps=200,stepsize=0.01") == (
        "foolbox:L2CarliniWagnerAttack", {"steps": 200, "stepsize": 0.01}, None)
    assert parse_nested("pgd:eps_step=8/255") == ("pgd", {"eps_step": pytest.approx(8 / 255)}, None)
    # the flat form keeps the wrapped spec under "attack" (so a column label stays distinct)
    assert parse_spec("eot:k=5(pgd)") == ("eot", {"k": 5, "attack": "pgd"})
    assert parse_spec("pgd:steps=5") == ("pgd", {"steps": 5})
    for bad, msg in [("eot(pgd", "unbalanced"), ("eot(pgd))", "unexpected"), ("pgd)", "unbalanced"),
                     ("eot()", "empty wrapped"), ("eot(pgd):k=3", "settings go before"), ("(pgd)", "empty attack")]:
        with pytest.raises(UserError, match=msg):
            parse_nested(bad)


def test_from_spec_builds_nested_wrappers():
    attack = from_spec("eot:k=5(bpda(pgd:steps=3))")
    assert isinstance(attack, EOT) and attack.k == 5
    assert isinstance(attack.attack, BPDA) and isinstance(attack.attack.attack, PGD)
    assert attack.attack.attack.steps == 3
    assert attack.kind is AttackKind.FIXED_EPS
    for bad, msg in [("eot", "wraps another attack"), ("eot:q=2(pgd)", "no setting 'q'"),
                     ("pgd(fgsm)", "does not wrap"), ("eto(pgd)", "did you mean 'eot'"),
                     ("bpda:preprocess=x(pgd)", "no setting"), ("transfer:surrogate=digits-cnn(pgd)", "resolved"),
                     ("eot(pgd:stpes=3)", "did you mean 'steps'")]:
        with pytest.raises(UserError, match=msg):
            from_spec(bad)
    with pytest.raises(UserError, match="write it as a spec"):
        get("eot", k=3)


def test_transfer_spec_resolves_models_by_name():
    seen: list[str] = []

    def resolve(name: str) -> nn.Module:
        seen.append(name)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    attack = from_spec("transfer:surrogate=a+b,di=0.5(mifgsm:steps=3)", resolve_model=resolve)
    assert seen == ["a", "b"] and attack.kind is AttackKind.TRANSFER
    assert attack.settings()["surrogates"] == ["a", "b"] and attack.input_diversity == 0.5
    assert attack.attack.steps == 3
    with pytest.raises(UserError, match="surrogate=MODEL"):
        from_spec("transfer:di=0.5(pgd)", resolve_model=resolve)


def test_every_listed_name_has_a_class():
    assert set(WRAPPERS) <= set(names(wrappers=True)) and not set(WRAPPERS) & set(names())
    for name in ("bim", "illc", "mifgsm", *WRAPPERS):
        cls = attack_class(name)
        assert cls.__doc__ and valid_settings(cls) is not None
    assert valid_settings(attack_class("eot")) == ["k", "judge"]
    assert valid_settings(attack_class("transfer")) == ["surrogate", "di"]


# ---------------------------------------------------------------------------------- foolbox bridge
foolbox_required = pytest.mark.skipif(
    __import__("importlib").util.find_spec("foolbox") is None, reason="foolbox not installed")


@foolbox_required
def test_foolbox_fixed_eps_attack(digits_cnn, digits_test):
    x, y = digits_test
    attack = from_spec("foolbox:LinfPGD:steps=10,abs_stepsize=0.025")
    assert attack.kind is AttackKind.FIXED_EPS and attack.norms == ("linf",) and attack.name == "foolbox:LinfPGD"
    adv = attack(digits_cnn, x, y, ThreatModel("linf", 0.1))
    assert torch.all(lp_norm(adv - x, "linf") <= 0.1 + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    assert _acc(digits_cnn, adv, y) < _acc(digits_cnn, x, y) - 0.2  # measured 0.69 from 1.0
    assert torch.equal(adv, attack(digits_cnn, x, y, ThreatModel("linf", 0.1)))  # seeded
    with pytest.raises(UserError, match="supports norms linf"):
        attack(digits_cnn, x, y, ThreatModel("l2", 1.0))


@foolbox_required
def test_foolbox_minimization_attack_returns_x_where_it_fails(digits_cnn, digits_test):
    x, y = digits_test[0][:32], digits_test[1][:32]
    attack = from_spec("foolbox:L2CarliniWagnerAttack:steps=20,binary_search_steps=3")
    assert attack.kind is AttackKind.MINIMAL_NORM and attack.norms == ("l2",)
    adv = attack(digits_cnn, x, y, ThreatModel("l2", float("inf")))
    with torch.no_grad():
        broken = digits_cnn(adv).argmax(1) != y
    assert broken.float().mean() > 0.8  # measured 0.97 (median L2 3.7: 20 steps is a short C&W)
    assert torch.equal(adv[~broken], x[~broken])
    # at a finite eps, a minimal point outside the ball is no success: x comes back
    small = attack(digits_cnn, x, y, ThreatModel("l2", 0.5))
    with torch.no_grad():
        kept = digits_cnn(small).argmax(1) != y
    assert torch.equal(small[~kept], x[~kept]) and torch.all(lp_norm(small - x, "l2") <= 0.5 + 1e-5)
    assert kept.float().mean() < 0.3  # measured 0.09


@foolbox_required
def test_foolbox_decision_based_boundary_attack(digits_cnn, digits_test):
    x, y = digits_test[0][:8], digits_test[1][:8]
    attack = from_spec("foolbox:BoundaryAttack:steps=50")
    assert attack.kind is AttackKind.MINIMAL_NORM
    adv = attack(digits_cnn, x, y, ThreatModel("l2", float("inf")))
    with torch.no_grad():
        broken = digits_cnn(adv).argmax(1) != y
    assert broken.all()  # unbounded: every start is adversarial, and it stays so
    assert lp_norm(adv - x, "l2").median() < 4.0  # measured 2.7 after 50 steps


@foolbox_required
def test_foolbox_names_and_settings_are_checked():
    with pytest.raises(UserError, match="did you mean 'LinfPGD'"):
        from_spec("foolbox:LinfPDG")
    with pytest.raises(UserError, match="did you mean 'steps'.*valid: .*abs_stepsize"):
        from_spec("foolbox:LinfPGD:stpes=3")
    with pytest.raises(UserError, match="does not wrap"):
        from_spec("foolbox:LinfPGD(pgd)")
    with pytest.raises(UserError, match="needs a distance"):
        from_spec("foolbox:GaussianBlurAttack")
    assert from_spec("foolbox:GaussianBlurAttack:distance=linf").norms == ("linf",)
    assert get("foolbox:FGSM").kind is AttackKind.FIXED_EPS
    assert repr(from_spec("foolbox:LinfPGD:steps=3")) == "FoolboxAttack('LinfPGD', steps=3)"
