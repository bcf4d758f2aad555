"""Runner semantics: survivors only, monotone eps sweep, per-sample worst case, store contents."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack
from robustaudit.data.base import TensorData
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.result import WORST_CASE
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, run
from robustaudit.evaluate.store import Store


class Sign(nn.Module):
    """Class 1 when the first pixel is above 0.5, else class 0: logits (N, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.reshape(len(x), -1)[:, :1] - 0.5
        return torch.cat([-v, v], dim=1) * 10


class Oracle(Attack):
    """Breaks exactly the samples whose id is in ``breaks[eps]`` (flips pixel 0 across 0.5 within eps)."""

    name = "oracle"
    norms = ("linf",)

    def __init__(self, *, breaks: dict | None = None) -> None:
        self.breaks = breaks or {}
        self.seen: list[tuple[float, list[int]]] = []

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        self.seen.append((threat.eps, ids.tolist()))
        out = x.clone()
        for row, sid in enumerate(ids.tolist()):
            if sid in self.breaks.get(threat.eps, ()):
                flat = out[row].view(-1)
                flat[0] = 0.5 + (0.01 if flat[0] <= 0.5 else -0.01)
        return out


@pytest.fixture
def toy():
    # 20 samples with pixel 0 at 0.49 / 0.51 (within 0.02 of the boundary); label = true class,
    # except samples 18 and 19 which the model gets wrong on clean data
    x = torch.full((20, 1, 2, 2), 0.2)
    y = torch.tensor([i % 2 for i in range(20)])
    x[:, 0, 0, 0] = torch.where(y == 1, 0.51, 0.49)
    y[18], y[19] = 1 - y[18], 1 - y[19]
    return TensorData(x, y, name="toy", num_classes=2)


def test_worst_case_is_per_sample_not_min_of_columns(toy, tmp_path):
    a = Oracle(breaks={0.1: {0, 1, 2}, 0.2: {3}})
    b = Oracle(breaks={0.1: {4, 5}, 0.2: {6, 7}})
    with Store(tmp_path / "r.sqlite") as store:
        result = run([ModelEntry("sign", Sign())], toy, [AttackEntry("a", a), AttackEntry("b", b)], [0.2, 0.1],
                     batch_size=4, store=store)
        assert store.query("SELECT COUNT(*) FROM clean")[0][0] == 20
        # only samples attacked are stored: 18 at eps 0.1, the 15 survivors at 0.2 (attack a)
        assert store.query("SELECT COUNT(*) FROM adv WHERE attack='a' AND eps=0.1")[0][0] == 18
        assert store.query("SELECT COUNT(*) FROM adv WHERE attack='a' AND eps=0.2")[0][0] == 15
        assert store.query("SELECT n_robust FROM cells WHERE attack='b' AND eps=0.2")[0][0] == 14
    r = result.records.set_index(["attack", "eps"])
    assert r.loc[("a", 0.1), "n_clean_correct"] == 18
    assert r.loc[("a", 0.1), "n_robust"] == 15 and r.loc[("a", 0.2), "n_robust"] == 14
    assert r.loc[("b", 0.1), "n_robust"] == 16 and r.loc[("b", 0.2), "n_robust"] == 14
    # worst case per sample: 18 - |{0,1,2,4,5}| = 13 at 0.1; minus {3,6,7} = 10 at 0.2
    assert r.loc[(WORST_CASE, 0.1), "n_robust"] == 13
    assert r.loc[(WORST_CASE, 0.2), "n_robust"] == 10  # min of columns would say 14
    assert r.loc[(WORST_CASE, 0.2), "robust_accuracy"] == pytest.approx(10 / 20)
    lo, hi = wilson_interval(10, 20)
    assert r.loc[(WORST_CASE, 0.2), "ci_low"] == pytest.approx(lo) and r.loc[(WORST_CASE, 0.2), "ci_high"] == pytest.approx(hi)
    assert r.loc[("a", 0.1), "clean_accuracy"] == pytest.approx(0.9)


class NaNOffClean(nn.Module):
    """Sign's logits on the clean toy images, NaN on any other input; the NaN sits in column 0 and 1 alike,
    so torch's argmax would name class 0 (the label of the even ids)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = Sign()(x)
        untouched = (x.reshape(len(x), -1)[:, 1:] == 0.2).all(1, keepdim=True)
        return torch.where(untouched, logits, torch.full_like(logits, float("nan")))


class Nudge(Attack):
    """Moves pixel 1 by 0.01 (the prediction would not change on Sign itself)."""

    name = "nudge"
    norms = ("linf",)

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        out = x.clone()
        out.view(len(x), -1)[:, 1] += 0.01
        return out


def test_a_nan_output_under_attack_is_a_wrong_prediction(toy):
    """A model that answers an adversarial input with NaN has classified nothing: every attacked sample is
    broken, never robust because argmax(NaN row) happens to equal its label."""
    from robustaudit.core.task import NO_PREDICTION, predictions

    logits = torch.tensor([[float("nan"), 0.0], [1.0, float("-inf")], [0.0, 2.0]])
    assert predictions(logits).tolist() == [NO_PREDICTION, 0, 1]  # -inf rules a class out: still an answer
    result = run([ModelEntry("nan", NaNOffClean())], toy, [AttackEntry("nudge", Nudge())], [0.1], batch_size=8)
    r = result.records.set_index("attack")
    assert r.loc["nudge", "n_clean_correct"] == 18 and r.loc["nudge", "n_robust"] == 0
    assert r.loc[WORST_CASE, "robust_accuracy"] == 0.0


def test_eps_swept_ascending_on_survivors_only(toy):
    a = Oracle(breaks={0.1: {0, 1, 2}, 0.3: {5}})
    run([ModelEntry("sign", Sign())], toy, [AttackEntry("a", a)], [0.3, 0.1, 0.2], batch_size=100)
    eps_order = [e for e, _ in a.seen]
    assert eps_order == [0.1, 0.2, 0.3]
    attacked = dict(a.seen)
    assert 18 not in attacked[0.1] and 19 not in attacked[0.1]  # clean-wrong samples never attacked
    assert set(attacked[0.2]) == set(range(3, 18)) and set(attacked[0.3]) == set(range(3, 18))


def test_results_do_not_depend_on_batch_size(digits_cnn):
    from robustaudit.attacks.gradient import PGD
    from robustaudit.data.digits import digits_split

    data = digits_split("test")
    ids = list(range(60))
    runs = [run([ModelEntry("m", digits_cnn)], data, [AttackEntry("pgd", PGD(steps=5))], [0.05, 0.1],
                ids=ids, batch_size=b).records for b in (7, 60)]
    assert runs[0]["n_robust"].tolist() == runs[1]["n_robust"].tolist()


def test_wilson_interval_reference_values():
    # reference values from the closed form (Wilson 1927), checked by hand
    lo, hi = wilson_interval(58, 100)
    assert lo == pytest.approx(0.4821, abs=1e-4) and hi == pytest.approx(0.6720, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert not math.isnan(wilson_interval(1, 3)[0])


class MinimalOracle(Attack):
    """A minimal-norm attack that breaks sample i with a perturbation of Linf norm ``norms[i]``."""

    name = "minimal-oracle"
    norms = ("linf",)
    from robustaudit.attacks.base import AttackKind as _K

    kind = _K.MINIMAL_NORM

    def __init__(self, *, norms: dict | None = None) -> None:
        self.table = norms or {}
        self.calls = 0

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        self.calls += 1
        assert threat.eps == float("inf")
        out = x.clone()
        for row, sid in enumerate(ids.tolist()):
            if sid in self.table:
                flat = out[row].view(-1)
                # cross the 0.5 boundary on pixel 0 and spend the rest of the budget on pixel 1
                flat[0] = 0.5 + (0.01 if flat[0] <= 0.5 else -0.01)
                flat[1] = flat[1] + self.table[sid]
        return out


def test_minimal_norm_attack_gives_the_whole_curve_from_one_run(toy, tmp_path):
    a = MinimalOracle(norms={0: 0.05, 1: 0.15, 2: 0.15, 3: 0.25})
    result = run([ModelEntry("sign", Sign())], toy, [AttackEntry("mn", a)], [0.1, 0.2, 0.3], batch_size=100)
    assert a.calls == 1
    r = result.records.set_index(["attack", "eps"])
    assert r.loc[("mn", 0.1), "n_robust"] == 17 and r.loc[("mn", 0.2), "n_robust"] == 15
    assert r.loc[("mn", 0.3), "n_robust"] == 14 and r.loc[(WORST_CASE, 0.3), "n_robust"] == 14
    summary = result.norm_summary().iloc[0]
    assert summary["n"] == 18 and summary["found"] == 4 and summary["median"] == float("inf")
    result.save(tmp_path)
    loaded = type(result).load(tmp_path)
    assert loaded.minimal_norms[("sign", "mn")][1] == pytest.approx(0.15)
    assert loaded.minimal_norms[("sign", "mn")][5] == float("inf")
