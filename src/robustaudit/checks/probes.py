"""Checks of the model itself, before any attack: what it outputs and whether its gradients mean anything.

Each probe looks at one small batch of clean inputs. The verdicts say why an attack's figure could be
too high: probabilities instead of logits saturate cross-entropy, randomness in forward makes a single
gradient a sample of a noisy estimate, test-time optimisation hides the real computation from
autograd, and quantization or other non-differentiable steps leave zero or meaningless gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from robustaudit.checks.verdict import Verdict, share
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.models.wrappers import unrestricted

#: Relative output change between identical calls that still counts as deterministic (float noise).
_DETERMINISM_RTOL = 1e-4
#: Finite-difference step, in pixel units along a ±1 direction (a quarter of one 8-bit level).
_FD_STEP = 1e-3
#: Random directions per sample for the finite-difference test (odd: the per-sample median is one of them).
_FD_DIRECTIONS = 5
#: A directional derivative agrees when |fd - autograd| <= this share of ``||grad||_2``, the typical size
#: of ``grad · d`` for a random ±1 direction ``d`` (``E[(grad · d)^2] = ||grad||_2^2``). Measured on honest
#: ReLU networks at the step above (the difference crosses ReLU kinks, so it is not exact): the per-sample
#: median error is at most 0.16 ||grad|| on a random-weight ResNet-18 at 32×32 and 64×64 and on
#: digits32-cnn, at most 0.02 on the digits CNNs; a lying gradient (a straight-through estimator, a
#: detached purifier) is off by about ||grad|| (the median of |N(0, 1)| is 0.67).
_FD_RTOL = 0.3
#: float32 rounding of one forward pass, in units of eps32 × the largest logit: the difference quotient
#: divides it by the step, so a tiny step on large logits measures rounding, not slope.
_FD_ROUNDING = 64
_EPS32 = float(torch.finfo(torch.float32).eps)


@dataclass
class Probe:
    """What the probes found about one model; later checks and the adaptive re-runs read the flags."""

    model: str
    differentiable: bool = True
    randomized: bool = False
    dead_gradients: bool = False
    #: the model has a ``preprocess`` module that keeps the input's shape, so BPDA's identity backward can
    #: stand in for it (a thermometer encoding, ``(N, 1, H, W) -> (N, L, H, W)``, cannot)
    bpda_identity: bool = False
    verdicts: list[Verdict] = field(default_factory=list)


def probe_model(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                task: Task = CLASSIFICATION, first: torch.Tensor | None = None) -> Probe:
    """Run every model probe on a clean batch ``x (N, C, H, W)``, ``y (N,)`` already on the model's device.

    ``first``: ``model(x)`` under ``torch.no_grad()`` when the caller has it already (the checks' clean
    pass), so the probes do not pay for it again.
    """
    probe = Probe(name)
    if first is None:
        with torch.no_grad():
            first = model(x)
    probe.bpda_identity = _preprocess_keeps_shape(model, x)
    full = unrestricted(model)  # under a label map: every output (restricted probabilities do not sum to 1)
    if full is not model:
        with torch.no_grad():
            probe.verdicts.append(_logits_verdict(name, full(x)))
    else:
        probe.verdicts.append(_logits_verdict(name, first))
    # the repeated call of the determinism probe is also the watched call of the autograd probe: one
    # forward serves both (the watch only counts, it changes no result)
    watch = _GradModeWatch()
    with torch.no_grad(), watch:
        again = model(x)
    probe.verdicts.append(_determinism_verdict(name, model, x, first, again, probe))
    probe.verdicts.append(_autograd_verdict(name, watch.calls))
    probe.verdicts.extend(_gradient_verdicts(name, model, x, y, task, seed, probe))
    return probe


def _preprocess_keeps_shape(model: nn.Module, x: torch.Tensor) -> bool:
    from robustaudit.attacks.wrappers import _find_preprocess

    pre = _find_preprocess(model)
    if pre is None:
        return False
    with torch.no_grad():
        out = pre(x[:1])
    return isinstance(out, torch.Tensor) and out.shape == x[:1].shape


def _logits_verdict(name: str, out: torch.Tensor) -> Verdict:
    vid = "logits-output"
    out = out.detach().double()
    sums = out.sum(1)
    if (out >= -1e-6).all() and (out <= 1 + 1e-6).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        return Verdict(vid, name, "fail", "outputs are probabilities (each row in [0, 1] and sums to 1): "
                       "cross-entropy on them saturates and hides gradients; return the logits before softmax")
    lse = torch.logsumexp(out, 1)
    if torch.allclose(lse, torch.zeros_like(lse), atol=1e-3):
        return Verdict(vid, name, "pass", "outputs are log-probabilities (logits up to a constant per row)")
    return Verdict(vid, name, "pass", "outputs are unnormalised logits")


def _determinism_verdict(name: str, model: nn.Module, x: torch.Tensor, first: torch.Tensor, again: torch.Tensor,
                         probe: Probe) -> Verdict:
    """``first`` and ``again``: two identical calls ``model(x)`` under ``torch.no_grad()``, ``(N, K)``."""
    vid = "deterministic"
    with torch.no_grad():
        # each half on its own: a sample's output must not depend on its batch (BatchNorm left in
        # training mode, batch-level randomness)
        half = len(x) // 2
        split = torch.cat([model(x[:half]), model(x[half:])]) if half else again
    scale = _DETERMINISM_RTOL * (1 + first.abs().max().item())
    repeat = (again - first).abs().max().item()
    batch = (split - first).abs().max().item()
    flips = int((again.argmax(1) != first.argmax(1)).sum())
    evidence = {"max_change_repeat": repeat, "max_change_batch": batch, "label_flips": flips}
    if repeat > scale:
        probe.randomized = True
        return Verdict(vid, name, "fail", f"outputs change between two identical calls (max change {repeat:.3g}, "
                       f"{share(flips, len(x))} labels flip): the model is randomized; attack it with "
                       "eot(...) (--checks full does) and report that figure", evidence)
    if batch > scale:
        probe.randomized = True
        return Verdict(vid, name, "fail", f"a sample's output depends on the rest of its batch (max change "
                       f"{batch:.3g}): BatchNorm in training mode or batch-level randomness", evidence)
    return Verdict(vid, name, "pass", "same input, same output, whatever the batch", evidence)


class _GradModeWatch(TorchFunctionMode):
    """Counts torch calls made with autograd enabled while the caller had it disabled."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if torch.is_grad_enabled():
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _autograd_verdict(name: str, calls: int) -> Verdict:
    """``calls``: torch operations run with autograd enabled during a forward under ``torch.no_grad()``
    (:class:`_GradModeWatch`). An honest model never needs autograd for its prediction, so any such op means
    the forward switched it on itself (test-time optimisation, purification)."""
    vid = "no-autograd-in-forward"
    if calls:
        return Verdict(vid, name, "fail", f"forward turns autograd on ({calls} operations) even under "
                       "torch.no_grad(): test-time optimisation whose effect gradient attacks do not see; "
                       "attack it with bpda(...) or black-box attacks (square)", {"grad_enabled_ops": calls})
    return Verdict(vid, name, "pass", "forward runs no autograd of its own")


def _gradient_verdicts(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task, seed: int,
                       probe: Probe) -> list[Verdict]:
    vid = "input-gradients"
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(xg)
            margin = task.margin(logits, y)  # (N,) the C&W margin: never saturates like cross-entropy
            ce = task.loss(logits, y)
            g_margin, = torch.autograd.grad(margin.sum(), xg, retain_graph=True, allow_unused=True)
            g_ce, = torch.autograd.grad(ce.sum(), xg, allow_unused=True)
    except RuntimeError as exc:
        probe.differentiable = False
        return [Verdict(vid, name, "fail", f"no input gradients ({_first_line(exc)}): gradient attacks cannot "
                        "run; robustaudit attacks it with black-box attacks (square) instead")]
    if g_margin is None or g_ce is None:
        probe.differentiable = False
        return [Verdict(vid, name, "fail", "the output does not depend on the input through autograd: gradient "
                        "attacks cannot run; robustaudit attacks it with black-box attacks (square) instead")]
    n = len(x)
    finite = torch.isfinite(g_margin).flatten(1).all(1) & torch.isfinite(g_ce).flatten(1).all(1)
    dead = g_margin.flatten(1).abs().amax(1) <= 1e-12
    ce_dead = (g_ce.flatten(1).abs().amax(1) <= 1e-12) & ~dead
    n_bad, n_dead, n_ce = int((~finite).sum()), int(dead.sum()), int(ce_dead.sum())
    evidence = {"nonfinite": n_bad, "zero_margin_grad": n_dead, "zero_ce_grad_only": n_ce, "n": n}
    out = []
    if n_bad:
        out.append(Verdict(vid, name, "fail", f"input gradients are NaN or infinite on {share(n_bad, n)} samples: "
                           "gradient attacks step blindly there", evidence))
    elif n_dead > 0.05 * n:
        probe.dead_gradients = True
        out.append(Verdict(vid, name, "fail", f"input gradients are exactly zero on {share(n_dead, n)} samples "
                           "(quantization or another non-differentiable step?): gradient attacks stall; use "
                           "bpda(...) or black-box attacks", evidence))
    elif n_ce > 0.05 * n:
        out.append(Verdict(vid, name, "warn", f"cross-entropy gradients vanish on {share(n_ce, n)} samples while "
                           "margin gradients do not (saturated logits): attack with a margin loss "
                           "(pgd:loss=margin, apgd-t, cw)", evidence))
    else:
        out.append(Verdict(vid, name, "pass", "input gradients are finite and non-zero", evidence))
    if probe.randomized:  # a difference quotient of a random function measures the noise
        # randomized, or a sample's output depends on its batch (BatchNorm in training mode): either way
        # the same input does not give the same output, which a difference quotient needs
        out.append(Verdict("finite-differences", name, "warn", "skipped: the same input does not give the "
                           "same output (see deterministic), so a difference quotient measures that change, "
                           "not the gradient"))
    elif not n_bad and not probe.dead_gradients:
        out.append(_finite_difference_verdict(name, model, x, y, task, g_margin, seed, probe))
    return out


def _finite_difference_verdict(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task,
                               grad: torch.Tensor, seed: int, probe: Probe) -> Verdict:
    """Central differences of the margin along random ±1 directions against autograd's ``grad · d``.

    ``x (N, C, H, W)``, ``y (N,)``, ``grad`` like ``x`` (of the summed margin). Per sample and direction the
    error ``|fd - grad · d|`` is compared with ``_FD_RTOL * ||grad||_2`` plus the float32 rounding of the
    quotient; a sample agrees when the median over its directions does (a robust statistic: one direction
    that crosses a kink or a rounding boundary does not decide it).
    """
    vid = "finite-differences"
    gen = torch.Generator().manual_seed(seed)
    g = grad.double()
    scale = g.flatten(1).norm(dim=1)  # (N,)
    errors, tols = [], []
    with torch.no_grad():
        for _ in range(_FD_DIRECTIONS):
            d = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x.device, x.dtype)
            up_logits, down_logits = model(x + _FD_STEP * d), model(x - _FD_STEP * d)
            up = task.margin(up_logits, y).double()
            down = task.margin(down_logits, y).double()
            fd = (up - down) / (2 * _FD_STEP)
            ad = (g * d.double()).flatten(1).sum(1)
            size = torch.maximum(up_logits.detach().flatten(1).abs().amax(1), down_logits.detach().flatten(1).abs().amax(1))
            rounding = _FD_ROUNDING * _EPS32 * size.double() / _FD_STEP
            errors.append(((fd - ad).abs() / scale.clamp_min(1e-30)).cpu())
            tols.append((_FD_RTOL + rounding / scale.clamp_min(1e-30)).cpu())
    ratio = (torch.stack(errors) / torch.stack(tols)).median(dim=0).values  # (N,) per-sample median
    agree, total = int((ratio <= 1).sum()), len(x)
    rate = agree / total
    # an infinite margin (logits of inf) makes its quotient inf - inf = NaN: that sample disagrees (NaN <= 1 is
    # false) and the median error is taken over the finite ones (None when there is none)
    stacked = torch.stack(errors)  # (directions, N)
    finite = stacked[torch.isfinite(stacked)]
    evidence = {"agree": agree, "total": total, "step": _FD_STEP, "directions": _FD_DIRECTIONS,
                "median_error": round(float(finite.median()), 6) if finite.numel() else None, "rtol": _FD_RTOL}
    if rate >= 0.75:
        return Verdict(vid, name, "pass", f"finite differences agree with autograd on {share(agree, total)} samples "
                       f"(median over {_FD_DIRECTIONS} directions)", evidence)
    probe.dead_gradients = probe.dead_gradients or rate < 0.5
    status = "fail" if rate < 0.5 else "warn"
    return Verdict(vid, name, status, f"finite differences disagree with autograd on {share(total - agree, total)} "
                   f"samples (median over {_FD_DIRECTIONS} directions): the gradients do not describe the model "
                   "(shattered or approximated gradients); use bpda(...) or black-box attacks", evidence)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
