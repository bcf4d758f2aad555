"""Transferability (issue 18): adversarial examples crafted on each audited model, scored on every other.

For a classification audit of two models or more, a source × target matrix at the summary eps
(:func:`~robustaudit.evaluate.header.example_eps`, the eps of the 2×2 table) with one attack, the audit's
strongest (:func:`pick_attack`). Cell ``(s, t)`` is the share of the samples that *both* ``s`` and ``t``
classify correctly on clean data whose adversarial point crafted on ``s`` makes ``t`` wrong, with its 95%
Wilson interval; the diagonal ``(s, s)`` is ``s``'s own white-box figure on its clean-correct samples.

The runner keeps per-sample outcomes, not adversarial images, so the points are crafted again, by the
runner itself: the attack's column for each source at the summary eps alone (the runner's batches, keyed
draws, precision and out-of-memory halving), every clean-correct sample attacked once at that radius. Each
point is scored on the other models as the attack returns it (:class:`_Scoring`), so the images are never
all held at once. One radius for every point, not the matrix's sweep: in the sweep a sample broken at a
smaller eps keeps that smaller perturbation, which transfers less, and a transfer rate read from it would
make the targets look more robust than they are. So the diagonal is the attack run once at eps; it equals
the matrix's cell when eps is the grid's smallest, and is at most the matrix's figure otherwise (the sweep
is a worst case over the smaller radii too), which each diagonal cell records beside it (``matrix``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from robustaudit.attacks.base import AttackKind, UniversalAttack
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.task import predictions
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.entries import AttackEntry, ModelEntry, NoProgress, Progress
from robustaudit.evaluate.fastpath import FastPath
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.runner import run
from robustaudit.evaluate.samples import model_forward

__all__ = ["SOURCE_KINDS", "clean_correct", "pick_attack", "transferability"]

#: Attack kinds whose points can be scored on another model: one point per sample inside the eps-ball, white-box
#: first (a minimal-norm attack's point may lie outside the ball, a universal or transfer attack is not crafted on
#: the source alone).
SOURCE_KINDS = (AttackKind.FIXED_EPS, AttackKind.SCORE_BASED, AttackKind.DECISION_BASED)


def clean_correct(result: ResultMatrix) -> dict[str, set[int]]:
    """Per model, the ids it classifies correctly on clean data (shards of a torchrun audit united)."""
    if result.outcomes is None:
        raise ValueError("transferability needs the matrix's per-sample outcomes (a result of run())")
    out: dict[str, set[int]] = {}
    for c in result.outcomes.clean:
        out.setdefault(c.model, set()).update(c.correct)
    return out


def pick_attack(result: ResultMatrix, models: Sequence[str], attacks: Sequence[AttackEntry],
                eps: float) -> tuple[AttackEntry, dict[str, float]] | None:
    """The audit's strongest attack at ``eps``, and the mean robust accuracy of each candidate over the models.

    Candidates: the audit's attacks of :data:`SOURCE_KINDS` with a matrix cell at ``eps``. Preferred, in order: a
    white-box (fixed-eps) attack over a black-box one, the one with cells for more models (a model without
    input gradients has no gradient column), the lowest mean robust accuracy over its models, the first given.
    ``None`` when there is no candidate.
    """
    clean = clean_correct(result)
    scores: dict[str, float] = {}
    ranked = []
    for k, a in enumerate(attacks):
        if isinstance(a.attack, UniversalAttack) or a.attack.kind not in SOURCE_KINDS:
            continue
        have = [m for m in models if (m, a.name, eps) in result.robust_ids]
        if not have:
            continue
        n = sum(len(clean.get(m, ())) for m in have)
        broken = sum(len(clean.get(m, ())) - len(result.robust_ids[(m, a.name, eps)]) for m in have)
        # robust accuracy over the clean-correct samples, pooled over the models
        scores[a.name] = 1.0 - broken / n if n else 1.0
        ranked.append(((a.attack.kind is not AttackKind.FIXED_EPS, -len(have), scores[a.name], k), a))
    if not ranked:
        return None
    return min(ranked, key=lambda r: r[0])[1], scores


class _Scoring:
    """The attack as the runner calls it, each returned batch scored on the other models as it comes.

    ``fooled[target][id]``: whether the point made ``target`` wrong. A sample the runner attacks again at a
    larger eps (it survived the smaller one) is scored again, so what stays is the point the matrix scored
    last for it: the one that broke it, or the attack's point at the largest eps replayed.
    """

    def __init__(self, attack: Any, targets: Sequence[ModelEntry]) -> None:
        self.attack = attack
        # what the runner reads of an attack besides calling it
        self.name, self.kind, self.norms = attack.name, attack.kind, attack.norms
        self.targets = list(targets)
        self.fooled: dict[str, dict[int, bool]] = {t.name: {} for t in self.targets}

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 **kwargs: Any) -> torch.Tensor:
        """``adv (B, C, H, W)`` of the wrapped attack for ``x (B, C, H, W)``, ``y (B,)``; scores it on the targets."""
        adv = self.attack(model, x, y, threat, **kwargs)
        ids = [int(i) for i in kwargs["ids"]]
        with torch.no_grad():
            for t in self.targets:
                wrong = predictions(model_forward(t.module, adv, t.name)) != y
                self.fooled[t.name].update(zip(ids, wrong.tolist()))
        return adv


class _Prefixed:
    """The progress sink with every stage's description prefixed (the replay's bars read apart from the matrix's)."""

    def __init__(self, bar: Progress, prefix: str) -> None:
        self.bar, self.prefix = bar, prefix

    def start(self, description: str, total: int) -> None:
        self.bar.start(self.prefix + description, total)

    def advance(self, amount: int) -> None:
        self.bar.advance(amount)


def transferability(entries: Sequence[ModelEntry], data: ImageData, ids: Sequence[int],
                    attacks: Sequence[AttackEntry], result: ResultMatrix, *, eps: float, norm: str, seed: int,
                    device: torch.device, batch_size: int, fast: FastPath | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """The ``provenance["transfer"]`` block (see the module docstring): ``attack``, ``eps``, ``norm``, ``models``
    (the targets, in audit order), ``sources``, ``candidates`` (mean robust accuracy of each candidate attack
    over the clean-correct samples), ``cells`` (``source``, ``target``, ``n``, ``fooled``, ``rate``, ``ci``,
    ``white_box``; a diagonal cell adds ``matrix``, the matrix's cell at eps), ``passes`` (forward and backward,
    in samples, the crafting spent), ``seconds``; or ``{"skipped": reason}``."""
    t0 = time.perf_counter()
    names = [e.name for e in entries]
    picked = pick_attack(result, names, attacks, eps)
    if picked is None:
        return {"skipped": f"no attack of the audit crafts one point per sample within eps={eps:g} (fixed-eps, "
                           "score- or decision-based; not universal or minimal-norm)"}
    a, candidates = picked
    clean = clean_correct(result)
    sources = [e for e in entries if (e.name, a.name, eps) in result.robust_ids]
    bar = progress or NoProgress()
    _announce(bar, result, a.name, sources, clean, eps)
    passes = 0
    fooled: dict[tuple[str, str], dict[int, bool]] = {}
    with ExitStack() as stack:  # the targets on the device, in eval mode, for the whole crafting
        for e in entries:
            stack.enter_context(on_device(e.module, device))
            stack.enter_context(eval_mode(e.module))
        for s in sources:
            scoring = _Scoring(a.attack, [e for e in entries if e.name != s.name])
            # the runner's own batches, keyed draws, precision and out-of-memory halving; one eps: no cascade
            alone = run([s], data, [AttackEntry(a.name, scoring)], [eps], norm=norm, ids=ids,  # type: ignore[arg-type]
                        batch_size=batch_size, device=device, seed=seed, progress=_Prefixed(bar, "transfer · "),
                        example_eps=eps, examples_per_cell=0, fast=fast)
            rows = alone.records[alone.records["attack"] == a.name]
            passes += int(rows[["forward_passes", "backward_passes"]].fillna(0).to_numpy().sum())
            robust = set(alone.robust_ids.get((s.name, a.name, eps), ()))
            fooled[(s.name, s.name)] = {i: i not in robust for i in clean_correct(alone).get(s.name, ())}
            fooled.update({(s.name, t): d for t, d in scoring.fooled.items()})
    cells = [_cell(s.name, t, clean, fooled) for s in sources for t in names]
    for c in cells:
        if c["white_box"]:  # the matrix's figure beside it: a sweep over the smaller eps first, a worst case
            n = len(clean.get(c["source"], ()))
            c["matrix"] = {"n": n, "fooled": n - len(result.robust_ids[(c["source"], a.name, eps)])}
    return {"attack": a.name, "eps": float(eps), "norm": norm, "models": names, "sources": [s.name for s in sources],
            "candidates": candidates, "cells": cells, "passes": passes, "seconds": round(time.perf_counter() - t0, 3)}


def _cell(source: str, target: str, clean: dict[str, set[int]],
          fooled: dict[tuple[str, str], dict[int, bool]]) -> dict[str, Any]:
    """One cell: of the samples both models classify correctly on clean data, how many of the points crafted on
    ``source`` make ``target`` wrong (the diagonal: ``source`` itself, the white-box figure)."""
    scores = fooled[(source, target)]
    # every sample the matrix found clean-correct for the source was attacked (the same clean pass); one the
    # crafting did not see is left out rather than guessed
    both = [i for i in sorted(clean.get(source, set()) & clean.get(target, set())) if i in scores]
    n, k = len(both), sum(scores[i] for i in both)
    lo, hi = wilson_interval(k, n)
    return {"source": source, "target": target, "n": n, "fooled": k, "rate": k / n if n else None, "ci": [lo, hi],
            "white_box": source == target}


def _announce(bar: Progress, result: ResultMatrix, attack: str, sources: Sequence[ModelEntry],
              clean: dict[str, set[int]], eps: float) -> None:
    """Put the crafting's cost on the progress line before it runs: every clean-correct sample of each source
    attacked once at ``eps``, at the passes and seconds per attacked sample the matrix spent on the attack."""
    recs = result.records
    passes = seconds = 0.0
    for s in sources:
        rows = recs[(recs["model"] == s.name) & (recs["attack"] == attack) & (recs["eps"] <= eps)]
        attacked = float(rows["n_attacked"].fillna(0).sum())
        if attacked > 0:
            share = len(clean.get(s.name, ())) / attacked
            passes += share * float(rows[["forward_passes", "backward_passes"]].fillna(0).to_numpy().sum())
            seconds += share * float(rows["seconds"].fillna(0).sum())
    bar.start(f"transferability: {attack} at eps {eps:g} on {len(sources)} models, scored on every other "
              f"(about {passes:,.0f} passes, ~{seconds:.0f} s)", 1)
