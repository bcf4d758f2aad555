"""Sanity checks: each planted flaw gets its verdict, and its honest twin passes.

The flawed models wrap the shipped digits CNN: softmax outputs, randomness in forward, quantized inputs,
saturated logits, test-time optimisation in forward, no input gradients at all, and a defense trained
to mask gradients (defensive distillation at a high temperature, deployed at temperature 1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustaudit.checks import run_checks
from robustaudit.checks.adaptive import plan_adaptive
from robustaudit.checks.probes import probe_model
from robustaudit.checks.verdict import Verdict, paired_status, tolerance
from robustaudit.data.digits import digits_split
from robustaudit.evaluate.api import attack_entries_from
from robustaudit.evaluate.runner import ModelEntry, run

EPS = (0.1, 0.2)


def _audit_and_check(model: nn.Module, attacks=("fgsm", "pgd:steps=20"), n: int = 96, level: str = "basic"):
    data = digits_split("test")
    entries = [ModelEntry("m", model)]
    atts = attack_entries_from(list(attacks))
    ids = list(range(n))
    result = run(entries, data, atts, EPS, ids=ids)
    verdicts, probes = run_checks(entries, data, ids, atts, result, level=level, grid=EPS, norm="linf",
                                  device=torch.device("cpu"))
    return {v.id: v for v in verdicts}, probes["m"], result, atts


def _status(verdicts: dict[str, Verdict], vid: str) -> str:
    return verdicts[vid].status


class Softmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class Noisy(nn.Module):
    def __init__(self, net: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


class Quantize(nn.Module):
    def forward(self, x):
        return torch.round(x * 4) / 4


class Quantized(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.classifier = Quantize(), net

    def forward(self, x):
        return self.classifier(self.preprocess(x))


class Scaled(nn.Module):
    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.net(x) * self.scale


class PurifyingModel(nn.Module):
    """Purifies the input with one gradient step on its own entropy before classifying."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().clone().requires_grad_(True)
            p = self.net(z).softmax(1)
            entropy = -(p * p.clamp_min(1e-12).log()).sum()
            g, = torch.autograd.grad(entropy, z)
        return self.net((x - 0.01 * g.sign()).clamp(0, 1))


class NoGradients(nn.Module):
    """Runs the network on a copy of the input that autograd cannot see (as numpy-based code does)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.from_numpy(x.detach().cpu().numpy()))


def test_tolerance_grows_with_n_and_paired_status():
    assert tolerance(32) < tolerance(359) < tolerance(5000)
    assert tolerance(32) == 3 and tolerance(359) == 14
    assert paired_status(tolerance(100), 100) == "pass"
    assert paired_status(tolerance(100) + 1, 100) == "warn"
    assert paired_status(20, 100) == "fail"


def test_honest_model_passes_every_check(digits_cnn):
    verdicts, probe, _, _ = _audit_and_check(digits_cnn)
    failing = {k: v.message for k, v in verdicts.items() if v.status != "pass"}
    assert not failing
    assert {"logits-output", "deterministic", "no-autograd-in-forward", "input-gradients", "finite-differences",
            "eps-zero", "robust-le-clean", "monotone-eps", "large-eps", "unbounded", "iterative-vs-single-step",
            "more-steps", "loss-gap", "random-noise", "step-reach"} <= set(verdicts)
    assert probe.differentiable and not probe.randomized and not probe.dead_gradients


def test_a_class_steering_attack_is_not_held_to_fgsm(digits_cnn):
    """ILLC descends towards the least-likely class: FGSM breaks samples it misses by design (25 of 64 on
    digits-cnn at eps 0.1), which said nothing about masking yet made the model's figures upper bounds. The
    check now compares FGSM with a PGD of its own, and an honest model passes."""
    verdicts, _, result, _ = _audit_and_check(digits_cnn, attacks=("fgsm", "illc"))
    s_ok = set(result.robust_ids[("m", "fgsm", EPS[0])])
    it_ok = set(result.robust_ids[("m", "illc", EPS[0])])
    assert len(it_ok - s_ok) > tolerance(96)  # the gap the old check failed on
    verdict = verdicts["iterative-vs-single-step"]
    assert verdict.status == "pass" and verdict.evidence["iterative"] == "pgd (check)"


def test_softmax_outputs_fail_the_logits_check(digits_cnn):
    verdicts, _, _, _ = _audit_and_check(Softmax(digits_cnn), attacks=("fgsm",), n=32)
    assert _status(verdicts, "logits-output") == "fail"
    assert "probabilities" in verdicts["logits-output"].message


def test_randomness_in_forward_is_flagged_and_full_reruns_with_eot(digits_cnn):
    verdicts, probe, _, atts = _audit_and_check(Noisy(digits_cnn), attacks=("pgd:steps=10",), n=32)
    assert _status(verdicts, "deterministic") == "fail" and probe.randomized
    assert "eot" in verdicts["deterministic"].message
    plan = plan_adaptive([verdicts["deterministic"]], probe, atts, [a.name for a in atts])
    assert [a.name for a in plan.run] == ["eot(pgd:steps=10)"]


def test_quantized_inputs_have_dead_gradients_and_full_reruns_with_bpda(digits_cnn):
    model = Quantized(digits_cnn)
    verdicts, probe, _, atts = _audit_and_check(model, n=64)
    assert _status(verdicts, "input-gradients") == "fail" and probe.dead_gradients
    assert "bpda" in verdicts["input-gradients"].message
    # the attack-side evidence agrees: PGD cannot leave the class even with the whole box
    assert _status(verdicts, "unbounded") == "fail"
    assert probe.bpda_identity  # the quantizer keeps the shape: BPDA's identity backward stands in for it
    plan = plan_adaptive([verdicts["input-gradients"]], probe, atts, [a.name for a in atts])
    assert {"bpda(fgsm)", "bpda(pgd:steps=20)", "square"} <= {a.name for a in plan.run}


class _Levels(nn.Module):
    """A thermometer-style encoding: ``(N, 1, H, W) -> (N, 4, H, W)``, no identity can stand in for it."""

    def forward(self, x):
        return torch.cat([(x > t).float() for t in (0.2, 0.4, 0.6, 0.8)], dim=1)


def test_a_shape_changing_preprocess_gets_square_not_bpda():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    model = Quantized(net)
    model.preprocess = _Levels()
    x, y = digits_split("test").load(range(16))
    probe = probe_model("m", model, x, y)
    assert not probe.differentiable and not probe.bpda_identity
    atts = attack_entries_from(["fgsm", "pgd:steps=5"])
    plan = plan_adaptive([Verdict("input-gradients", "m", "fail", "dead")], probe, atts, ["fgsm", "pgd:steps=5"])
    assert [a.name for a in plan.run] == ["square"]


def test_saturated_logits_warn_and_show_a_loss_gap(digits_cnn):
    verdicts, _, _, _ = _audit_and_check(Scaled(digits_cnn, 1e4), attacks=("pgd:steps=20",), n=96)
    assert _status(verdicts, "input-gradients") == "warn"
    assert "margin" in verdicts["input-gradients"].message
    assert _status(verdicts, "loss-gap") == "fail"
    # the honest twin: the same network at its trained scale
    twin, _, _, _ = _audit_and_check(Scaled(digits_cnn, 1.0), attacks=("pgd:steps=20",), n=96)
    assert _status(twin, "input-gradients") == "pass" and _status(twin, "loss-gap") == "pass"


def test_test_time_optimisation_is_flagged(digits_cnn):
    verdicts, _, _, _ = _audit_and_check(PurifyingModel(digits_cnn), attacks=("fgsm",), n=32)
    assert _status(verdicts, "no-autograd-in-forward") == "fail"


def test_model_without_gradients_gets_a_verdict_not_an_error(digits_cnn):
    verdicts, probe, _, _ = _audit_and_check(NoGradients(digits_cnn), attacks=("square:queries=100",), n=32)
    assert _status(verdicts, "input-gradients") == "fail" and not probe.differentiable


def _distilled(temperature: float, epochs: int = 30) -> nn.Module:
    """A small MLP trained on digits with softmax at ``temperature`` and deployed at temperature 1
    (defensive distillation's student, without the teacher: the temperature is what masks gradients)."""
    torch.manual_seed(0)
    x, y = digits_split("train").load(range(len(digits_split("train"))))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(x[b]) / temperature, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.mark.slow
def test_defense_trained_to_mask_gradients_is_caught():
    masked, _, result, _ = _audit_and_check(_distilled(100.0), attacks=("pgd:steps=20",), n=96)
    assert _status(masked, "loss-gap") == "fail" or _status(masked, "input-gradients") == "warn"
    honest, _, _, _ = _audit_and_check(_distilled(1.0), attacks=("pgd:steps=20",), n=96)
    assert _status(honest, "loss-gap") == "pass" and _status(honest, "input-gradients") == "pass"


def test_full_level_reruns_a_randomized_model_with_eot_and_reports_both_figures(digits_cnn):
    from robustaudit import audit

    result = audit({"noisy": Noisy(digits_cnn, sigma=0.05)}, "digits", attacks=["pgd:steps=10"], eps=[0.2], n=48,
                   checks="full", device="cpu")
    assert {"pgd:steps=10", "eot(pgd:steps=10)"} <= set(result.attacks)
    plain = result.robust_accuracy("noisy", "pgd:steps=10", 0.2)
    eot = result.robust_accuracy("noisy", "eot(pgd:steps=10)", 0.2)
    worst = result.robust_accuracy("noisy", "worst-case", 0.2)
    assert worst <= min(plain, eot)
    ids = result.robust_ids
    every = set.intersection(*(set(ids[("noisy", a, 0.2)]) for a in result.attacks))
    assert set(ids[("noisy", "worst-case", 0.2)]) == every
    assert any(a.get("added_by") == "checks" for a in result.provenance["attacks"])
    deterministic = {c["id"]: c for c in result.checks}["deterministic"]
    assert deterministic["status"] == "fail" and "eot(pgd:steps=10)" in deterministic["answered_by"]


def test_audit_of_a_model_without_gradients_runs_square_in_place_of_pgd(digits_cnn):
    from robustaudit import audit

    with pytest.warns(UserWarning, match="no input gradients"):
        result = audit({"nograd": NoGradients(digits_cnn)}, "digits", attacks=["fgsm", "pgd:steps=5"], eps=[0.2],
                       n=32, checks="basic", device="cpu")
    assert result.attacks == ["square"]
    assert [s["attack"] for s in result.provenance["skipped"]] == ["fgsm", "pgd:steps=5"]
    assert result.robust_accuracy("nograd", "square", 0.2) < 0.5  # the undefended CNN falls to Square too
    assert {c["id"]: c["status"] for c in result.checks}["input-gradients"] == "fail"


class _Counted(nn.Module):
    """``inner`` counting the samples through its forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.forward_passes = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_passes += len(x)
        return self.inner(x)


@pytest.mark.slow  # about 20 s: one audit and the checks twice
def test_monotone_sweep_reads_back_the_audits_own_runs_exactly():
    """The independent sweep reuses the audit's runs of its attack where the audit made them (issue 17.6):
    the verdicts must equal those of a sweep that attacks every sample at every eps afresh, for fewer passes.
    digits-cnn-pgdat keeps survivors above the smallest eps, so there is something to read back."""
    from robustaudit.models.catalog import create_model

    data = digits_split("test")
    model = _Counted(create_model("digits-cnn-pgdat").eval())
    entries = [ModelEntry("m", model)]
    atts = attack_entries_from(["pgd:steps=10"])
    grid = (0.05, 0.1, 0.2, 0.3)
    ids = list(range(0, 352, 11))  # 32 ids spread over the split: the subsample is all of them
    result = run(entries, data, atts, grid, ids=ids)
    outcomes = result.outcomes
    assert outcomes is not None and any(c.attacked for c in outcomes.cells if c.eps > 0.05)

    def sweep(reuse: bool) -> tuple[dict[str, Verdict], int]:
        result.outcomes = outcomes if reuse else None  # without outcomes nothing is read back
        model.forward_passes = 0
        verdicts, _ = run_checks(entries, data, ids, atts, result, grid=grid, norm="linf", device=torch.device("cpu"))
        return {v.id: v for v in verdicts if v.id in ("monotone-eps", "robust-le-clean")}, model.forward_passes

    (read, cheap), (fresh, full) = sweep(True), sweep(False)
    assert {k: (v.status, v.message, v.evidence) for k, v in read.items()} == \
           {k: (v.status, v.message, v.evidence) for k, v in fresh.items()}
    # survivors above the smallest eps: read back at 0.1 and 0.2 (measured 2,733 forwards against 4,059)
    assert "accuracy 0.05: 1.00, 0.1: 1.00, 0.2: 0.72, 0.3: 0.03" in read["monotone-eps"].message
    assert read["monotone-eps"].evidence["reversals"] == 0
    assert cheap < 0.75 * full


def test_checks_attacks_drop_finished_samples_every_step_with_the_same_outcome(digits_cnn):
    """The checks' re-attacks (``_compacting``) break mostly within a step or two: dropping finished samples
    after every step must give the very same adversarials, for fewer passes through the model."""
    from robustaudit.attacks.gradient import PGD
    from robustaudit.checks.attacks import _compacting
    from robustaudit.core.threat import ThreatModel

    x, y = digits_split("test").load(list(range(64)))
    audit_pgd = PGD(steps=10)
    check_pgd = _compacting(audit_pgd)
    assert check_pgd.settings() == {**audit_pgd.settings(), "compact_every": 1}
    assert _compacting(check_pgd) is check_pgd
    seen = []
    handle = digits_cnn.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        advs = []
        for attack in (audit_pgd, check_pgd):
            seen.clear()
            advs.append(attack(digits_cnn, x, y, ThreatModel("linf", 0.3), ids=torch.arange(64), seed=3))
            advs.append(sum(seen))
    finally:
        handle.remove()
    assert torch.equal(advs[0], advs[2])
    with torch.no_grad():
        broken = int((digits_cnn(advs[0]).argmax(1) != y).sum())
    assert broken >= 60  # eps 0.3 breaks the standard CNN: most samples are dropped early
    assert advs[3] < 0.6 * advs[1], (advs[1], advs[3])
