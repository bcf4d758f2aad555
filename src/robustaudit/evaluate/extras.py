"""What a classification audit runs after the matrix: sanity checks, detectors, the learned report, the
transferability matrix.

Each takes the spec's resolved options and the opened subject; none re-defaults anything. Their costly
part runs as a stage (:mod:`robustaudit.evaluate.stages`): stored when done, read back on resume.
"""

from __future__ import annotations

from typing import Any

import torch

from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.header import example_eps
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.runner import AttackEntry, Progress, run
from robustaudit.evaluate.spec import AuditSpec
from robustaudit.evaluate.stages import Stage, Stages, decode_checks, decode_detection, encode_checks, encode_detection
from robustaudit.evaluate.store import Store
from robustaudit.evaluate.subject import Subject

__all__ = ["detectors", "learned", "sanity_checks", "transfer"]


def transfer(spec: AuditSpec, subject: Subject, result: ResultMatrix, ids: list[int], device: torch.device,
             progress: Progress | None, stages: Stages) -> dict[str, Any] | None:
    """``provenance["transfer"]``: the transferability matrix at the summary eps (``None`` when ``spec.transfer``
    is off: one model, segmentation, or turned off)."""
    if not spec.transfer:
        return None
    from robustaudit.evaluate.transferability import transferability

    grid = list(spec.eps)
    return stages.run(Stage("transfer", lambda: transferability(
        subject.entries, subject.data, ids, subject.attacks, result, eps=example_eps(subject.entries, grid),
        norm=spec.norm, seed=spec.seed, device=device, batch_size=spec.batch_size, fast=spec.fast,
        progress=progress)))


def learned(spec: AuditSpec, subject: Subject, artifacts: Artifacts, ids: list[int],
            device: torch.device, stages: Stages) -> dict[str, Any] | None:
    """``provenance["learned"]`` for the generators (ATN, AdvGAN) the runner fitted, else ``None``."""
    if not artifacts.records:
        return None
    from robustaudit.evaluate.learned import learned_report

    return stages.run(Stage("learned", lambda: learned_report(
        artifacts.fitted(), artifacts.records, subject.entries, subject.data, ids, norm=spec.norm, device=device,
        batch_size=spec.batch_size, seed=spec.seed)))


def detectors(spec: AuditSpec, subject: Subject, result: ResultMatrix, ids: list[int], device: torch.device,
              progress: Progress | None, stages: Stages) -> dict[str, Any] | None:
    """Fit and evaluate ``spec.detectors``; append their ``MODEL+DETECTOR`` rows to ``result``; return the
    ``provenance["detection"]`` block (``None`` without detectors)."""
    if not spec.detectors:
        return None
    import pandas as pd

    from robustaudit.evaluate.detection import evaluate_detection

    wrapped = [e for e in subject.entries if not spec.defense_models or e.name in spec.defense_models]
    if not wrapped:  # the default detector wraps the standard digits CNN; another data's defaults have none
        return None
    records, robust, block = stages.run(Stage("detect", lambda: evaluate_detection(
        wrapped, subject.data, ids, subject.attacks, list(spec.eps), detectors=list(spec.detectors),
        fpr=spec.defense_fpr, defense_data=spec.defense_data, norm=spec.norm, device=device, seed=spec.seed,
        batch_size=spec.batch_size, progress=progress), encode_detection, decode_detection))
    if len(records):  # none when no attack is per-sample (the block's note says so)
        result.records = pd.concat([result.records, records], ignore_index=True)
    result.robust_ids.update(robust)
    return block


def sanity_checks(spec: AuditSpec, subject: Subject, result: ResultMatrix, ids: list[int], device: torch.device,
                  store: Store | None, progress: Progress | None, stages: Stages) -> list[tuple[str, AttackEntry]]:
    """Fill ``result.checks``; at ``full``, run the adaptive attacks the probes call for over the whole
    audit and merge their columns. Returns the added ``(model, attack)`` columns."""
    if spec.checks == "off":
        return []
    from robustaudit.checks import run_checks

    if progress is not None:
        progress.start("sanity checks", 1)
    grid = list(spec.eps)
    entries, data, attacks = subject.entries, subject.data, subject.attacks
    verdicts, probes = stages.run(Stage("checks", lambda: run_checks(
        entries, data, ids, attacks, result, level=spec.checks, grid=grid, norm=spec.norm, device=device,
        seed=spec.seed, batch_size=spec.batch_size), encode_checks, decode_checks))
    added: list[tuple[str, AttackEntry]] = []
    if spec.checks == "full":
        from robustaudit.checks.adaptive import answered, cheapest_first, estimate_passes, plan_adaptive
        from robustaudit.evaluate.result import WORST_CASE

        for entry in entries:
            if entry.name not in probes:
                continue
            mine = [k for k, v in enumerate(verdicts) if v.model == entry.name]
            columns = [a for (m, a, _e) in result.robust_ids if m == entry.name]
            plan = plan_adaptive([verdicts[k] for k in mine], probes[entry.name], attacks, columns)
            if plan.run:
                _announce(entry.name, plan.run, estimate_passes(plan.run, result, entry.name, grid), result, progress)
                # AutoAttack's cascade: each adaptive column attacks only what the audit and the cheaper
                # adaptive columns left standing (the worst case is the same; the cost is the survivors')
                standing = {float(e): set(result.robust_ids.get((entry.name, WORST_CASE, float(e)), ())) for e in grid}
                more = run([entry], data, cheapest_first(plan.run), grid, norm=spec.norm, ids=ids,
                           batch_size=spec.batch_size, device=device, seed=spec.seed, store=store, progress=progress,
                           example_eps=example_eps(entries, grid), reuse=spec.resume, standing=standing)
                result.add_columns(more)
                if more.provenance.get("verdict_spread"):
                    result.provenance.setdefault("verdict_spread", []).extend(more.provenance["verdict_spread"])
                added += [(entry.name, a) for a in plan.run]
                counts = more.provenance.get("resume")
                if counts and "resume" in result.provenance:
                    for key, value in counts.items():
                        result.provenance["resume"][key] += value
            ran = {a for (m, a, _e) in result.robust_ids if m == entry.name}
            for k, v in zip(mine, answered([verdicts[k] for k in mine], plan, ran)):
                verdicts[k] = v
    result.checks = [v.to_dict() for v in verdicts]
    return added


#: An adaptive evaluation expected to take longer than this (seconds) is announced with a warning.
ANNOUNCE_SECONDS = 30.0


def _announce(model: str, extra: list[AttackEntry], passes: int, result: ResultMatrix,
              progress: Progress | None) -> None:
    """Show the cost estimate of ``model``'s adaptive columns before they run: on the progress bar, and as a
    warning when it exceeds :data:`ANNOUNCE_SECONDS` at the audit's own measured seconds per pass."""
    import warnings

    from robustaudit.evaluate.result import WORST_CASE

    rows = result.records[(result.records["model"] == model) & (result.records["attack"] != WORST_CASE)]
    spent = float(rows["seconds"].sum())
    done = float(rows[["forward_passes", "backward_passes"]].fillna(0).to_numpy().sum())
    seconds = passes * spent / done if done > 0 else float("nan")
    names = ", ".join(a.name for a in extra)
    text = f"adaptive attacks for {model} ({names}): about {passes:,} passes" + (
        f", ~{seconds:.0f} s" if seconds == seconds else "")
    if progress is not None:
        progress.start(text, 1)
    if seconds == seconds and seconds > ANNOUNCE_SECONDS:
        warnings.warn(f"--checks full: {text} before they finish", stacklevel=3)
