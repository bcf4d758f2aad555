"""The executor: run an :class:`AuditSpec` on its opened :class:`Subject` (both tasks, one process or several).

Classification: the matrix (:func:`robustaudit.evaluate.runner.run`), then the sanity checks, detectors,
cost, transferability matrix, learned report, universal-perturbation, patch and physical sections; provenance
attached; ``results.sqlite`` and ``results.json`` written under ``spec.out``. Segmentation goes to
:mod:`robustaudit.evaluate.seg_execute`.

The store stays open until ``results.json`` is written and is then marked ``finished``: later stages
(sanity checks) may still ``put_meta`` before that. See :mod:`robustaudit.evaluate.resume` for what
``resume``/``overwrite`` do with a stored run. With ``spec.cost`` on a CPU audit the memory probes start
with the audit and run beside it; the rest is measured after the checks. Detectors are fitted and
evaluated after the checks (fits come from the detector cache on resume). With ``spec.distributed`` and a
launcher (torchrun, srun) that started several processes, each audits its shard into
``out/ranks/rank-K.sqlite`` and rank 0 merges, runs the checks, detectors and cost, and writes the results
(:mod:`robustaudit.evaluate.distributed`).
"""

from __future__ import annotations

import datetime as _dt
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustaudit.core.task import task_named
from robustaudit.data.base import subset
from robustaudit.evaluate import distributed as multiproc
from robustaudit.evaluate import extras
from robustaudit.evaluate.cost import FLOP_COUNTER, MemoryProbe
from robustaudit.evaluate.fastpath import halving_summary, tf32_mode
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.batchsize import BatchChoice, sized, throughput
from robustaudit.evaluate.header import (attacks_block, audited_classes, example_eps, fit_split, meaningless_warnings,
                                         model_costs, run_header)
from robustaudit.evaluate.physical import physical_sections
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.resume import fingerprint, open_store
from robustaudit.evaluate.runner import Progress, resolve_device, run
from robustaudit.evaluate.spec import AuditSpec
from robustaudit.evaluate.stages import Stage, Stages
from robustaudit.evaluate.store import Store
from robustaudit.evaluate.subject import Subject
from robustaudit.evaluate.uap import uap_section

__all__ = ["execute"]


def execute(spec: AuditSpec, subject: Subject, progress: Progress | None = None) -> ResultMatrix:
    """Run ``spec`` on ``subject`` and attach provenance; writes under ``spec.out`` when given."""
    launch = multiproc.detect() if spec.distributed else None
    if launch is not None:
        task_named(spec.task).refuse(["distributed"])
    if spec.task == "segmentation":
        from robustaudit.evaluate.seg_execute import execute_segmentation

        return execute_segmentation(spec, subject, progress)
    if launch is None:
        with tf32_mode(spec.tf32):
            return _execute(spec, subject, progress, None)
    ctx = multiproc.setup(launch, spec.device)
    try:
        with tf32_mode(spec.tf32):
            return _execute(spec, subject, progress, ctx)
    except BaseException as exc:
        if ctx.is_main and ctx.awaiting:  # the other ranks wait for rank 0's outcome: tell them
            multiproc.send_outcome(ctx, failure=exc)
        raise
    finally:
        multiproc.teardown(ctx)


@dataclass
class _Run:
    """One classification run in this process: where, which samples, the store, the seconds per stage."""

    spec: AuditSpec
    subject: Subject
    progress: Progress | None
    dist: multiproc.DistContext | None
    dev: torch.device
    ids: list[int]
    started: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    t0: float = field(default_factory=time.perf_counter)
    store: Store | None = None
    probe: MemoryProbe | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    #: the stages after the matrix (stored, read back on resume) and the fitted attacks (OUT/artifacts)
    stages: Stages = field(default_factory=Stages)
    artifacts: Artifacts = field(default_factory=Artifacts)
    #: the batch size the spec now holds, and why (``provenance["batch_sizing"]``)
    sizing: BatchChoice | None = None

    @property
    def cost_batch(self) -> int:
        """The largest batch the audit runs: the batch size that latency and memory are stated for."""
        return min(self.spec.batch_size, len(self.ids))

    def matrix(self, audited: list[int], bar: Progress | None) -> ResultMatrix:
        s, sub = self.spec, self.subject
        grid = list(s.eps)
        return run(sub.entries, sub.data, sub.attacks, grid, norm=s.norm, ids=audited, batch_size=s.batch_size,
                   device=self.dev, seed=s.seed, store=self.store, progress=bar,
                   example_eps=example_eps(sub.entries, grid), reuse=s.resume,
                   train_data=fit_split(sub.data, sub.attacks, s.train_data), fast=s.fast, artifacts=self.artifacts)

    def timed(self, name: str, stage: Any, *args: Any, **kwargs: Any) -> Any:
        """``stage(*args, **kwargs)``, its seconds under ``name``: this process's, plus what the parts read
        back from the store cost when they were computed (the stored stages ``name`` joins with " and ")."""
        t = time.perf_counter()
        out = stage(*args, **kwargs)
        credit = sum(self.stages.credit.get(part, 0.0) for part in name.split(" and "))
        self.seconds[name] = time.perf_counter() - t + credit
        return out


def _execute(spec: AuditSpec, subject: Subject, progress: Progress | None,
             dist: multiproc.DistContext | None) -> ResultMatrix:
    """:func:`execute` for classification in this process (``dist``: this rank's place in a multi-process audit)."""
    dev = dist.device if dist is not None else resolve_device(spec.device)
    spec.fast.validate(dev)
    # the batch size, when not given: probed on this device (a rank's own store when resuming)
    rank_store = None if dist is None or spec.out is None else multiproc.rank_store_path(spec.out, dist.rank)
    spec, sizing = sized(spec, subject, dev, rank_store)
    r = _Run(spec, subject, progress, dist, dev, subset(subject.data, spec.n), sizing=sizing)
    if spec.out is not None:
        fp = fingerprint(spec, subject, n=len(r.ids), device=dev)
        r.store = _open_store(spec.out, fp, spec.config(), resume=spec.resume, overwrite=spec.overwrite, dist=dist)
        r.stages = Stages(r.store, reuse=spec.resume)
        # one place for the fitted attacks: rank 0's (or the only process's) OUT/artifacts
        r.artifacts = Artifacts(spec.out if dist is None or dist.is_main else None, r.store, reuse=spec.resume)
    try:
        if spec.cost and dev.type == "cpu" and (dist is None or dist.is_main) and not r.stages.stored("cost"):
            r.probe = MemoryProbe([(e.name, e.module) for e in subject.entries], subject.data.sample_shape,
                                  r.cost_batch)
        result = r.timed("matrix", _matrix, r)
        if result is None:  # a rank other than 0 after the merge
            return _follow(dist, r.store)
        sections = _after_matrix(r, result)
    except BaseException:  # Ctrl-C included: every finished batch is committed; close cleanly
        if r.probe is not None:
            r.probe.close()
        if r.store is not None:
            r.store.close()
        raise
    return _finish(r, result, sections)


def _matrix(r: _Run) -> ResultMatrix | None:
    """The matrix: this process's, or every rank's shard merged (``None`` on ranks other than 0)."""
    if r.dist is None:
        return r.matrix(r.ids, r.progress)
    dist = r.dist
    mine = multiproc.shard(r.ids, dist.rank, dist.world_size)  # this process's samples
    # each rank its shard; every rank merges all shards; rank 0 goes on alone. A rank whose shard is
    # empty (more processes than samples) contributes nothing
    part = multiproc.agree(dist, lambda: r.matrix(mine, r.progress if dist.is_main else None) if mine else None)
    result = multiproc.merge([p for p in multiproc.gather(dist, part) if p is not None], r.ids)
    dist.awaiting = True
    return result if dist.is_main else None


def _after_matrix(r: _Run, result: ResultMatrix) -> dict[str, Any]:
    """The stages after the matrix, each timed; their provenance sections."""
    spec, sub, dev, stages = r.spec, r.subject, r.dev, r.stages
    added = r.timed("checks", extras.sanity_checks, spec, sub, result, r.ids, dev, r.store, r.progress, stages)
    detection = r.timed("detect", extras.detectors, spec, sub, result, r.ids, dev, r.progress, stages)
    if spec.cost and r.progress is not None:  # its own line: else the stage before it is shown taking its time
        r.progress.start("model cost", 1)
    costs = r.timed("cost", lambda: stages.run(Stage("cost", lambda: model_costs(
        sub.entries, sub.data, r.cost_batch, dev, r.probe))) if spec.cost else {})
    # between the audited models (subject.entries), not the detectors' MODEL+DETECTOR rows
    transfer = r.timed("transfer", extras.transfer, spec, sub, result, r.ids, dev, r.progress, stages)
    learned = r.timed("learned", extras.learned, spec, sub, r.artifacts, r.ids, dev, stages)
    grid = list(spec.eps)
    # the universal perturbations' fooling rates (evaluate/uap.py); fits what the runner did not
    uap = r.timed("uap", uap_section, r.artifacts, stages, sub.entries, sub.data, r.ids, sub.attacks, grid,
                  norm=spec.norm, seed=spec.seed, device=dev, batch_size=spec.batch_size, progress=r.progress,
                  train_data=lambda: fit_split(sub.data, sub.attacks, spec.train_data))
    # the adversarial-patch section and the physical-world proxies (evaluate/patch.py, evaluate/physical.py)
    patches, physical_world = r.timed("patch and physical", physical_sections,
        r.artifacts, stages, sub.entries, sub.data, r.ids, sub.attacks, grid, physical=spec.physical, norm=spec.norm,
        seed=spec.seed, device=dev, batch_size=spec.batch_size, progress=r.progress,
        summary_eps=example_eps(sub.entries, grid), train_data=lambda: fit_split(sub.data, sub.attacks, spec.train_data))
    return {"added": added, "detection": detection, "costs": costs, "learned": learned, "uap": uap, "patch": patches,
            "physical": physical_world, "transfer": transfer}


def _finish(r: _Run, result: ResultMatrix, s: dict[str, Any]) -> ResultMatrix:
    """Attach the provenance, write ``results.json``; mark the store finished."""
    spec, sub, dev = r.spec, r.subject, r.dev
    resumed = result.provenance  # the runner's batch counts (when resuming) and skipped attacks
    if r.artifacts.records:  # the runner's fits and the patch section's, saved as they were made
        resumed["fits"] = r.artifacts.records
    if "resume" in resumed:
        resumed["resume"].update(r.stages.resume_counts())
    grid, detection = list(spec.eps), s["detection"]
    result.provenance = {
        **run_header(dev, spec.seed, r.started, r.t0, spec.config(), sub.data, len(r.ids), spec.norm, grid,
                     sub.entries, s["costs"]),
        "attacks": attacks_block(sub.attacks) + [b for model, a in s["added"]
                                                 for b in attacks_block([a], model=model, added_by="checks")],
        "example_eps": example_eps(sub.entries, grid),
        "checks": {"level": spec.checks, "seconds": round(r.seconds["checks"], 3)},
        **({"detection": {**detection, "seconds": round(r.seconds["detect"], 3)}} if detection is not None else {}),
        **({"cost": {"seconds": round(r.seconds["cost"], 3), "batch_size": r.cost_batch,
                     "flop_counter": FLOP_COUNTER}} if spec.cost else {}),
        **({"learned": s["learned"]} if s["learned"] is not None else {}),
        **({"uap": s["uap"]} if s["uap"] is not None else {}),
        **({"patch": s["patch"]} if s["patch"] is not None else {}),
        **({"physical": s["physical"]} if s["physical"] is not None else {}),
        **({"transfer": {**s["transfer"], "seconds": round(r.seconds["transfer"], 3)}} if s["transfer"] is not None
           else {}),
        "stage_seconds": stage_seconds(r.seconds),
        "precision": spec.fast.provenance(dev, tuple(sub.data.sample_shape)),
        "attack precision": spec.fast.summary(dev),
        **({"processes": _processes(r.dist)} if r.dist is not None else {}),
        **({"out-of-memory": halving_summary(resumed["oom_halvings"])} if resumed.get("oom_halvings") else {}),
        **({"batch_sizing": r.sizing.record()} if r.sizing is not None else {}),
        "throughput": throughput(result.records),
        **resumed,
    }
    result.provenance["data"].update(audited_classes(sub.data, r.ids))  # the report's "classes: k of C"
    meaningless = meaningless_warnings(result.records, sub.data.num_classes)  # near chance, too few samples
    if meaningless:
        result.provenance["warnings"] = meaningless
    for line in meaningless:  # the API's and the plugin's users see them too, not only the CLI's
        warnings.warn(line, UserWarning, stacklevel=2)
    if spec.out is not None:
        result.save(spec.out)
        r.store.put_meta("finished", True)  # from now on a new run in this --out may overwrite it
        r.store.close()
    if r.dist is not None:
        multiproc.send_outcome(r.dist, result)
        r.dist.awaiting = False
    return result


#: The stages of ``provenance["stage_seconds"]``, in run order.
STAGES = ("matrix", "checks", "detect", "cost", "transfer", "learned", "uap", "patch and physical")


def stage_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """``provenance["stage_seconds"]``: this process's wall time per stage (each timed once, apart; a
    stage read back from the store counts what it cost when computed), in run order. The cells' seconds of a
    stage are part of it: attack time, not the clean pass, scoring or writing."""
    return {name: round(seconds.get(name, 0.0), 3) for name in STAGES}


def _open_store(out: str | Path, fp: dict[str, Any], config: dict[str, Any], *, resume: bool, overwrite: bool,
                dist: multiproc.DistContext | None) -> Store:
    """The run's store: ``out/results.sqlite`` for one process, ``out/ranks/rank-K.sqlite`` for rank K of
    several (whose fingerprint holds the world size). Every rank applies the resume policy to its own
    store; a refusal on any rank stops all of them with the lowest failing rank's message."""
    if dist is None:
        multiproc.check_layout(out, 1, resume=resume)
        return open_store(out, fp, config, resume=resume, overwrite=overwrite)

    def open_mine() -> Store:
        multiproc.check_layout(out, dist.world_size, resume=resume)
        if dist.is_main and not resume:
            multiproc.remove_stale_ranks(out, dist.world_size)
        return open_store(out, {**fp, "processes": dist.world_size}, config, resume=resume, overwrite=overwrite,
                          store_path=multiproc.rank_store_path(out, dist.rank))

    return multiproc.agree(dist, open_mine)


def _follow(dist: multiproc.DistContext, store: Store | None) -> ResultMatrix:
    """A rank other than 0 after the merge: wait for rank 0's finished result (or failure), then mark this
    rank's store finished."""
    try:
        result = multiproc.receive_outcome(dist)
    finally:
        dist.awaiting = False
    if store is not None:
        store.put_meta("finished", True)
        store.close()
    return result


def _processes(dist: multiproc.DistContext) -> dict[str, Any]:
    """``provenance["processes"]``: how the audit was split and what ran where."""
    return {"world_size": dist.world_size, "launcher": dist.launch.launcher, "backend": dist.backend,
            "shard": "ids[rank::world_size]", "stores": f"{multiproc.RANKS_DIR}/rank-K.sqlite",
            "rank_0_only": ["sanity checks", "detectors", "model cost", "results.json and reports"]}
