"""Gradient-masking checks: random noise and black-box attacks against what the white-box attacks left.

:func:`~robustaudit.checks.attacks.attack_verdicts` runs them last. Both compare the audit's gradient
attacks with attacks that need no gradient, so a gap points at masking.
"""

from __future__ import annotations

from typing import Any

import torch

from robustaudit.attacks.base import AttackKind
from robustaudit.checks.verdict import Verdict, paired_status, share, tolerance
from robustaudit.core.rng import stream_key

#: :class:`robustaudit.checks.attacks.Context`, which runs these checks (importing it here would be a cycle)
Context = Any

WHITE_BOX = (AttackKind.FIXED_EPS, AttackKind.MINIMAL_NORM)
BLACK_BOX = (AttackKind.SCORE_BASED, AttackKind.DECISION_BASED, AttackKind.TRANSFER)
#: Random-noise draws per sample and eps.
NOISE_DRAWS = 8


def n_clean(ctx: Context) -> int:
    """Clean-correct samples of ``ctx``'s model in the audit (the subsample's count if it has no rows)."""
    rows = ctx.result.records
    rows = rows[rows["model"] == ctx.name]
    return int(rows["n_clean_correct"].iloc[0]) if not rows.empty else int(ctx.clean.sum())


def random_noise(ctx: Context) -> Verdict:
    """Random corners of the ball (Linf: ±eps per pixel) must not break what every attack left standing."""
    rows = ctx.correct_rows
    x, y = ctx.x[rows.to(ctx.x.device)], ctx.y[rows.to(ctx.y.device)]
    gen = torch.Generator().manual_seed(stream_key(ctx.seed, "checks", "noise") % (2**63))
    worst = (0, ctx.grid[0])
    for e in ctx.grid:
        standing = torch.ones(len(rows), dtype=torch.bool)
        for a in ctx.attacks:
            standing &= ctx.audit_robust(a.name, e)[rows]
        broken = torch.zeros(len(rows), dtype=torch.bool)
        # only what every attack left standing can count, so only it goes through the model; the draws are
        # made for every row all the same, so each sample meets the same noise whatever stands
        keep = standing.nonzero().flatten().to(x.device)
        for _ in range(NOISE_DRAWS):
            noisy = _noise(x, e, ctx.norm, gen)
            if len(keep):
                with torch.no_grad():
                    broken[keep.cpu()] |= ~ctx.task.correct(ctx.model(noisy[keep]), y[keep]).cpu()
        worst = max(worst, (int((broken & standing).sum()), e))
    missed, eps = worst
    n = len(rows)
    status = "pass" if missed <= tolerance(n) else "fail"
    message = f"random noise breaks {share(missed, n)} samples that every attack left robust (worst eps={eps:g})"
    if status != "pass":
        message += ": the attacks' gradients point the wrong way; suspect gradient masking"
    return Verdict("random-noise", ctx.name, status, message, {"missed": missed, "eps": eps, "n": n,
                                                               "draws": NOISE_DRAWS})


def _noise(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    shape = x.shape
    if norm == "linf":
        d = (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(x.dtype) * eps
    else:
        g = torch.randn(shape, generator=gen)
        p = 2 if norm == "l2" else 1
        d = g / g.flatten(1).norm(p=p, dim=1).clamp_min(1e-12).view(-1, *[1] * (len(shape) - 1)) * eps
    return (x + d.to(x.device)).clamp(0, 1)


def black_vs_white(ctx: Context) -> list[Verdict]:
    """Black-box and transfer attacks must not break what the white-box attacks left standing."""
    # the white-box columns the matrix holds: on a model without input gradients they were skipped (the
    # runner's square stands in), and there is nothing to compare with (running Square here would be waste)
    white = [w for w in ctx.of(WHITE_BOX) if any((ctx.name, w.name, e) in ctx.result.robust_ids for e in ctx.grid)]
    black = ctx.of(BLACK_BOX)
    if not white:
        return []
    out = []
    n = n_clean(ctx)
    for b in black:
        worst = (0, ctx.grid[0])
        for e in ctx.grid:
            standing = set.intersection(*(set(ctx.result.robust_ids.get((ctx.name, w.name, e), ())) for w in white))
            b_ok = set(ctx.result.robust_ids.get((ctx.name, b.name, e), ()))
            worst = max(worst, (len(standing - b_ok), e))
        out.append(_bb_verdict(ctx, b.name, worst, n))
    if not black and ctx.level == "full" and len(ctx.correct_rows):
        from robustaudit.attacks.square import Square

        rows = ctx.correct_rows
        square = Square(queries=1000)
        worst = (0, ctx.grid[0])
        for e in sorted({ctx.probe_eps(), ctx.grid[-1]}):
            standing = torch.ones(len(ctx.x), dtype=torch.bool)
            for w in white:
                standing &= ctx.audit_robust(w.name, e)
            # only what every white-box attack left standing can count: Square attacks nothing else (its
            # draws are keyed per sample, so each attacked sample's outcome is the same)
            robust = ctx.robust_after(square, e, rows[standing[rows]])
            worst = max(worst, (int((standing[rows] & ~robust[rows]).sum()), e))
        out.append(_bb_verdict(ctx, "square (check)", worst, len(rows)))
    return out


def _bb_verdict(ctx: Context, name: str, worst: tuple[int, float], n: int) -> Verdict:
    missed, eps = worst
    status = paired_status(missed, n)
    message = f"{name} breaks {share(missed, n)} samples that every white-box attack missed (worst eps={eps:g})"
    if status != "pass":
        message += ": the white-box gradients are unreliable (masking); trust the black-box figure"
    return Verdict("blackbox-vs-whitebox", ctx.name, status, message, {"attack": name, "missed": missed,
                                                                       "eps": eps, "n": n})
