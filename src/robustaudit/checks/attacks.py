"""Checks of the attacks' figures, on evidence the engine did not enforce.

The runner makes every curve monotone by construction (survivors only) and never compares attacks with
each other, so these checks run their own, independent attacks on a small subsample and compare per
sample, paired: "of the samples attack A broke, how many did attack B, which should be at least as
strong, miss?". The counts are judged by :func:`~robustaudit.checks.verdict.paired_status`, whose
tolerance grows with the sample size so honest noise stays quiet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.checks.masking import black_vs_white, n_clean, random_noise
from robustaudit.checks.probes import Probe
from robustaudit.checks.variants import iterative_attack, variant
from robustaudit.checks.verdict import Verdict, paired_status, share, tolerance
from robustaudit.core.task import Task
from robustaudit.core.threat import ThreatModel
from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.evaluate.runner import AttackEntry


@dataclass
class Context:
    """One model's subsample and what the audit found on it.

    ``x (m, C, H, W)`` / ``y (m,)`` on the model's device, ``ids (m,)`` their sample ids;
    ``clean (m,)`` bool: classified correctly on clean data.
    """

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    clean: torch.Tensor
    n_audit: int
    attacks: Sequence[AttackEntry]
    result: ResultMatrix
    grid: Sequence[float]
    norm: str
    seed: int
    batch_size: int
    task: Task
    probe: Probe
    level: str

    # ------------------------------------------------------------------ evidence
    def audit_robust(self, attack: str, eps: float) -> torch.Tensor:
        """Per subsample row: robust under the audit's ``attack`` at ``eps``. ``(m,)`` bool (CPU)."""
        robust = set(self.result.robust_ids.get((self.name, attack, eps), ()))
        return torch.tensor([int(i) in robust for i in self.ids.tolist()], dtype=torch.bool)

    def audit_attacked(self, attack: str, eps: float) -> torch.Tensor:
        """Per subsample row: the audit ran ``attack`` on it at ``eps`` (the survivors of the smaller eps).
        ``(m,)`` bool (CPU); all ``False`` when the audit did not record which samples it attacked."""
        out = torch.zeros(len(self.ids), dtype=torch.bool)
        cells = self.result.outcomes.cells if self.result.outcomes is not None else []
        cell = next((c for c in cells if c.key == (self.name, attack, float(eps))), None)
        if cell is not None and cell.attacked is not None:
            attacked = set(cell.attacked)
            out = torch.tensor([int(i) in attacked for i in self.ids.tolist()], dtype=torch.bool)
        return out

    def robust_after(self, attack: Attack, eps: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attack subsample ``rows`` (default all) at ``eps``; per row: still correct. ``(m,)`` bool (CPU);
        rows not attacked are ``False``."""
        rows = torch.arange(len(self.x)) if rows is None else rows
        out = torch.zeros(len(self.x), dtype=torch.bool)
        threat = ThreatModel(self.norm, eps)
        for start in range(0, len(rows), self.batch_size):
            r = rows[start : start + self.batch_size]
            xs, ys = self.x[r.to(self.x.device)], self.y[r.to(self.y.device)]
            adv = attack(self.model, xs, ys, threat, ids=self.ids[r], seed=self.seed, task=self.task)
            with torch.no_grad():
                out[r] = self.task.correct(self.model(adv), ys).cpu()
        return out

    @property
    def correct_rows(self) -> torch.Tensor:
        return self.clean.nonzero().flatten()

    def of(self, kinds: tuple[AttackKind, ...]) -> list[AttackEntry]:
        return [a for a in self.attacks if a.attack.kind in kinds]

    def probe_eps(self) -> float:
        """The grid eps where the worst case is nearest 50%: where a stronger attack can move the most."""
        rows = self.result.records
        rows = rows[(rows["model"] == self.name) & (rows["attack"] == WORST_CASE)]
        if rows.empty:
            return float(self.grid[len(self.grid) // 2])
        best = rows.iloc[(rows["robust_accuracy"] - 0.5).abs().argsort().iloc[0]]
        return float(best["eps"])


def attack_verdicts(ctx: Context) -> list[Verdict]:
    """Every attack-level check for one model, cheapest first."""
    out = [*_step_reach(ctx), _eps_zero(ctx)]
    if ctx.norm not in ("linf", "l2", "l1"):  # a patch's eps is an area, not a ball PGD or noise could fill
        return out
    if ctx.probe.differentiable and len(ctx.correct_rows):
        out.extend(_independent_sweep(ctx))
        out.extend(_large_eps(ctx))
        out.extend(_single_vs_iterative(ctx))
        out.extend(_more_effort(ctx))
        out.extend(_loss_gap(ctx))
    if len(ctx.correct_rows):
        out.append(random_noise(ctx))
    out.extend(black_vs_white(ctx))
    return out


# ---------------------------------------------------------------------------------------- helpers
def _iterative(ctx: Context) -> AttackEntry | None:
    """The audit's first iterative white-box attack with a ``steps`` setting (the one checks vary)."""
    return iterative_attack(ctx.of((AttackKind.FIXED_EPS,)))


def _default_pgd(**settings: object) -> Attack:
    from robustaudit.attacks.gradient import PGD

    return _compacting(PGD(**settings))  # type: ignore[arg-type]


def _compacting(attack: Attack) -> Attack:
    """``attack`` with its finished samples dropped from the batch after every step, where it has the
    setting. The checks re-attack mostly samples that break at the first steps (samples the audit broke at a
    smaller eps, a ball half the box wide); dropped every 5 steps, as in the audit, each would still pay
    about five forward+backward passes after it broke. Outcomes do not change: an attack that drops samples
    is batch-independent (the contract test holds it to that), so a sample's iterates are the same in a
    smaller batch; only the host synchronisation each drop costs, negligible at the checks' 32 samples."""
    settings = attack.settings()
    if settings.get("compact_every", 1) == 1:
        return attack
    return type(attack)(**{**settings, "compact_every": 1})


def _box_radius(ctx: Context) -> float:
    """The smallest radius whose ball around any input covers the whole [0, 1] box."""
    d = ctx.x[0].numel()
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}.get(ctx.norm, 1.0)


# ---------------------------------------------------------------------------------------- checks
def _step_reach(ctx: Context) -> list[Verdict]:
    out = []
    for a in ctx.attacks:
        alpha: Callable[[float], float] | None = getattr(a.attack, "alpha", None)
        steps = a.attack.settings().get("steps")
        if not callable(alpha) or not isinstance(steps, int):  # APGD's alpha is its momentum, not a step
            continue
        short = [e for e in ctx.grid if e > 0 and steps * alpha(e) < e * (1 - 1e-9)]
        if short:
            e = short[-1]
            out.append(Verdict("step-reach", ctx.name, "warn", f"{a.name}: {steps} steps of {alpha(e):.3g} cover "
                               f"{steps * alpha(e):.3g} < eps={e:g}: the attack cannot reach the ball's boundary; "
                               "raise steps or the step size", {"attack": a.name, "eps": short}))
        else:
            out.append(Verdict("step-reach", ctx.name, "pass", f"{a.name}: steps × step size reaches every eps",
                               {"attack": a.name}))
    return out


def _eps_zero(ctx: Context) -> Verdict:
    """eps = 0 through the first attack, in reversed batch order: must reproduce the clean predictions."""
    a = ctx.attacks[0]
    rows = torch.arange(len(ctx.x) - 1, -1, -1)
    robust = ctx.robust_after(a.attack, 0.0, rows)
    diff = int((robust != ctx.clean).sum())
    if diff:
        return Verdict("eps-zero", ctx.name, "fail", f"at eps=0 {share(diff, len(ctx.x))} samples are judged "
                       "differently from the clean pass: predictions depend on the batch or on chance",
                       {"differing": diff})
    return Verdict("eps-zero", ctx.name, "pass", f"eps=0 reproduces the clean predictions on {len(ctx.x)} samples")


def _independent_sweep(ctx: Context) -> list[Verdict]:
    """Each eps attacked on its own (no survivor cascade), every subsample row, clean errors included."""
    fixed = ctx.of((AttackKind.FIXED_EPS,))
    a = _iterative(ctx) or (fixed[0] if fixed else None)
    if a is None:
        return []
    # Where the audit ran this attack on a sample at an eps (every clean-correct sample at the smallest eps,
    # the survivors of the smaller ones above it), that run was already independent of every other eps:
    # same attack, same keyed randomness, same start from the clean point. Its outcome is read back, and
    # only the other rows (clean errors, samples the audit broke at a smaller eps) are attacked here.
    robust = []
    for e in ctx.grid:
        reuse = ctx.audit_attacked(a.name, e)
        fresh = ctx.robust_after(_compacting(a.attack), e, (~reuse).nonzero().flatten())
        robust.append(torch.where(reuse, ctx.audit_robust(a.name, e), fresh))
    revived = int(sum(int((r & ~ctx.clean).sum()) for r in robust))
    out = [Verdict("robust-le-clean", ctx.name, "pass" if revived == 0 else "fail",
                   f"{a.name} never turned a misclassified sample correct" if revived == 0 else
                   f"{a.name} turned {revived} misclassified sample-eps pairs correct: the attack moves towards "
                   "the label (a sign error?)", {"attack": a.name, "revived": revived})]
    # a sample robust at a larger eps but broken at a smaller one: the attack missed a point it had found
    # inside a smaller ball, which the larger ball contains
    reversals = sum(int((robust[j] & ~robust[k] & ctx.clean).sum())
                    for k in range(len(robust)) for j in range(k + 1, len(robust)))
    n = int(ctx.clean.sum())
    pairs = max(1, len(robust) - 1)
    status = paired_status(reversals, n * pairs) if len(robust) > 1 else "pass"
    acc = ", ".join(f"{e:g}: {float(r[ctx.clean].float().mean()):.2f}" for e, r in zip(ctx.grid, robust))
    out.append(Verdict("monotone-eps", ctx.name, status,
                       f"{a.name} run independently per eps on {n} samples: accuracy {acc}; "
                       f"{reversals} sample(s) robust at a larger eps but broken at a smaller one"
                       + ("" if status == "pass" else ": the attack is unreliable (noisy or masked gradients)"),
                       {"attack": a.name, "reversals": reversals, "tolerance": tolerance(n * pairs)}))
    return out


def _large_eps(ctx: Context) -> list[Verdict]:
    box = _box_radius(ctx)
    rows = ctx.correct_rows
    n = len(rows)
    pgd = _default_pgd(steps=50, loss="margin", random_start=False)
    out = []
    for vid, eps, want in (("large-eps", box / 2, "about zero"), ("unbounded", box, "zero")):
        robust = ctx.robust_after(pgd, eps, rows)
        left = int(robust.sum())
        # the same PGD broke the other rows inside half the box, a ball the whole box contains: only
        # what it left standing needs the unbounded run
        rows = robust.nonzero().flatten()
        if vid == "unbounded":
            status = "pass" if left == 0 else ("warn" if left <= tolerance(n) else "fail")
        else:
            status = paired_status(left, n)
        message = f"PGD at eps={eps:g} leaves {share(left, n)} samples correct (expected {want})"
        if status != "pass":
            message += ": gradients do not lead out of the class; suspect gradient masking"
        out.append(Verdict(vid, ctx.name, status, message, {"eps": eps, "robust": left, "n": n}))
    return out


def _single_vs_iterative(ctx: Context) -> list[Verdict]:
    single = [a for a in ctx.of((AttackKind.FIXED_EPS,)) if type(a.attack).__name__ == "FGSM"]
    # an attack steering to one class (ILLC) is not an untargeted attack done better: FGSM may beat it
    iterative = [a for a in ctx.of((AttackKind.FIXED_EPS,))
                 if a not in single and getattr(a.attack, "untargeted_objective", True)]
    if not single and not iterative:
        return []
    out = []
    rows = ctx.correct_rows
    if single and iterative:  # both in the audit: compare over every audited sample for free
        pairs = [(s, it) for s in single for it in iterative]
        for s, it in pairs:
            worst = (0, ctx.grid[0])
            for e in ctx.grid:
                s_ok = set(ctx.result.robust_ids.get((ctx.name, s.name, e), ()))
                it_ok = set(ctx.result.robust_ids.get((ctx.name, it.name, e), ()))
                missed = len(it_ok - s_ok)  # broken by the single step, robust under the iterative attack
                worst = max(worst, (missed, e))
            n = n_clean(ctx)
            out.append(_single_verdict(ctx, s.name, it.name, worst, n))
        return out
    from robustaudit.attacks.gradient import FGSM

    if single:  # the audit ran only FGSM: a default PGD on the subsample must do at least as well
        strong, strong_name = _default_pgd(steps=20), "pgd (check)"
        worst = max(((int((~ctx.audit_robust(single[0].name, e)[rows] & ctx.robust_after(strong, e, rows)[rows]).sum()), e)
                     for e in ctx.grid), default=(0, ctx.grid[0]))
        out.append(_single_verdict(ctx, single[0].name, strong_name, worst, len(rows)))
    else:
        weak = FGSM()
        it = iterative[0]
        worst = max(((int((~ctx.robust_after(weak, e, rows)[rows] & ctx.audit_robust(it.name, e)[rows]).sum()), e)
                     for e in ctx.grid), default=(0, ctx.grid[0]))
        out.append(_single_verdict(ctx, "fgsm (check)", it.name, worst, len(rows)))
    return out


def _single_verdict(ctx: Context, single: str, iterative: str, worst: tuple[int, float], n: int) -> Verdict:
    missed, eps = worst
    status = paired_status(missed, n)
    message = (f"{iterative} misses {share(missed, n)} samples that {single} breaks (worst eps={eps:g})")
    if status != "pass":
        message += ": the iterative attack is weaker than one gradient step; gradient masking or a bad step size"
    return Verdict("iterative-vs-single-step", ctx.name, status, message,
                   {"single": single, "iterative": iterative, "missed": missed, "eps": eps, "n": n})


def _more_effort(ctx: Context) -> list[Verdict]:
    """Double the steps (and, at ``full``, the restarts) of the audit's iterative attack at the probe eps."""
    a = _iterative(ctx)
    if a is None:
        return []
    eps = ctx.probe_eps()
    base = ctx.audit_robust(a.name, eps)
    n = len(ctx.correct_rows)
    rows = base.nonzero().flatten()  # only what the audit left standing can be newly broken
    settings = a.attack.settings()
    changes = [("steps", {"steps": 2 * settings["steps"]})]
    if ctx.level == "full" and isinstance(settings.get("restarts"), int):
        changes.append(("restarts", {"restarts": 2 * settings["restarts"]}))
    out = []
    for what, change in changes:
        stronger = variant(a.attack, **change)
        if stronger is None:
            continue
        robust = ctx.robust_after(stronger, eps, rows)
        newly = int((base[rows] & ~robust[rows]).sum())
        status = paired_status(newly, n)
        message = (f"{a.name} with {what} doubled breaks {share(newly, n)} more samples at eps={eps:g}")
        if status != "pass":
            message += ": the figure has not converged; raise the attack's " + what
        out.append(Verdict(f"more-{what}", ctx.name, status, message,
                           {"attack": a.name, "eps": eps, "newly_broken": newly, "n": n, **change}))
    return out


def _loss_gap(ctx: Context) -> list[Verdict]:
    a = _iterative(ctx)
    if a is None or a.attack.settings().get("loss") not in ("ce", "margin"):
        return []
    loss = a.attack.settings()["loss"]
    other = "margin" if loss == "ce" else "ce"
    switched = variant(a.attack, loss=other)
    if switched is None:
        return []
    eps = ctx.probe_eps()
    base = ctx.audit_robust(a.name, eps)
    rows = base.nonzero().flatten()  # only what the audit left standing can show a gap
    robust = ctx.robust_after(switched, eps, rows)
    gap = int((base[rows] & ~robust[rows]).sum())
    n = len(ctx.correct_rows)
    status = paired_status(gap, n)
    message = f"{a.name} with loss={other} breaks {share(gap, n)} samples that loss={loss} missed at eps={eps:g}"
    if status != "pass":
        message += (": saturated logits or label smoothing flatten cross-entropy; add a margin-loss attack "
                    "(apgd-t, cw, pgd:loss=margin)")
    return [Verdict("loss-gap", ctx.name, status, message, {"attack": a.name, "other_loss": other, "eps": eps,
                                                            "gap": gap, "n": n})]
