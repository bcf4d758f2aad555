"""The one audit function behind the CLI, the pytest plugin and Python users."""

from __future__ import annotations

import datetime as _dt
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustaudit.attacks.base import Attack, UniversalAttack
from robustaudit.attacks.registry import from_spec, parse_spec, split_specs
from robustaudit.checks import check_level
from robustaudit.core.errors import UserError
from robustaudit.data.base import ImageData, as_image_data, subset
from robustaudit.data.registry import open_dataset, train_split_of
from robustaudit.evaluate import distributed as multiproc
from robustaudit.evaluate.cost import FLOP_COUNTER, MemoryProbe, model_cost
from robustaudit.evaluate.fastpath import (
    FastPath,
    check_precision,
    halving_summary,
    tf32_mode,
)
from robustaudit.evaluate.physical import (
    check_patch_norm,
    link_artifacts,
    physical_sections,
)
from robustaudit.evaluate.plan import DEFAULT_ATTACKS, DEFAULT_EPS, AuditPlan
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.resume import fingerprint, open_store
from robustaudit.evaluate.runner import (
    AttackEntry,
    ModelEntry,
    Progress,
    resolve_device,
    run,
    sort_eps,
)
from robustaudit.evaluate.segmentation import check_model_tasks, resolve_task, segmentation_defaults
from robustaudit.evaluate.store import Store
from robustaudit.models.loading import LoadedModel, load_model
from robustaudit.models.wrappers import prepare

ModelLike = nn.Module | str | LoadedModel


def audit(
    model: ModelLike | Sequence[ModelLike] | Mapping[str, ModelLike],
    data: Any = "digits",
    *,
    attacks: str | Attack | Sequence[str | Attack] = DEFAULT_ATTACKS,
    eps: float | Sequence[float] = DEFAULT_EPS,
    norm: str = "linf",
    n: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checks: str = "basic",
    cost: bool = True,
    defense: str | Sequence[str] | None = None,
    defense_fpr: float = 0.05,
    defense_data: Any = None,
    physical: bool = False,
    train_data: Any = None,
    task: str = "auto",
    precision: str = "fp32",
    tf32: bool = False,
    compile: bool = False,
    distributed: bool = False,
) -> ResultMatrix:
    """Audit one or several models under attacks on an eps grid.

    Args:
        model: an ``nn.Module`` mapping ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``, a model spec
            string (catalog name, ``file.py:callable``, ``torchvision:resnet18``...), or a list / a
            ``{name: model}`` mapping of those (one matrix row group each).
        data: an ``(x, y)`` pair of tensors (``x`` float in [0, 1], NCHW; ``y`` int64), a ``Dataset``,
            a ``DataLoader`` (materialised once), or a dataset spec string such as ``"digits"``.
        attacks: attack names with inline settings (``"pgd:steps=100"``) or Attack objects.
        eps: radii in pixel units of ``norm``.
        n: audit the first ``n`` samples (all by default).
        out: when given, per-sample records go to ``out/results.sqlite`` batch by batch and the
            result to ``out/results.json``. An ``out`` holding an unfinished run is refused unless
            ``resume`` or ``overwrite`` says what to do with it; a finished one is overwritten.
        resume: continue the run stored in ``out``: finished batches are read back, not recomputed, and
            the numbers equal an uninterrupted run's. Refused (UserError naming the part) when the
            configuration, the data or the weights differ from the stored run's.
        overwrite: discard an unfinished run stored in ``out`` (excludes ``resume``).
        checks: sanity checks after the matrix: ``off``, ``basic`` (a fraction of the audit's time) or
            ``full`` (more samples and checks, adaptive EOT/BPDA/Square re-runs); verdicts in
            ``result.checks`` (see docs/checks.md).
        cost: measure each model's cost (parameters, MACs/FLOPs per input, latency, peak memory: see
            docs/cost.md) into ``provenance["models"][i]["cost"]``; ``False`` leaves the block out. The
            passes and seconds each attack cell spent are in the records either way.
        defense: detectors to wrap every model in (``"squeeze"``, ``"metzen"``, ``"mahalanobis"``, or a
            list / comma-separated string): each adds ``MODEL+DETECTOR`` rows with the plain and the
            detector-aware adaptive attack (see :mod:`robustaudit.evaluate.detection`) and a
            ``provenance["detection"]`` block (AUROC, TPR, FPR, defended accuracy).
        defense_fpr: the clean false-positive rate the detectors' thresholds are set at, on clean
            validation data held out of the fitting split.
        defense_data: the data detectors are fitted on (a spec, opened at its train split, or data like
            ``data``); default: the train split of ``data``.
        train_data: what universal attacks (patches, universal perturbations, learned generators) are
            fitted on, in the forms ``defense_data`` takes; default: the train split of ``data``.
        physical: add the physical-world proxies (Kurakin et al.): the destruction rate of each attack's
            adversarial examples at the summary eps under JPEG, blur, resizing, rotation, translation and a
            printed-photo simulation (``provenance["physical"]``, see :mod:`robustaudit.evaluate.physical`).
        task: ``classification``, ``segmentation`` (logits ``(N, K, H, W)``, masks ``(N, H, W)``: mIoU and
            pixel accuracy instead of accuracy, see :mod:`robustaudit.evaluate.segmentation`) or ``auto``
            (the data's task). Under segmentation the default attacks and eps are the segmentation ones.
        precision: ``fp32``, ``bf16`` or ``fp16`` (GPU only): autocast for the attacks' forward and backward;
            the clean pass and the verdict on the final adversarial points stay float32 (see
            :mod:`robustaudit.evaluate.fastpath`, ``provenance["precision"]``).
        tf32: allow TF32 for float32 matmuls and convolutions on NVIDIA GPUs (off: fp32 means fp32).
        compile: ``torch.compile`` the model the attacks get (eager, with a warning, when it fails).
        distributed: when this process was started by torchrun (or srun) as one of several, audit this
            rank's shard and merge (see :mod:`robustaudit.evaluate.distributed`): every rank returns the
            same result; only rank 0 writes ``results.json``. Without a launcher: a plain audit.
    Returns:
        The :class:`ResultMatrix`; ``.records`` holds one row per model × attack × eps.

    Example:
        >>> result = robustaudit.audit(net, (x_test, y_test), attacks=["pgd"], eps=[0.03])
        >>> result.robust_accuracy("model", "pgd", 0.03)
    """
    entries = [_model_entry(name, m) for name, m in _named_models(model)]
    image_data = open_dataset(data) if isinstance(data, str) else as_image_data(data)
    task = resolve_task(task, image_data)
    if task == "segmentation":
        from robustaudit.evaluate.plan import SEG_DEFAULT_ATTACKS, SEG_DEFAULT_EPS

        attacks = SEG_DEFAULT_ATTACKS if attacks == DEFAULT_ATTACKS else attacks
        eps = SEG_DEFAULT_EPS if eps == DEFAULT_EPS else eps
    attack_entries = attack_entries_from(attacks, task=task)
    grid = [float(eps)] if isinstance(eps, (int, float)) else list(eps)
    config = {"models": [e.name for e in entries], "data": image_data.name,
              "attacks": [a.name for a in attack_entries], "eps": sort_eps(grid), "norm": norm, "n": n,
              "batch_size": batch_size, "device": device, "seed": seed, "checks": checks, "cost": cost}
    if task == "segmentation":
        config["task"] = task
    if defense is not None:
        config.update(defense=defense if isinstance(defense, str) else ",".join(defense), defense_fpr=defense_fpr,
                      defense_data=defense_data if isinstance(defense_data, (str, type(None))) else "python")
    if train_data is not None:
        config["train_data"] = train_data if isinstance(train_data, str) else "python"
    if physical:
        config["physical"] = True
    fast = FastPath(precision=check_precision(precision), tf32=bool(tf32), compile=bool(compile))
    if fast != FastPath():
        config.update(precision=precision, tf32=bool(tf32), compile=bool(compile))
    return execute(entries, image_data, attack_entries, grid, norm=norm, n=n, batch_size=batch_size,
                   device=device, seed=seed, out=out, progress=progress, config=config, resume=resume,
                   overwrite=overwrite, checks=checks, cost=cost, defense=defense, defense_fpr=defense_fpr,
                   defense_data=defense_data, physical=physical, train_data=train_data, task=task, fast=fast, distributed=distributed)


def run_plan(plan: AuditPlan, *, progress: Progress | None = None, distributed: bool = False) -> ResultMatrix:
    """Run a validated :class:`AuditPlan` (the CLI's path): loads models, data and attacks by spec;
    ``plan.defense`` names detectors as ``defense`` does in :func:`audit`; ``distributed`` as there."""
    plan.validate()
    defense, defense_fpr, defense_data = plan.detectors, plan.defense_fpr, plan.defense_data
    if defense is not None:  # a misspelt detector fails before any model is loaded or attacked
        from robustaudit.defenses.detection import parse_detectors

        parse_detectors(defense)
    image_data = open_dataset(plan.data)
    task = resolve_task(plan.task, image_data)
    if task == "segmentation":  # the classification defaults mean "the segmentation defaults" here
        plan, defense = segmentation_defaults(plan, defense)
    entries = []
    for m in plan.models:
        # the class count comes from the weights (or an inline num_classes=), never from the data:
        # the runner then checks outputs against labels with a message about both
        loaded = load_model(m.spec, weights=m.weights, normalize=m.normalize, trust_pickle=plan.trust_pickle)
        entries.append(_model_entry(loaded.name, loaded))
        entries[-1].info["normalize"] = m.normalize  # changes the numbers: part of the resume fingerprint
    _unique([e.name for e in entries], "model")
    config = plan.to_dict()
    return execute(entries, image_data, attack_entries_from(plan.attacks, task=task), plan.eps, norm=plan.norm,
                   n=plan.n, batch_size=plan.batch_size, device=plan.device, seed=plan.seed,
                   out=plan.out, progress=progress, config=config, resume=plan.resume, checks=plan.checks,
                   overwrite=plan.overwrite, defense=defense, defense_fpr=defense_fpr, defense_data=defense_data,
                   physical=plan.physical, train_data=plan.train_data, task=task,
                   fast=FastPath(precision=plan.precision, tf32=plan.tf32, compile=plan.compile),
                   distributed=distributed)


def execute(
    entries: list[ModelEntry],
    data: ImageData,
    attacks: list[AttackEntry],
    eps: Sequence[float],
    *,
    norm: str,
    n: int | None,
    batch_size: int,
    device: str,
    seed: int,
    out: str | Path | None,
    progress: Progress | None,
    config: dict[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    checks: str = "basic",
    cost: bool = True,
    defense: str | Sequence[str] | None = None,
    defense_fpr: float = 0.05,
    defense_data: Any = None,
    physical: bool = False,
    train_data: Any = None,
    task: str = "classification",
    fast: FastPath | None = None,
    distributed: bool = False,
) -> ResultMatrix:
    """Run the matrix, the sanity checks (``checks``: off, basic, full) and attach provenance; writes ``results.sqlite`` and ``results.json`` under ``out``.

    With ``cost``, each model's cost is measured (see :mod:`robustaudit.evaluate.cost`): on a CPU audit
    the memory probes start with the audit and run beside it; the rest is measured after the checks.

    The store stays open until ``results.json`` is written and is then marked ``finished``: later
    stages (sanity checks) may still ``put_meta`` before that. See :mod:`robustaudit.evaluate.resume`
    for what ``resume``/``overwrite`` do with a stored run.

    With ``defense`` (detector names), the detectors are fitted and evaluated after the checks (see
    :mod:`robustaudit.evaluate.detection`); their rows join the matrix. They are recomputed on resume
    (fits come from the detector cache).

    ``fast`` sets the attacks' precision, TF32 (for the whole audit, restored afterwards) and
    ``torch.compile`` (:mod:`robustaudit.evaluate.fastpath`). With ``distributed`` and a launcher
    (torchrun, srun) that started several processes, each audits its shard into ``out/ranks/rank-K.sqlite``
    and rank 0 merges, runs the checks, detectors and cost, and writes the results
    (:mod:`robustaudit.evaluate.distributed`).
    """
    fast = fast or FastPath()
    check_precision(fast.precision)
    launch = multiproc.detect() if distributed else None
    if task == "segmentation" and (launch is not None or fast.precision != "fp32" or fast.compile):
        raise UserError("segmentation audits run in one process at fp32: drop torchrun/srun, --precision and --compile")
    kwargs = {"norm": norm, "n": n, "batch_size": batch_size, "device": device, "seed": seed, "out": out,
              "progress": progress, "config": config, "resume": resume, "overwrite": overwrite, "checks": checks,
              "cost": cost, "defense": defense, "defense_fpr": defense_fpr, "defense_data": defense_data,
              "train_data": train_data, "task": task, "fast": fast,
              "physical": physical}
    if launch is None:
        with tf32_mode(fast.tf32):
            return _execute(entries, data, attacks, eps, dist=None, **kwargs)
    ctx = multiproc.setup(launch, device)
    try:
        with tf32_mode(fast.tf32):
            return _execute(entries, data, attacks, eps, dist=ctx, **kwargs)
    except BaseException as exc:
        if ctx.is_main and ctx.awaiting:  # the other ranks wait for rank 0's outcome: tell them
            multiproc.send_outcome(ctx, failure=exc)
        raise
    finally:
        multiproc.teardown(ctx)


def _execute(
    entries: list[ModelEntry],
    data: ImageData,
    attacks: list[AttackEntry],
    eps: Sequence[float],
    *,
    norm: str,
    n: int | None,
    batch_size: int,
    device: str,
    seed: int,
    out: str | Path | None,
    progress: Progress | None,
    config: dict[str, Any],
    resume: bool,
    overwrite: bool,
    checks: str,
    cost: bool,
    defense: str | Sequence[str] | None,
    defense_fpr: float,
    defense_data: Any,
    train_data: Any,
    task: str,
    physical: bool,
    fast: FastPath,
    dist: multiproc.DistContext | None,
) -> ResultMatrix:
    """:func:`execute` in this process (``dist``: this rank's place in a multi-process audit)."""
    if defense is not None:
        from robustaudit.defenses.detection import parse_detectors

        defense = parse_detectors(defense)
        if not 0.0 < float(defense_fpr) < 1.0:
            raise UserError(f"--defense-fpr must be in (0, 1), got {defense_fpr!r}")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the stored run or discard it")
    if task == "segmentation" and physical:
        raise UserError("--physical (physical-world proxies) measures classifiers' adversarial examples; a "
                        "segmentation audit takes none")
    if task == "segmentation":  # its own evaluator: independent runs per cell, mIoU (evaluate/segmentation.py)
        from robustaudit.evaluate.segmentation import execute_segmentation

        return execute_segmentation(entries, data, attacks, eps, norm=norm, n=n, batch_size=batch_size,
                                    device=device, seed=seed, out=out, progress=progress, config=config,
                                    resume=resume, overwrite=overwrite, checks=checks, cost=cost, defense=defense,
                                    train_data=train_data)
    check_model_tasks(entries, "classification", data)  # a catalog segmentation model: one line, not a shape error
    if resume and out is None:
        raise UserError("resume needs the output directory of the run to continue (out=...)")
    check_level(checks)
    dev = dist.device if dist is not None else resolve_device(device)
    fast.validate(dev)
    grid = sort_eps(eps)
    check_patch_norm(attacks, norm)
    ids = subset(data, n)
    mine = multiproc.shard(ids, dist.rank, dist.world_size) if dist is not None else ids  # this process's samples
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    store = None
    if out is not None:
        fp = fingerprint(entries, data, attacks, grid, n=len(ids), norm=norm, batch_size=batch_size, device=dev,
                         seed=seed)
        store = _open_store(out, {**fp, **fast.fingerprint(dev)}, config, resume=resume, overwrite=overwrite,
                            dist=dist)
    # the largest batch the audit runs: the batch size that latency and memory are stated for
    cost_batch = min(batch_size, len(ids))
    probe = None
    try:
        if cost and dev.type == "cpu" and (dist is None or dist.is_main):
            probe = MemoryProbe([(e.name, e.module) for e in entries], data.sample_shape, cost_batch)
        def matrix(audited: list[int], bar: Progress | None) -> ResultMatrix:
            return run(entries, data, attacks, grid, norm=norm, ids=audited, batch_size=batch_size, device=dev,
                       seed=seed, store=store, progress=bar, example_eps=example_eps(entries, grid),
                       reuse=resume, train_data=_fit_split(data, attacks, train_data), fast=fast)

        if dist is None:
            result = matrix(ids, progress)
        else:  # each rank its shard; every rank merges all shards; rank 0 goes on alone
            # a rank whose shard is empty (more processes than samples) contributes nothing
            part = multiproc.agree(dist, lambda: matrix(mine, progress if dist.is_main else None) if mine else None)
            result = multiproc.merge([p for p in multiproc.gather(dist, part) if p is not None], ids)
            dist.awaiting = True
            if not dist.is_main:
                return _follow(dist, store)
        t_checks = time.perf_counter()
        added = _sanity_checks(checks, result, entries, data, ids, attacks, grid=grid, norm=norm, device=dev,
                               seed=seed, batch_size=batch_size, store=store, progress=progress, reuse=resume)
        t_checks = time.perf_counter() - t_checks
        t_detect = time.perf_counter()
        detection = _detectors(defense, result, entries, data, ids, attacks, grid=grid, norm=norm, device=dev,
                               seed=seed, batch_size=batch_size, progress=progress, fpr=float(defense_fpr),
                               defense_data=defense_data) if defense else None
        t_detect = time.perf_counter() - t_detect
        t_cost = time.perf_counter()
        costs = _model_costs(entries, data, cost_batch, dev, probe) if cost else {}
        t_cost = time.perf_counter() - t_cost
        learned = _learned(result, entries, data, ids, norm=norm, device=dev, batch_size=batch_size, seed=seed)
        # the adversarial-patch section and the physical-world proxies (evaluate/patch.py, evaluate/physical.py)
        patches, physical_world = physical_sections(
            result, entries, data, ids, attacks, grid, physical=physical, norm=norm, seed=seed, device=dev,
            batch_size=batch_size, progress=progress, summary_eps=example_eps(entries, grid),
            train_data=lambda: _fit_split(data, attacks, train_data))
    except BaseException:  # Ctrl-C included: every finished batch is committed; close cleanly
        if probe is not None:
            probe.close()
        if store is not None:
            store.close()
        raise
    resumed = result.provenance  # the runner's batch counts (when resuming) and skipped attacks
    fitted = resumed.pop("fitted", {})  # objects: their artifacts are saved, not serialised
    if out is not None:
        _save_fitted(fitted, resumed.get("fits", []), Path(out))
        link_artifacts(patches, resumed.get("fits", []))
    result.provenance = {
        **run_header(dev, seed, started, t0, config, data, len(ids), norm, grid, entries, costs),
        "attacks": [{"name": a.name, "class": type(a.attack).__name__, "kind": a.attack.kind.value,
                     "settings": _jsonable(a.attack.settings())} for a in attacks]
        + [{"name": a.name, "class": type(a.attack).__name__, "kind": a.attack.kind.value, "model": model,
            "added_by": "checks", "settings": _jsonable(a.attack.settings())} for model, a in added],
        "example_eps": example_eps(entries, grid),
        "checks": {"level": checks, "seconds": round(t_checks, 3)},
        **({"detection": {**detection, "seconds": round(t_detect, 3)}} if detection is not None else {}),
        **({"cost": {"seconds": round(t_cost, 3), "batch_size": cost_batch, "flop_counter": FLOP_COUNTER}}
           if cost else {}),
        **({"learned": learned} if learned is not None else {}),
        **({"patch": patches} if patches is not None else {}),
        **({"physical": physical_world} if physical_world is not None else {}),
        "precision": fast.provenance(dev, tuple(data.sample_shape)),
        "attack precision": fast.summary(dev),
        **({"processes": _processes(dist)} if dist is not None else {}),
        **({"out-of-memory": halving_summary(resumed["oom_halvings"])} if resumed.get("oom_halvings") else {}),
        **resumed,
    }
    if out is not None:
        result.save(out)
        store.put_meta("finished", True)  # from now on a new run in this --out may overwrite it
        store.close()
    if dist is not None:
        multiproc.send_outcome(dist, result)
        dist.awaiting = False
    return result


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


def run_header(dev: torch.device, seed: int, started: _dt.datetime, t0: float, config: dict[str, Any],
               data: ImageData, n: int, norm: str, grid: list[float], entries: Sequence[ModelEntry],
               costs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The provenance every audit starts with (both tasks): versions, device, seed, times, config, data,
    threat model and models with their cost blocks. ``t0`` is the run's ``perf_counter`` start."""
    return {
        "robustaudit": _version(),
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


def _fit_split(data: ImageData, attacks: list[AttackEntry], given: Any) -> ImageData | None:
    """The training data universal attacks are fitted on, opened only when one is in the audit."""
    if not any(isinstance(a.attack, UniversalAttack) for a in attacks):
        return None
    return train_split_of(data, given, flag="--train-data (train_data=)", purpose="universal attacks are fitted")


def _learned(result: ResultMatrix, entries: list[ModelEntry], data: ImageData, ids: list[int], *, norm: str,
             device: torch.device, batch_size: int, seed: int) -> dict[str, Any] | None:
    """``provenance["learned"]`` for the generators (ATN, AdvGAN) the runner fitted, else ``None``."""
    fitted = result.provenance.get("fitted") or {}
    if not fitted:
        return None
    from robustaudit.evaluate.learned import learned_report

    return learned_report(fitted, result.provenance.get("fits", []), entries, data, ids, norm=norm, device=device,
                          batch_size=batch_size, seed=seed)


def _save_fitted(fitted: dict[tuple[str, str, float], Attack], fits: list[dict[str, Any]], out: Path) -> None:
    """Write each fitted attack's artifact (when it has ``save``) under ``out/artifacts``; its path
    goes into the matching ``fits`` entry, relative to ``out``."""
    for (model, attack, eps), fitted_attack in fitted.items():
        save = getattr(fitted_attack, "save", None)
        if save is None:
            continue
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{model}-{attack}-eps{eps:g}")
        path = out / "artifacts" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path)
        for fit in fits:
            if (fit["model"], fit["attack"], fit["eps"]) == (model, attack, eps):
                fit["artifact"] = str(path.relative_to(out))


def _model_costs(entries: list[ModelEntry], data: ImageData, batch_size: int, device: torch.device,
                 probe: MemoryProbe | None) -> dict[str, dict[str, Any]]:
    """Each model's ``cost`` block: the memory probes' figures (CPU) collected, the rest measured now,
    one model at a time on ``device``."""
    memory = probe.collect() if probe is not None else {}
    return {e.name: model_cost(e.module, data.sample_shape, batch_size, device, memory.get(e.name))
            for e in entries}


def _detectors(names: list[str], result: ResultMatrix, entries: list[ModelEntry], data: ImageData, ids: list[int],
               attacks: list[AttackEntry], *, grid: list[float], norm: str, device: torch.device, seed: int,
               batch_size: int, progress: Progress | None, fpr: float, defense_data: Any) -> dict[str, Any]:
    """Fit and evaluate the detectors; append their ``MODEL+DETECTOR`` rows to ``result``; return the
    ``provenance["detection"]`` block."""
    import pandas as pd

    from robustaudit.evaluate.detection import evaluate_detection

    records, robust, block = evaluate_detection(entries, data, ids, attacks, grid, detectors=names, fpr=fpr,
                                                defense_data=defense_data, norm=norm, device=device, seed=seed,
                                                batch_size=batch_size, progress=progress)
    result.records = pd.concat([result.records, records], ignore_index=True)
    result.robust_ids.update(robust)
    return block


def _sanity_checks(level: str, result: ResultMatrix, entries: list[ModelEntry], data: ImageData, ids: list[int],
                   attacks: list[AttackEntry], *, grid: list[float], norm: str, device: torch.device, seed: int,
                   batch_size: int, store: Store | None, progress: Progress | None,
                   reuse: bool) -> list[tuple[str, AttackEntry]]:
    """Fill ``result.checks``; at ``full``, run the adaptive attacks the probes call for over the whole
    audit and merge their columns. Returns the added ``(model, attack)`` columns."""
    if level == "off":
        return []
    from robustaudit.checks import adaptive_attacks, run_checks

    if progress is not None:
        progress.start("sanity checks", 1)
    verdicts, probes = run_checks(entries, data, ids, attacks, result, level=level, grid=grid, norm=norm,
                                  device=device, seed=seed, batch_size=batch_size)
    added: list[tuple[str, AttackEntry]] = []
    if level == "full":
        for entry in entries:
            extra = adaptive_attacks(probes[entry.name], entry.module, attacks) if entry.name in probes else []
            if not extra:
                continue
            more = run([entry], data, extra, grid, norm=norm, ids=ids, batch_size=batch_size, device=device,
                       seed=seed, store=store, progress=progress, example_eps=example_eps(entries, grid),
                       reuse=reuse)
            result.add_columns(more)
            added += [(entry.name, a) for a in extra]
            counts = more.provenance.get("resume")
            if counts and "resume" in result.provenance:
                for key, value in counts.items():
                    result.provenance["resume"][key] += value
    result.checks = [v.to_dict() for v in verdicts]
    return added


def example_eps(entries: Sequence[ModelEntry], grid: Sequence[float]) -> float:
    """The eps of the report's examples and 2×2 table: the models' shared trained-for eps when it is in
    the grid, else the grid's median."""
    trained = {e.info.get("trained_eps") for e in entries} - {None}
    if len(trained) == 1 and (t := trained.pop()) in grid:
        return float(t)
    return sorted(grid)[len(grid) // 2]


def attack_entries_from(attacks: str | Attack | Sequence[str | Attack], *,
                        task: str = "classification") -> list[AttackEntry]:
    """Build the attack columns, named by their spec (``pgd:steps=100``) or class name; names unique.
    ``task`` picks the registry's table (under segmentation ``pgd`` is pixel-wise PGD)."""
    # a comma-separated list names several attacks, as on the command line ("fgsm,pgd:steps=50,restarts=2")
    given = [attacks] if isinstance(attacks, (str, Attack)) else list(attacks)
    items = [spec for item in given for spec in (split_specs(item) if isinstance(item, str) else [item])]
    if not items:
        raise UserError("no attack given")
    out = []
    for item in items:
        if isinstance(item, Attack):
            out.append(AttackEntry(item.name, item))
        elif isinstance(item, str):
            name, settings = parse_spec(item)
            label = name if not settings else item.strip()
            out.append(AttackEntry(label, from_spec(item, resolve_model=_surrogate, task=task)))
        else:
            raise UserError(f"an attack is a name like 'pgd' or an Attack object, got {type(item).__name__}")
    seen: dict[str, int] = {}
    for entry in out:  # the same attack twice with different objects: keep both columns apart
        seen[entry.name] = seen.get(entry.name, 0) + 1
        if seen[entry.name] > 1:
            entry.name = f"{entry.name}#{seen[entry.name]}"
    return out


def _surrogate(spec: str) -> nn.Module:
    """Surrogate models of transfer attacks (``transfer:surrogate=digits-cnn(pgd)``), by model spec."""
    return load_model(spec).module


def _named_models(model: Any) -> list[tuple[str | None, ModelLike]]:
    if isinstance(model, Mapping):
        return [(str(k), v) for k, v in model.items()]
    if isinstance(model, (nn.Module, str, LoadedModel)):
        return [(None, model)]
    if isinstance(model, Sequence) and model:
        return [(None, m) for m in model]
    raise UserError(f"model must be an nn.Module, a spec string or a list of them, got {type(model).__name__}")


def _model_entry(name: str | None, model: ModelLike) -> ModelEntry:
    if isinstance(model, str):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        info = {"source": model.source, "spec": model.spec, "weights_sha256": model.weights_sha256}
        card = _card(model.spec) if model.source == "catalog" else None
        if card is not None:
            info.update(defense=card.defense, trained_for=str(card.trained_for) if card.trained_for else None,
                        trained_eps=card.trained_for.eps if card.trained_for else None)
        module, label = model.module, name or model.name
    elif isinstance(model, nn.Module):
        module, label = prepare(model), name or type(model).__name__
        info = {"source": "python", "spec": None, "weights_sha256": None}
    else:
        raise UserError(f"model must be an nn.Module or a spec string, got {type(model).__name__}")
    info["params"] = sum(p.numel() for p in module.parameters())
    return ModelEntry(label, module, info)


def _card(spec: str):
    from robustaudit.models.catalog import get_card

    try:
        return get_card(spec)
    except UserError:
        return None


def _unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{what} name '{dupes[0]}' appears twice; each row needs its own name")


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in settings.items()}


def _version() -> str:
    from robustaudit import __version__

    return __version__
