"""APGD / APGD-T and the Square attack: their rules checked against hand computations, their budgets
against counted model calls, their results against the threat model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from robustaudit.attacks.apgd import (
    APGD,
    APGDTargeted,
    StepSizeControl,
    checkpoints,
    dlr_loss,
    dlr_loss_targeted,
)
from robustaudit.attacks.base import AttackKind
from robustaudit.attacks.registry import get
from robustaudit.attacks.square import Square, eta_window, p_schedule, square_side
from robustaudit.core.errors import UserError
from robustaudit.core.norms import lp_norm
from robustaudit.core.threat import ThreatModel

EPS = {"linf": 0.15, "l2": 1.0}


class Counter(nn.Module):
    """Counts the rows of every forward pass and every backward pass, and keeps each query."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0
        self.queries: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_rows += x.shape[0]
        out = self.model(_Tap.apply(x, self))
        self.queries.append((x.detach().clone(), out.detach().argmax(1)))
        return out


class _Tap(torch.autograd.Function):
    """Identity whose backward counts the rows it passes on."""

    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.counter.backward_rows += grad.shape[0]
        return grad, None


class _Forbidden(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("a score-based attack took a gradient")


class NoGradients(nn.Module):
    """A model whose backward raises, and which records whether autograd was on at any query."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_enabled_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled_calls += int(torch.is_grad_enabled())
        return self.model(_Forbidden.apply(x))


# ---------------------------------------------------------------------------------------- APGD rules
def test_checkpoints_follow_the_papers_formula():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j * N_iter)
    p = [0.0, 0.22]
    while True:
        nxt = round(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06), 10)
        if nxt > 1:
            break
        p.append(nxt)
    assert p == [0.0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99]
    by_hand = [math.ceil(round(pj * 100, 6)) for pj in p[1:]]
    assert by_hand == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(100) == by_hand
    # another budget: 0.41 * 50 = 20.5 -> 21, 0.57 * 50 = 28.5 -> 29, ...
    assert (
        checkpoints(50) == [math.ceil(round(pj * 50, 6)) for pj in p[1:]] == [11, 21, 29, 35, 40, 44, 47, 50]
    )
    # tiny budgets merge coinciding checkpoints
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def _run_window(histories: torch.Tensor, reduced_last: torch.Tensor | None = None, best_last=None):
    """Feed loss histories ``(T + 1, N)`` (start, then T steps) to the control; checkpoint after T."""
    ctrl = StepSizeControl(histories[0], 0.4, 0.75)
    if reduced_last is not None:
        ctrl.reduced_last = reduced_last
    if best_last is not None:
        ctrl.best_last = best_last
        ctrl.best = torch.maximum(ctrl.best, best_last)
    for loss in histories[1:]:
        ctrl.observe(loss)
    halved = ctrl.checkpoint(len(histories) - 1)
    return halved, ctrl


def test_step_size_halves_only_per_the_two_conditions():
    up = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # 8 increases out of 8 steps
    # condition 1 only: 6 of 8 steps increase (6 = 0.75 * 8, not below it) vs 5 of 8 (below)
    six = [0, 1, 2, 3, 2.5, 4, 5, 4.5, 6]
    five = [0, 1, 2, 1.5, 3, 2.5, 4, 3.5, 5]
    # oscillating: half the steps increase and the best loss never improves after step 1
    osc = [0, 9, 1, 2, 1, 2, 1, 2, 1]
    hist = torch.tensor([up, six, five, osc], dtype=torch.float32).T
    halved, ctrl = _run_window(hist, reduced_last=torch.ones(4, dtype=torch.bool))
    assert halved.tolist() == [False, False, True, True]
    assert ctrl.eta.tolist() == pytest.approx([0.4, 0.4, 0.2, 0.2])
    assert ctrl.increases.tolist() == [0, 0, 0, 0]  # counting restarts at each checkpoint
    # a halved sample restarts from x_max: its next step is compared with f_max
    assert ctrl.prev.tolist() == pytest.approx([8, 6, 5, 9])


def test_condition_two_needs_no_reduction_last_time_and_no_improvement():
    # every step increases the loss (condition 1 false), but the best stays below the last checkpoint's
    hist = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4]] * 3).T
    best_last = torch.tensor([1.0, 1.0, 0.2])
    halved, _ = _run_window(hist, reduced_last=torch.tensor([False, True, False]), best_last=best_last)
    # sample 0: not reduced last time, no improvement -> halve; sample 1: reduced last time -> keep;
    # sample 2: improved (0.4 > 0.2) -> keep
    assert halved.tolist() == [True, False, False]


def test_first_checkpoint_compares_with_the_start():
    # w_0 = 0: no halving happened there, so condition 2 holds if f_max never beat f(x^(0))
    hist = torch.tensor([[5.0, 1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0]]).T
    halved, _ = _run_window(hist)
    assert halved.tolist() == [True, False]


def test_dlr_losses_against_hand_computation():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 4.0, 1.0]])
    y = torch.tensor([0, 1, 2])
    # sorted: (3, 1, 0, -1), (3, 1, 0, -1), (4, 2, 1, 0.5); denominators z_pi1 - z_pi3: 3, 3, 3
    expected = [-(3 - 1) / 3, -(1 - 3) / 3, -(4 - 2) / 3]
    assert dlr_loss(z, y).tolist() == pytest.approx(expected)
    t = torch.tensor([2, 3, 0])
    # denominators z_pi1 - (z_pi3 + z_pi4) / 2: 3 - (0 - 1)/2 = 3.5, 3.5, 4 - (1 + 0.5)/2 = 3.25
    expected_t = [-(3 - 0) / 3.5, -(1 + 1) / 3.5, -(4 - 0.5) / 3.25]
    assert dlr_loss_targeted(z, y, t).tolist() == pytest.approx(expected_t)
    # invariant to shifting and (positive) scaling of the logits
    assert dlr_loss(2 * z + 7, y).tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(UserError, match="at least 4 classes"):
        dlr_loss_targeted(z[:, :3], y, torch.tensor([1, 0, 1]))


# ---------------------------------------------------------------------------------------- Square rules
def test_p_schedule_and_square_side():
    assert [
        p_schedule(i, 10000, 0.8) for i in (0, 10, 11, 50, 51, 201, 501, 1001, 2001, 4001, 6001, 8001)
    ] == (pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625]))
    # rescaled to a 1000-query budget: iteration 2 is iteration 20 of 10 000
    assert p_schedule(2, 1000, 0.8) == pytest.approx(0.4)
    assert square_side(0.8, 8, 8, "linf") == 7  # round(sqrt(0.8 * 64)) = round(7.16)
    assert square_side(0.05, 8, 8, "linf") == 2  # round(sqrt(3.2)) = 2
    assert square_side(0.001, 8, 8, "linf") == 1
    assert square_side(0.05, 8, 8, "l2") == 3  # at least 3 and odd
    assert square_side(0.4, 32, 32, "l2") == 21  # round(20.2) = 20 -> odd 21
    assert square_side(1.0, 8, 8, "l2") == 8  # capped by the image


def test_eta_window_shape():
    w = eta_window(5)
    assert w.shape == (5, 5)
    assert w.norm().item() == pytest.approx(1.0)
    assert torch.all(w[:2] > 0) and torch.all(w[2:] < 0)
    assert w[:2].norm().item() == pytest.approx(w[2:].norm().item())  # both halves carry the same mass
    # rings: the centre of the lower 3x5 half is its largest entry, the corners the smallest
    low = -w[2:]
    assert low[1, 2] == low.max() and low[0, 0] == low.min()
    # entries at Chebyshev distance d from the centre: sum_{k=d}^{2} 1/(k+1)^2
    ring = torch.tensor([1 + 1 / 4 + 1 / 9, 1 / 4 + 1 / 9, 1 / 9])
    assert (low[1, 2] / low[0, 0]).item() == pytest.approx((ring[0] / ring[2]).item())
    assert (low[1, 1] / low[0, 0]).item() == pytest.approx((ring[1] / ring[2]).item())


def test_l2_square_update_keeps_the_norm_at_eps():
    torch.manual_seed(0)
    xs = torch.rand(6, 3, 12, 12)
    threat = ThreatModel("l2", 2.0, bounds=(-100.0, 100.0))  # no clipping: the update alone
    delta = torch.randn_like(xs)
    xb = xs + 1.3 * delta / delta.reshape(6, -1).norm(dim=1).view(-1, 1, 1, 1)  # inside the ball
    u = torch.rand(6, 3 + 5)
    cand = Square._l2_step(xs, xb, u, 5, threat)
    assert lp_norm(cand - xs, "l2").tolist() == pytest.approx([2.0] * 6, rel=1e-5)
    # only the two windows changed
    changed = (cand - xb).abs().sum(dim=1) > 1e-5
    assert int(changed.reshape(6, -1).sum(1).max()) <= 2 * 25


# ---------------------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize(
    "attack",
    [
        APGD(steps=10),
        APGD(steps=10, loss="dlr"),
        APGDTargeted(steps=5, n_target_classes=2),
        Square(queries=40),
    ],
    ids=["apgd-ce", "apgd-dlr", "apgd-t", "square"],
)
def test_results_inside_ball_and_bounds(attack, norm, digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:48], y[:48]
    threat = ThreatModel(norm, EPS[norm])
    adv = attack(digits_cnn, x, y, threat)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.all(lp_norm(adv - x, norm) <= EPS[norm] * (1 + 1e-5))
    with torch.no_grad():
        robust = (digits_cnn(adv).argmax(1) == y).float().mean().item()
        clean = (digits_cnn(x).argmax(1) == y).float().mean().item()
    assert robust < clean - 0.2


def test_registry_names_and_kinds():
    assert isinstance(get("apgd"), APGD) and get("apgd").steps == 100
    assert isinstance(get("apgd-t"), APGDTargeted) and get("apgd-t").n_target_classes == 9
    assert isinstance(get("square"), Square) and get("square").queries == 5000
    assert Square.kind is AttackKind.SCORE_BASED and APGD.kind is AttackKind.FIXED_EPS
    assert repr(APGD(steps=7)) == (
        "APGD(steps=7, restarts=1, loss='ce', rho=0.75, alpha=0.75, early_stop=True, compact_every=5)"
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: APGD(steps=0),
        lambda: APGD(loss="margin"),
        lambda: APGD(rho=1.5),
        lambda: APGD(alpha=0),
        lambda: APGDTargeted(n_target_classes=0),
        lambda: Square(queries=0),
        lambda: Square(p_init=0.0),
        lambda: Square(loss="dlr"),
        lambda: Square(restarts=True),
    ],
)
def test_bad_settings_are_user_errors(make):
    with pytest.raises(UserError):
        make()


# ---------------------------------------------------------------------------------------- budgets
def test_apgd_passes_are_steps_times_restarts(digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:20], y[:20]
    counter = Counter(digits_cnn)
    APGD(steps=12, restarts=2, early_stop=False)(counter, x, y, ThreatModel("linf", 0.05))
    # per restart: steps forward+backward passes and one forward pass to score the last iterate;
    # the step-size restarts from x_max reuse the stored gradient (no extra pass)
    assert counter.forward_rows == 20 * 2 * (12 + 1)
    assert counter.backward_rows == 20 * 2 * 12


def test_apgd_early_stopped_samples_cost_nothing_more(digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:20], y[:20]
    with torch.no_grad():
        wrong = (digits_cnn(x).argmax(1) + 1) % 10  # every sample misclassified w.r.t. these labels
    counter = Counter(digits_cnn)
    adv = APGD(steps=50, restarts=3, compact_every=5)(counter, x, wrong, ThreatModel("linf", 0.01))
    # adversarial at the start: they stay in the batch until the first compaction, then leave, and
    # no restart runs on them (the 6 passes: the start and 5 masked steps)
    assert counter.forward_rows == 20 * (1 + 5)
    assert counter.backward_rows == 20 * (1 + 5)
    with torch.no_grad():
        assert torch.all(digits_cnn(adv).argmax(1) != wrong)


def test_apgd_targeted_budget_and_targets(digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:16], y[:16]
    counter = Counter(digits_cnn)
    APGDTargeted(steps=6, n_target_classes=3, early_stop=False)(counter, x, y, ThreatModel("linf", 0.05))
    # one clean pass ranks the targets, then per target class steps + 1 forward and steps backward
    assert counter.forward_rows == 16 * (1 + 3 * 7)
    assert counter.backward_rows == 16 * 3 * 6


@pytest.mark.parametrize("attack", [APGDTargeted(steps=20), APGD(steps=20)], ids=["apgd-t", "apgd-ce"])
def test_apgd_reaches_requested_targets(attack, digits_cnn, digits_test):
    x, y = digits_test
    targets = (y + 1 + torch.arange(len(y)) % 9) % 10  # every wrong class, in turn
    adv = attack(digits_cnn, x, y, ThreatModel("linf", 0.3), targets=targets)
    with torch.no_grad():
        reached = (digits_cnn(adv).argmax(1) == targets).float().mean().item()
    assert reached > 0.8, reached  # measured: 0.885 (apgd-t), 0.927 (apgd-ce)


def test_square_uses_no_gradients(digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:24], y[:24]
    model = NoGradients(digits_cnn)
    for norm in ("linf", "l2"):
        adv = Square(queries=30, restarts=2)(model, x, y, ThreatModel(norm, EPS[norm]))
        assert adv.shape == x.shape
    assert model.grad_enabled_calls == 0


def _owner(queries, x, radius):
    """Which sample each queried row perturbs: the one clean input within L2 ``radius`` of it."""
    flat = x.reshape(len(x), -1)
    preds, owners = [], []
    for q, pred in queries:
        dist = torch.cdist(q.reshape(len(q), -1), flat)
        assert torch.all((dist <= radius).sum(1) == 1)  # unambiguous
        preds.append(pred)
        owners.append(dist.argmin(1))
    return owners, preds


def _far_apart(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Indices of samples pairwise more than ``2 * radius`` apart in L2 (greedy, in order)."""
    flat = x.reshape(len(x), -1)
    chosen: list[int] = []
    for i in range(len(x)):
        if all(float((flat[i] - flat[j]).norm()) > 2 * radius for j in chosen):
            chosen.append(i)
    return torch.tensor(chosen)


def test_square_query_accounting(digits_cnn, digits_test):
    x, y = digits_test
    radius = 0.12 * 8 + 1e-4  # the L2 reach of Linf 0.12 on 64 pixels
    keep = _far_apart(x, radius)[:40]
    x, y = x[keep], y[keep]
    counter = Counter(digits_cnn)
    attack = Square(queries=60, restarts=2, compact_every=7)
    adv, used = attack.with_queries(counter, x, y, ThreatModel("linf", 0.12))
    owners, preds = _owner(counter.queries, x, radius)
    sent = torch.zeros(len(x), dtype=torch.long)
    first_adv = torch.full((len(x),), -1)
    for owner, pred in zip(owners, preds):
        for o, p in zip(owner.tolist(), pred.tolist()):
            sent[o] += 1
            if p != y[o] and first_adv[o] < 0:
                first_adv[o] = sent[o]
    broken = first_adv > 0
    with torch.no_grad():
        final_wrong = digits_cnn(adv).argmax(1) != y
    assert torch.equal(final_wrong, broken)
    assert 0 < int(broken.sum()) < len(x)  # some broken, some not: both cases checked
    # broken samples: the count stops at their first adversarial query; later rows (sent before the
    # next compaction) are at most compact_every
    assert torch.equal(used[broken], first_adv[broken])
    assert torch.all(sent[broken] - used[broken] <= 7)
    # unbroken: the whole budget of every restart, exactly
    assert torch.all(used[~broken] == 2 * 60) and torch.all(sent[~broken] == 2 * 60)
    assert int(used.max()) <= 2 * 60


def test_square_eps_zero_uses_no_queries(digits_cnn, digits_test):
    x, y = digits_test
    adv, used = Square(queries=10).with_queries(digits_cnn, x, y, ThreatModel("linf", 0.0))
    assert torch.equal(adv, x) and torch.equal(used, torch.zeros(len(x), dtype=torch.long))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_keyed_randomness(norm, digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:30], y[:30]
    ids = torch.arange(500, 530)
    threat = ThreatModel(norm, 0.1 if norm == "linf" else 0.8)
    attack = Square(queries=50)
    whole = attack(digits_cnn, x, y, threat, ids=ids, seed=1)
    parts = torch.cat(
        [
            attack(digits_cnn, x[i : i + 7], y[i : i + 7], threat, ids=ids[i : i + 7], seed=1)
            for i in range(0, 30, 7)
        ]
    )
    assert torch.allclose(whole, parts, atol=1e-5)
    again = attack(digits_cnn, x, y, threat, ids=ids, seed=1)
    other = attack(digits_cnn, x, y, threat, ids=ids, seed=2)
    assert torch.equal(whole, again) and not torch.equal(whole, other)


def test_square_targeted(digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:40], y[:40]
    targets = (y + 1) % 10
    adv = Square(queries=300)(digits_cnn, x, y, ThreatModel("linf", 0.3), targets=targets)
    with torch.no_grad():
        reached = (digits_cnn(adv).argmax(1) == targets).float().mean().item()
    assert reached > 0.5, reached


@pytest.mark.parametrize(
    "attack", [APGD(steps=2), APGDTargeted(steps=2), Square(queries=2)], ids=["apgd", "apgd-t", "square"]
)
def test_infinite_eps_is_a_user_error(attack, digits_cnn, digits_test):
    x, y = digits_test
    with pytest.raises(UserError, match="finite eps"):
        attack(digits_cnn, x[:4], y[:4], ThreatModel("linf", math.inf))


def test_square_leaves_model_state_and_dtype_alone(digits_test):
    from robustaudit.models.zoo.digits import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN().double()
    model.train()
    model.classifier.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits_test
    for norm in ("linf", "l2"):
        adv = Square(queries=20)(model, x[:16].double(), y[:16], ThreatModel(norm, EPS[norm]))
        assert adv.dtype == torch.float64
        assert torch.all(lp_norm(adv - x[:16].double(), norm) <= EPS[norm] * (1 + 1e-9))
    assert model.training and model.features.training and not model.classifier.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
