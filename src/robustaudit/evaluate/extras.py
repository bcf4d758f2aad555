"""What a classification audit runs after the matrix: sanity checks, detectors, the learned report.

Each takes the spec's resolved options and the opened subject; none re-defaults anything.
"""

from __future__ import annotations

from typing import Any

import torch

from robustaudit.evaluate.header import example_eps
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.runner import AttackEntry, Progress, run
from robustaudit.evaluate.spec import AuditSpec
from robustaudit.evaluate.store import Store
from robustaudit.evaluate.subject import Subject

__all__ = ["detectors", "learned", "sanity_checks"]


def learned(spec: AuditSpec, subject: Subject, result: ResultMatrix, ids: list[int],
            device: torch.device) -> dict[str, Any] | None:
    """``provenance["learned"]`` for the generators (ATN, AdvGAN) the runner fitted, else ``None``."""
    fitted = result.provenance.get("fitted") or {}
    if not fitted:
        return None
    from robustaudit.evaluate.learned import learned_report

    return learned_report(fitted, result.provenance.get("fits", []), subject.entries, subject.data, ids,
                          norm=spec.norm, device=device, batch_size=spec.batch_size, seed=spec.seed)


def detectors(spec: AuditSpec, subject: Subject, result: ResultMatrix, ids: list[int], device: torch.device,
              progress: Progress | None) -> dict[str, Any] | None:
    """Fit and evaluate ``spec.detectors``; append their ``MODEL+DETECTOR`` rows to ``result``; return the
    ``provenance["detection"]`` block (``None`` without detectors)."""
    if not spec.detectors:
        return None
    import pandas as pd

    from robustaudit.evaluate.detection import evaluate_detection

    wrapped = [e for e in subject.entries if not spec.defense_models or e.name in spec.defense_models]
    records, robust, block = evaluate_detection(
        wrapped, subject.data, ids, subject.attacks, list(spec.eps), detectors=list(spec.detectors),
        fpr=spec.defense_fpr, defense_data=spec.defense_data, norm=spec.norm, device=device, seed=spec.seed,
        batch_size=spec.batch_size, progress=progress)
    result.records = pd.concat([result.records, records], ignore_index=True)
    result.robust_ids.update(robust)
    return block


def sanity_checks(spec: AuditSpec, subject: Subject, result: ResultMatrix, ids: list[int], device: torch.device,
                  store: Store | None, progress: Progress | None) -> list[tuple[str, AttackEntry]]:
    """Fill ``result.checks``; at ``full``, run the adaptive attacks the probes call for over the whole
    audit and merge their columns. Returns the added ``(model, attack)`` columns."""
    if spec.checks == "off":
        return []
    from robustaudit.checks import adaptive_attacks, run_checks

    if progress is not None:
        progress.start("sanity checks", 1)
    grid = list(spec.eps)
    entries, data, attacks = subject.entries, subject.data, subject.attacks
    verdicts, probes = run_checks(entries, data, ids, attacks, result, level=spec.checks, grid=grid, norm=spec.norm,
                                  device=device, seed=spec.seed, batch_size=spec.batch_size)
    added: list[tuple[str, AttackEntry]] = []
    if spec.checks == "full":
        for entry in entries:
            extra = adaptive_attacks(probes[entry.name], entry.module, attacks) if entry.name in probes else []
            if not extra:
                continue
            more = run([entry], data, extra, grid, norm=spec.norm, ids=ids, batch_size=spec.batch_size,
                       device=device, seed=spec.seed, store=store, progress=progress,
                       example_eps=example_eps(entries, grid), reuse=spec.resume)
            result.add_columns(more)
            added += [(entry.name, a) for a in extra]
            counts = more.provenance.get("resume")
            if counts and "resume" in result.provenance:
                for key, value in counts.items():
                    result.provenance["resume"][key] += value
    result.checks = [v.to_dict() for v in verdicts]
    return added
