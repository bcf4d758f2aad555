"""The segmentation audit behind ``audit(task="segmentation")`` and the CLI: which task the data asks
for, catalog models checked against it, segmentation defaults, and :func:`execute_segmentation` (the run
itself is :func:`robustaudit.evaluate.segrun.run_segmentation`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from robustaudit.attacks.base import UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.task import IGNORE_INDEX
from robustaudit.data.base import ImageData
from robustaudit.evaluate.entries import AttackEntry, ModelEntry, Progress, sort_eps
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.segmetrics import BOOTSTRAP, image_confusion  # noqa: F401 - image_confusion: re-exported
from robustaudit.evaluate.segrun import run_segmentation  # noqa: F401 - re-exported


# ---------------------------------------------------------------------------------------------- audit
def resolve_task(requested: str, data: ImageData) -> str:
    """``auto`` -> the data's task; an explicit task must match the data's (one line when it does not)."""
    from robustaudit.evaluate.plan import TASKS

    if requested not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}, got {requested!r}")
    have = getattr(data, "task", "classification")
    if requested == "auto" or requested == have:
        return have
    if requested == "segmentation":
        raise UserError(f"--task segmentation needs segmentation data (a class per pixel); '{data.name}' has one "
                        "label per image: use digit-scenes, segfolder:ROOT or voc:ROOT, or --task classification")
    raise UserError(f"--task classification needs one label per image; '{data.name}' is a segmentation set (a "
                    "class per pixel): use --task segmentation (or auto)")


def check_model_tasks(entries: Sequence[ModelEntry], task: str, data: ImageData) -> None:
    """Refuse, before anything runs, a catalog model whose card says it does the other task or takes
    inputs of another shape (a classifier's exact ``(C, H, W)``; a segmentation model's channels)."""
    from robustaudit.models.catalog import get_card, model_names

    for e in entries:
        if e.info.get("source") != "catalog" or not e.info.get("spec"):
            continue
        try:
            card = get_card(str(e.info["spec"]))
        except UserError:
            continue
        have = card.task
        if have == task:
            shape, want = tuple(data.sample_shape), tuple(card.input_shape)
            if shape != want and (task == "classification" or shape[0] != want[0]):
                fits = [m for m in model_names() if tuple(get_card(m).input_shape) == shape and get_card(m).task == task]
                hint = f" (catalog models for it: {', '.join(fits)})" if fits else ""
                raise UserError(f"model '{e.name}' takes {'x'.join(map(str, want))} inputs but data '{data.name}' "
                                f"has {'x'.join(map(str, shape))} images{hint}")
            continue
        if task == "segmentation":
            raise UserError(f"model '{e.name}' is a classifier (one score vector per image) but data '{data.name}' "
                            "is a segmentation set (a class per pixel): use a segmentation model such as unet-tiny")
        raise UserError(f"model '{e.name}' is a segmentation model (per-pixel logits) but data '{data.name}' has "
                        "one label per image: use segmentation data (digit-scenes) or a classifier")


def segmentation_defaults(plan: Any, defense: str | None) -> tuple[Any, str | None]:
    """A plan that kept the classification defaults gets the segmentation ones (models, attacks, eps; and
    without a model or ``--n``, the first :data:`SEG_DEFAULT_N` images); the embedded default audit's
    detector (given only when no model was named) is dropped."""
    import dataclasses

    from robustaudit.evaluate.plan import (
        DEFAULT_ATTACKS,
        DEFAULT_EPS,
        DEFAULT_MODELS,
        SEG_DEFAULT_ATTACKS,
        SEG_DEFAULT_EPS,
        SEG_DEFAULT_MODELS,
        SEG_DEFAULT_N,
        ModelSpec,
    )

    changes: dict[str, Any] = {}
    default_models = [m.spec for m in plan.models] == list(DEFAULT_MODELS)
    if default_models:
        changes["models"] = [ModelSpec(m) for m in SEG_DEFAULT_MODELS]
        if plan.n is None:  # the bare default audit must fit a few minutes of a 2-core CPU
            changes["n"] = SEG_DEFAULT_N
        if defense == "squeeze":  # the CLI's default detector, added because no --model was given
            defense = None
    if list(plan.attacks) == list(DEFAULT_ATTACKS):
        changes["attacks"] = list(SEG_DEFAULT_ATTACKS)
    if list(plan.eps) == list(DEFAULT_EPS):
        changes["eps"] = list(SEG_DEFAULT_EPS)
    return dataclasses.replace(plan, **changes), defense


def execute_segmentation(entries: list[ModelEntry], data: ImageData, attacks: list[AttackEntry], eps: Sequence[float],
                         *, norm: str, n: int | None, batch_size: int, device: str, seed: int, out: Any,
                         progress: Progress | None, config: dict[str, Any], resume: bool = False,
                         overwrite: bool = False, checks: str = "basic", cost: bool = True, defense: Any = None,
                         train_data: Any = None) -> ResultMatrix:
    """The segmentation audit behind ``audit(task="segmentation")`` and the CLI: run the cells, attach the
    provenance, write ``results.json`` (and the panels, the fitted perturbations) under ``out``.

    With ``out``, every batch goes to ``out/results.sqlite`` as it finishes, opened through the same
    policy and fingerprint as classification (``evaluate/resume.py``; the fingerprint says
    ``task: segmentation``): ``resume`` continues a stored run, ``overwrite`` discards an unfinished one.

    Sanity checks are classification-specific (their evidence is per-sample robust ids) and are not run:
    ``provenance["checks"]["skipped"]`` says so and the reports show it. Detectors are refused.
    """
    import datetime as _dt
    from pathlib import Path

    from robustaudit.data.base import subset
    from robustaudit.evaluate.api import (
        _model_costs,
        _save_fitted,
        example_eps,
        run_header,
    )
    from robustaudit.evaluate.resume import fingerprint, open_store
    from robustaudit.evaluate.runner import resolve_device

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the stored run or discard it")
    if resume and out is None:
        raise UserError("resume needs the output directory of the run to continue (out=...)")
    if defense:
        raise UserError("detectors (--defense) wrap classifiers; a segmentation audit takes none")
    check_model_tasks(entries, "segmentation", data)
    dev = resolve_device(device)
    grid = sort_eps(eps)
    ids = subset(data, n)
    train = None
    if any(isinstance(a.attack, UniversalAttack) for a in attacks):
        from robustaudit.data.registry import train_split_of

        train = train_split_of(data, train_data, flag="--train-data (train_data=)",
                               purpose="universal attacks are fitted")
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    # the audit's batch is the segmentation batch: masks and per-pixel logits are K*H*W times larger
    seg_batch = min(batch_size, 32)
    store = None
    if out is not None:
        fp = fingerprint(entries, data, attacks, grid, n=len(ids), norm=norm, batch_size=seg_batch, device=dev,
                         seed=seed)
        store = open_store(out, {**fp, "task": "segmentation"}, config, resume=resume, overwrite=overwrite)
    try:
        result = run_segmentation(entries, data, attacks, grid, norm=norm, ids=ids, batch_size=seg_batch,
                                  device=dev, seed=seed, progress=progress, train_data=train,
                                  example_eps=example_eps(entries, grid), store=store, reuse=resume)
    except BaseException:  # Ctrl-C included: every finished batch is committed; close cleanly
        if store is not None:
            store.close()
        raise
    t_cost = time.perf_counter()
    costs = _model_costs(entries, data, min(seg_batch, len(ids)), dev, None) if cost else {}
    t_cost = time.perf_counter() - t_cost
    fitted = result.provenance.pop("fitted", {})
    fits = result.provenance.pop("fits", [])
    resumed = result.provenance.pop("resume", None)
    if out is not None:
        _save_fitted(fitted, fits, Path(out))
    header = run_header(dev, seed, started, t0, config, data, len(ids), norm, grid, entries, costs)
    header["data"]["ignore_index"] = getattr(data, "ignore_index", IGNORE_INDEX)
    result.provenance = {
        **header,
        "task": "segmentation",
        "attacks": [{"name": a.name, "class": type(a.attack).__name__, "kind": a.attack.kind.value,
                     "unbounded": bool(getattr(a.attack, "unbounded", False)),
                     "settings": {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                                  for k, v in a.attack.settings().items()}} for a in attacks],
        "example_eps": example_eps(entries, grid),
        "batch_size": seg_batch,
        "intervals": f"95% percentile bootstrap over images ({BOOTSTRAP} resamples)",
        "checks": {"level": checks, "seconds": 0.0,
                   "skipped": "the sanity checks are classification-specific (per-sample verdicts); "
                              "not run for segmentation"},
        **({"fits": fits} if fits else {}),
        **({"cost": {"seconds": round(t_cost, 3), "batch_size": min(seg_batch, len(ids))}} if cost else {}),
        **({"resume": resumed} if resume and resumed is not None else {}),
    }
    if out is not None:
        result.save(out)
        store.put_meta("finished", True)  # from now on a new run in this --out may overwrite it
        store.close()
    return result
