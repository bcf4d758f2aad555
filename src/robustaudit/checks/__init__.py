"""Sanity checks: verdicts on whether an audit's figures can be trusted (``--checks off|basic|full``).

``basic`` (the default) probes each model on a small subsample and runs a few independent attacks there;
``full`` uses a larger subsample, doubles restarts too, runs a black-box attack when the audit has none,
and answers every failing verdict with the adaptive evaluation :data:`robustaudit.checks.adaptive.ADAPTIVE`
maps it to (margin loss, BPDA, Square, EOT, the black-box result), which the caller runs over the whole
audit and merges into the worst case. See ``docs/checks.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robustaudit.checks.attacks import Context, attack_verdicts
from robustaudit.checks.probes import Probe, probe_model
from robustaudit.checks.verdict import Verdict
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.data.base import ImageData
from robustaudit.evaluate.options import CHECK_LEVELS as LEVELS
from robustaudit.evaluate.options import check_checks
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.runner import AttackEntry, ModelEntry

__all__ = ["LEVELS", "Probe", "Verdict", "check_level", "run_checks"]

#: Subsample size per model and level: small enough for basic to cost a fraction of the audit.
SUBSAMPLE = {"basic": 32, "full": 128}


def check_level(level: str) -> str:
    """Validate ``--checks`` (the one validator: :func:`robustaudit.evaluate.options.check_checks`)."""
    return check_checks(level)


def run_checks(
    models: Sequence[ModelEntry],
    data: ImageData,
    ids: Sequence[int],
    attacks: Sequence[AttackEntry],
    result: ResultMatrix,
    *,
    level: str = "basic",
    grid: Sequence[float],
    norm: str,
    device: torch.device,
    seed: int = 0,
    batch_size: int = 256,
    task: Task = CLASSIFICATION,
) -> tuple[list[Verdict], dict[str, Probe]]:
    """Check every model of a finished audit.

    Args:
        models, data, ids, attacks, grid, norm: what the audit ran (``ids`` the audited sample ids).
        result: the audit's matrix, with per-sample robust ids.
    Returns:
        The verdicts, and each model's :class:`Probe` (flags read by :func:`robustaudit.checks.adaptive.plan_adaptive`).
    """
    check_level(level)
    if level == "off":
        return [], {}
    m = min(len(ids), SUBSAMPLE[level])
    # evenly spread over the audited ids: the first ids of a sorted folder are often one class
    picked = [ids[int(k * len(ids) / m)] for k in range(m)]
    x, y = data.load(picked)
    verdicts: list[Verdict] = []
    probes: dict[str, Probe] = {}
    for entry in models:
        model = entry.module
        with on_device(model, device), eval_mode(model):
            xd, yd = x.to(device), y.to(device)
            with torch.no_grad():
                first = model(xd)  # the clean pass, shared with the probes
            clean = task.correct(first, yd).cpu()
            probe = probe_model(entry.name, model, xd, yd, seed=seed, task=task, first=first)
            probes[entry.name] = probe
            verdicts.extend(probe.verdicts)
            ctx = Context(entry.name, model, xd, yd, torch.tensor(picked), clean, len(ids), attacks, result,
                          list(grid), norm, seed, batch_size, task, probe, level)
            verdicts.extend(attack_verdicts(ctx))
    return verdicts, probes
