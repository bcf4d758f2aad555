"""What every audit's provenance starts with, and the helpers both tasks' executors share.

Below :mod:`robustaudit.evaluate.execute` and :mod:`robustaudit.evaluate.seg_execute` (neither imports
the other): the run header, the examples' eps, the fitted attacks' artifacts, the models' cost blocks.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from robustaudit.attacks.base import UniversalAttack
from robustaudit.data.base import ImageData, class_coverage
from robustaudit.evaluate.cost import MemoryProbe, model_cost
from robustaudit.evaluate.runner import AttackEntry, ModelEntry

__all__ = ["attacks_block", "audited_classes", "example_eps", "fit_split", "jsonable", "model_costs", "run_header"]


def run_header(dev: torch.device, seed: int, started: _dt.datetime, t0: float, config: dict[str, Any],
               data: ImageData, n: int, norm: str, grid: list[float], entries: Sequence[ModelEntry],
               costs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The provenance every audit starts with (both tasks): versions, device, seed, times, config, data,
    threat model and models with their cost blocks. ``t0`` is the run's ``perf_counter`` start."""
    from robustaudit.core.version import __version__

    return {
        "robustaudit": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "seed": seed,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
        "config": config,
        "data": {"name": data.name, "n": n, "num_classes": data.num_classes,
                 "sample_shape": list(data.sample_shape), "class_names": data.class_names},
        "threat": {"norm": norm, "bounds": [0.0, 1.0], "eps": grid},
        "models": [{"name": e.name, **e.info, **({"cost": costs[e.name]} if e.name in costs else {})}
                   for e in entries],
    }


def audited_classes(data: ImageData, ids: Sequence[int]) -> dict[str, int]:
    """``{"classes_audited": k}`` for ``provenance["data"]`` when the audited samples ``ids`` hold only ``k`` of
    the data's classes for a reason other than chance: the first n of data ordered by class, or data that lacks
    some of its named classes. ``{}`` otherwise, and when the labels are not at hand: a fair prefix a class or
    two short (the digits' first 24 hold 8 of their 10) states the data's classes, as the report always did."""
    coverage = class_coverage(data, ids)
    if coverage is None or coverage.covered >= data.num_classes:
        return {}
    if coverage.unrepresentative or coverage.present < data.num_classes:
        return {"classes_audited": coverage.covered}
    return {}


def attacks_block(attacks: Sequence[AttackEntry], **extra: Any) -> list[dict[str, Any]]:
    """``provenance["attacks"]``: each column's name, class, kind and settings (plus ``extra`` keys)."""
    return [{"name": a.name, "class": type(a.attack).__name__, "kind": a.attack.kind.value, **extra,
             "settings": jsonable(a.attack.settings())} for a in attacks]


def example_eps(entries: Sequence[ModelEntry], grid: Sequence[float]) -> float:
    """The eps of the report's examples and 2×2 table: the models' shared trained-for eps when it is in
    the grid, else the grid's median."""
    trained = {e.info.get("trained_eps") for e in entries} - {None}
    if len(trained) == 1 and (t := trained.pop()) in grid:
        return float(t)
    return sorted(grid)[len(grid) // 2]


def fit_split(data: ImageData, attacks: Sequence[AttackEntry], given: Any) -> ImageData | None:
    """The training data universal attacks are fitted on, opened only when one is in the audit."""
    if not any(isinstance(a.attack, UniversalAttack) for a in attacks):
        return None
    from robustaudit.data.registry import train_split_of

    return train_split_of(data, given, flag="--train-data (train_data=)", purpose="universal attacks are fitted")


def model_costs(entries: Sequence[ModelEntry], data: ImageData, batch_size: int, device: torch.device,
                probe: MemoryProbe | None) -> dict[str, dict[str, Any]]:
    """Each model's ``cost`` block: the memory probes' figures (CPU) collected, the rest measured now,
    one model at a time on ``device``."""
    memory = probe.collect() if probe is not None else {}
    return {e.name: model_cost(e.module, data.sample_shape, batch_size, device, memory.get(e.name))
            for e in entries}


def jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON values (anything else by its ``repr``)."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in settings.items()}


#: Fewer clean-correct samples than this: each robust accuracy's 95% interval is wider than about ±0.15.
MIN_CLEAN_CORRECT = 30


def _clean_counts(records: Any) -> dict[str, tuple[int, int]]:
    """``model -> (n, clean-correct)`` from the matrix's rows (columns ``model``, ``n``, ``n_clean_correct``)."""
    if records is None or len(records) == 0 or "n_clean_correct" not in records:
        return {}
    return {str(model): (int(rows["n"].iloc[0]), int(rows["n_clean_correct"].iloc[0]))
            for model, rows in records.groupby("model", sort=False)}


def _near_chance(n: int, correct: int, num_classes: int) -> bool:
    return bool(n) and num_classes > 1 and correct / n <= 1.5 / num_classes


def meaningless_reasons(records: Any, num_classes: int) -> dict[str, list[str]]:
    """Per model whose figures the intervals make meaningless, why, in short phrases (the verdict's note):
    clean accuracy within 1.5x of chance (1 / ``num_classes``), fewer than :data:`MIN_CLEAN_CORRECT`
    clean-correct samples (only those are attacked), or both; models with nothing to say are absent."""
    out: dict[str, list[str]] = {}
    for model, (n, correct) in _clean_counts(records).items():
        reasons = [f"clean accuracy {correct / n:.3f} near chance"] if _near_chance(n, correct, num_classes) else []
        if correct < MIN_CLEAN_CORRECT:
            reasons.append(f"only {correct} clean-correct samples")
        if reasons:
            out[model] = reasons
    return out


def meaningless_warnings(records: Any, num_classes: int) -> list[str]:
    """One line per model and reason of :func:`meaningless_reasons`, saying what follows and what to do."""
    out = []
    for model, (n, correct) in _clean_counts(records).items():
        if _near_chance(n, correct, num_classes):
            out.append(f"model '{model}': clean accuracy {correct / n:.3f} is near chance ({1 / num_classes:.3f} for "
                       f"{num_classes} classes): its robust accuracies say nothing about robustness")
        if correct < MIN_CLEAN_CORRECT:
            out.append(f"model '{model}': only {correct} clean-correct samples (of {n}) are attacked: the 95% "
                       f"intervals are too wide for any figure to mean much; audit at least {MIN_CLEAN_CORRECT}")
    return out
