"""The segmentation audit behind ``audit(...)`` on segmentation data and the CLI: run the cells through the
one runner (:func:`robustaudit.evaluate.runner.run`, with the data's
:class:`~robustaudit.core.task.SegmentationTask`), attach the provenance, write ``results.json`` (and the
panels, the fitted perturbations) under ``spec.out``.

With ``out``, every batch goes to ``out/results.sqlite`` as it finishes, opened through the same policy
and fingerprint as classification (``evaluate/resume.py``; the fingerprint says ``task: segmentation``):
``resume`` continues a stored run, ``overwrite`` discards an unfinished one.

What the task lacks is said by the task (``SegmentationTask.unsupported``): the sanity checks are
classification-specific (their evidence is per-sample robust ids) and are not run
(``provenance["checks"]["skipped"]`` gives the task's reason, the reports show it); the spec refuses
detectors, the physical proxies and non-fp32 precision before anything is loaded, ``execute`` torchrun.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

from robustaudit.core.task import IGNORE_INDEX, task_of
from robustaudit.data.base import subset
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.batchsize import sized, throughput
from robustaudit.evaluate.header import example_eps, fit_split, jsonable, model_costs, run_header
from robustaudit.evaluate.options import SEG_MAX_BATCH
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.resume import fingerprint, open_store
from robustaudit.evaluate.runner import Progress, resolve_device, run
from robustaudit.evaluate.segmetrics import BOOTSTRAP
from robustaudit.evaluate.spec import AuditSpec
from robustaudit.evaluate.subject import Subject

__all__ = ["execute_segmentation"]

def execute_segmentation(spec: AuditSpec, subject: Subject, progress: Progress | None = None) -> ResultMatrix:
    """Run the segmentation audit of ``spec`` (its batch is already capped for segmentation) on ``subject``."""
    entries, data, attacks = subject.entries, subject.data, subject.attacks
    dev = resolve_device(spec.device)
    # not given: probed, at most segmentation's cap (masks and per-pixel logits are K*H*W times larger)
    spec, sizing = sized(spec, subject, dev, cap=SEG_MAX_BATCH)
    grid = list(spec.eps)
    ids = subset(data, spec.n)
    train = fit_split(data, attacks, spec.train_data)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    store = None
    if spec.out is not None:
        fp = fingerprint(spec, subject, n=len(ids), device=dev)
        store = open_store(spec.out, fp, spec.config(), resume=spec.resume, overwrite=spec.overwrite)
    try:
        result = run(entries, data, attacks, grid, norm=spec.norm, ids=ids, batch_size=spec.batch_size, device=dev,
                     seed=spec.seed, progress=progress, train_data=train, example_eps=example_eps(entries, grid),
                     store=store, reuse=spec.resume, task=task_of(data),
                     artifacts=Artifacts(spec.out, store, reuse=spec.resume))
    except BaseException:  # Ctrl-C included: every finished batch is committed; close cleanly
        if store is not None:
            store.close()
        raise
    t_cost = time.perf_counter()
    cost_batch = min(spec.batch_size, len(ids))
    costs = model_costs(entries, data, cost_batch, dev, None) if spec.cost else {}
    t_cost = time.perf_counter() - t_cost
    fits = result.provenance.pop("fits", [])  # the fitted perturbations were saved in OUT/artifacts as fitted
    resumed = result.provenance.pop("resume", None)
    header = run_header(dev, spec.seed, started, t0, spec.config(), data, len(ids), spec.norm, grid, entries, costs)
    header["data"]["ignore_index"] = getattr(data, "ignore_index", IGNORE_INDEX)
    result.provenance = {
        **header,
        "task": "segmentation",
        "attacks": [_attack_doc(a) for a in attacks],
        "example_eps": example_eps(entries, grid),
        "batch_size": spec.batch_size,
        "batch_sizing": sizing.record(),
        "throughput": throughput(result.records),
        "intervals": f"95% percentile bootstrap over images ({BOOTSTRAP} resamples)",
        "checks": {"level": spec.checks, "seconds": 0.0, "skipped": task_of(data).why_not("checks")},
        **({"fits": fits} if fits else {}),
        **({"cost": {"seconds": round(t_cost, 3), "batch_size": cost_batch}} if spec.cost else {}),
        **({"resume": resumed} if spec.resume and resumed is not None else {}),
    }
    if spec.out is not None:
        result.save(spec.out)
        store.put_meta("finished", True)  # from now on a new run in this --out may overwrite it
        store.close()
    return result


def _attack_doc(a: Any) -> dict[str, Any]:
    return {"name": a.name, "class": type(a.attack).__name__, "kind": a.attack.kind.value,
            "unbounded": bool(getattr(a.attack, "unbounded", False)), "settings": jsonable(a.attack.settings())}
