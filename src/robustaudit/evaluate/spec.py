"""AuditSpec: one audit's every option, resolved from the data, the task and the models, validated once.

The CLI (flags over a TOML file), the Python API (:func:`robustaudit.audit`) and the pytest plugin (through
``audit``) each collect what the user gave and call :func:`resolve_spec`; what was not given (``None``)
gets its default here and nowhere else. Defaults that depend on the audit:

- the task: ``auto`` is the data's task (:func:`resolve_task`);
- the models of a classification audit without any: the catalog models trained on the data
  (``--data digits32`` alone audits digits32-cnn and digits32-resnet), else the embedded default models;
- under segmentation, kept classification defaults mean the segmentation ones: models ``unet-tiny``,
  attacks pgd, segpgd, cospgd, eps 0.01, 0.02, 0.04, and without a model the first 100 images; the
  batch is at most 32 (masks and per-pixel logits are K*H*W times larger);
- the batch size, when not given, stays ``None`` here: the executor chooses it from a probe of the opened
  models on the device (:mod:`robustaudit.evaluate.batchsize`), since only they know their memory;
- ``norm="patch"`` without an eps grid gets the patch grid (area shares), not the Lp radii;
- the embedded default audit (no model, no config file, classification) runs on the grid
  ``EMBEDDED_EPS`` (unless eps is given) and adds the ``squeeze`` detector around ``digits-cnn`` alone.

Below the spec nothing re-parses or re-defaults: the executor takes the spec and the opened models, data
and attacks (:mod:`robustaudit.evaluate.subject`); the resume fingerprint derives from it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

from robustaudit.core.errors import UserError, suggest
from robustaudit.core.task import task_named
from robustaudit.evaluate import options as opt
from robustaudit.evaluate.plan import ModelSpec

__all__ = ["AuditSpec", "ModelSpec", "resolve_spec", "resolve_task"]


@dataclass(frozen=True)
class AuditSpec:
    """Everything an audit does, resolved and validated (build it with :func:`resolve_spec`).

    Attributes:
        models: the rows. A ``ModelSpec`` loads one by spec (catalog name, ``file.py:callable``,
            ``torchvision:resnet18``...) with its weights and normalization; models handed over in Python
            (an ``nn.Module`` mapping ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``) are described by
            ``name`` and opened by the caller.
        data: the data's name (a spec such as ``"digits"``, or the name of data handed over in Python).
        attacks: attack specs with inline settings (``"pgd:steps=100"``) or Attack objects.
        eps: the radii in pixel units of ``norm``, ascending, without duplicates.
        norm: ``linf``, ``l2``, ``l1`` or ``patch`` (eps is then the share of the image area a patch covers).
        n: audit the first ``n`` samples (``None``: all).
        out: when given, per-sample records go to ``out/results.sqlite`` batch by batch and the result to
            ``out/results.json``. An ``out`` holding an unfinished run is refused unless ``resume`` or
            ``overwrite`` says what to do with it; a finished one is overwritten.
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
        detectors: detectors to wrap every model in (``squeeze``, ``metzen``, ``mahalanobis``): each adds
            ``MODEL+DETECTOR`` rows with the plain and the detector-aware adaptive attack (see
            :mod:`robustaudit.evaluate.detection`) and a ``provenance["detection"]`` block (AUROC, TPR,
            FPR, defended accuracy).
        defense_models: the names of the models the detectors wrap (``()``: every model).
        defense_fpr: the clean false-positive rate the detectors' thresholds are set at, on clean
            validation data held out of the fitting split.
        defense_data: the data detectors are fitted on (a spec, opened at its train split, or data like
            ``data``); ``None``: the train split of ``data``.
        train_data: what universal attacks (patches, universal perturbations, learned generators) are
            fitted on, in the forms ``defense_data`` takes; ``None``: the train split of ``data``.
        physical: add the physical-world proxies (Kurakin et al.): the destruction rate of each attack's
            adversarial examples at the summary eps under JPEG, blur, resizing, rotation, translation and a
            printed-photo simulation (``provenance["physical"]``, see :mod:`robustaudit.evaluate.physical`).
        transfer: the transferability matrix (``provenance["transfer"]``, see
            :mod:`robustaudit.evaluate.transferability`): each model's adversarial examples at the summary eps
            scored on every other model. Resolved on for a classification audit of two models or more, off
            otherwise (asked for where it cannot run: a one-line warning, off).
        task: ``classification`` or ``segmentation`` (logits ``(N, K, H, W)``, masks ``(N, H, W)``: mIoU
            and pixel accuracy instead of accuracy, see :mod:`robustaudit.evaluate.segrun`).
        precision: ``fp32``, ``bf16`` or ``fp16`` (GPU only): autocast for the attacks' forward and
            backward; the clean pass and the verdict on the final adversarial points stay float32 (see
            :mod:`robustaudit.evaluate.fastpath`, ``provenance["precision"]``).
        tf32: allow TF32 for float32 matmuls and convolutions on NVIDIA GPUs (off: fp32 means fp32).
        compile: ``torch.compile`` the model the attacks get (eager, with a warning, when it fails).
        distributed: when this process was started by torchrun (or srun) as one of several, audit this
            rank's shard and merge (see :mod:`robustaudit.evaluate.distributed`): every rank returns the
            same result; only rank 0 writes ``results.json``. Without a launcher: a plain audit.
        trust_pickle: allow loading a pickled whole model (runs code from the file).
        allow_download: let a model source download published weights missing from its cache
            (``torchvision:ARCH:weights=ENUM``); off, a missing file is refused naming the path expected.
        model_dir: the cache published weights are read from (torchvision: torch hub's directory, files
            in its ``checkpoints/``); ``None``: each library's own default.
        config_file: the TOML file the options came from (``None``: none).
        class_map: ``(data class name, model output index)`` for every class of the data, in its class order
            (``--class-map``): each model is audited on those outputs only. ``None``: the default map of
            :mod:`robustaudit.evaluate.classmap` (none, unless a model has more outputs than the data's
            named classes).
    """

    models: tuple[ModelSpec, ...]
    data: str
    attacks: tuple[Any, ...]
    eps: tuple[float, ...]
    norm: str = "linf"
    n: int | None = None
    #: ``None``: chosen at run time (:mod:`robustaudit.evaluate.batchsize`), the largest that fits
    batch_size: int | None = None
    device: str = opt.DEFAULT_DEVICE
    seed: int = opt.DEFAULT_SEED
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    checks: str = opt.DEFAULT_CHECKS
    cost: bool = True
    detectors: tuple[str, ...] = ()
    defense_models: tuple[str, ...] = ()
    defense_fpr: float = opt.DEFAULT_DEFENSE_FPR
    defense_data: Any = None
    train_data: Any = None
    physical: bool = False
    transfer: bool = False
    task: str = "classification"
    precision: str = "fp32"
    tf32: bool = False
    compile: bool = False
    distributed: bool = False
    trust_pickle: bool = False
    allow_download: bool = False
    model_dir: str | None = None
    config_file: str | None = None
    class_map: tuple[tuple[str, int], ...] | None = None

    @property
    def fast(self) -> Any:
        """The attacks' precision, TF32 and compile switches (:class:`~robustaudit.evaluate.fastpath.FastPath`)."""
        from robustaudit.evaluate.fastpath import FastPath

        return FastPath(precision=self.precision, tf32=self.tf32, compile=self.compile)

    def config(self) -> dict[str, Any]:
        """The JSON view of the spec: ``provenance["config"]`` and the store's ``config`` meta."""
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["models"] = [_model_view(m) for m in self.models]
        doc["attacks"] = [a if isinstance(a, str) else getattr(a, "name", type(a).__name__) for a in self.attacks]
        doc["eps"] = list(self.eps)
        doc["detectors"] = list(self.detectors)
        doc["defense_models"] = list(self.defense_models)
        doc["defense_data"] = _data_view(self.defense_data)
        doc["train_data"] = _data_view(self.train_data)
        if self.class_map is None:  # absent unless given: configs written before it existed stay equal
            del doc["class_map"]
        else:
            doc["class_map"] = dict(self.class_map)
        return doc


def _model_view(m: ModelSpec) -> dict[str, Any]:
    # "name" only where given: configs written before it existed stay equal
    return {"spec": m.spec, "weights": m.weights, "normalize": m.normalize, **({"name": m.name} if m.name else {})}


def _data_view(given: Any) -> str | None:
    return given if isinstance(given, (str, type(None))) else "python"


#: What :func:`resolve_spec` accepts: the spec's fields but ``data`` (the opened data names itself), with
#: ``defense`` (names, or ``"none"``) for ``detectors``; ``None`` means "not given".
GIVEN_KEYS = frozenset({f.name for f in fields(AuditSpec)} - {"detectors", "defense_models", "data"} | {"defense"})


def resolve_spec(data: Any, **given: Any) -> AuditSpec:
    """The spec of an audit of ``data`` (an opened :class:`~robustaudit.data.base.ImageData`) with the
    options ``given`` (keys :data:`GIVEN_KEYS`; ``None``: not given, the default is resolved here).

    ``attacks`` equal to :data:`~robustaudit.evaluate.options.DEFAULT_ATTACKS` and ``eps`` equal to
    :data:`~robustaudit.evaluate.options.DEFAULT_EPS` count as not given (they are ``audit()``'s
    defaults). Raises a one-line :class:`UserError` on the first bad value.
    """
    unknown = sorted(set(given) - GIVEN_KEYS)
    if unknown:
        raise TypeError(f"resolve_spec() got unknown options {unknown}")
    g = {k: v for k, v in given.items() if v is not None}
    task = resolve_task(g.get("task", "auto"), data)
    segmentation = task == "segmentation"
    models_given = "models" in g
    models = tuple(g["models"]) if models_given else tuple(
        ModelSpec(m) for m in (opt.SEG_DEFAULT_MODELS if segmentation else _default_models(data)))
    if not models:
        raise UserError("no model given")
    norm = _norm(g.get("norm", "linf"))
    embedded = not models_given and "config_file" not in g
    spec = AuditSpec(
        models=models, data=str(data.name), attacks=_attacks(g.get("attacks"), segmentation),
        eps=_grid(g.get("eps"), norm, segmentation, embedded), norm=norm,
        n=_n(g.get("n"), segmentation and not models_given), batch_size=_batch(g.get("batch_size"), segmentation),
        task=task, detectors=_detectors(g.get("defense"), embedded and not segmentation),
        defense_models=opt.DEFAULT_DEFENSE_MODELS if embedded and "defense" not in g and not segmentation else (),
        transfer=_transfer(g.get("transfer"), len(models), segmentation),
        class_map=_class_map(g.get("class_map"), data, task), **_plain(g))
    _check_task(spec)
    for line in opt.check_eps_range(spec.eps, spec.norm, tuple(getattr(data, "sample_shape", ()))):
        warnings.warn(line, stacklevel=2)
    return spec


def _transfer(given: Any, n_models: int, segmentation: bool) -> bool:
    """The transferability matrix: on by default where it can run (classification, two models or more); asked
    for where it cannot, a one-line warning and off."""
    can = n_models >= 2 and not segmentation
    if given is None:
        return can
    if not isinstance(given, bool):
        raise UserError(f"--transfer must be on or off (true or false), got {given!r}")
    if given and not can:
        why = "a classification audit" if segmentation else "two models or more"
        warnings.warn(f"--transfer: the transferability matrix needs {why}; skipped", stacklevel=3)
    return given and can


def _default_models(data: Any) -> tuple[str, ...]:
    """The classification default rows for ``data``: the embedded default models on their own data (digits),
    else the catalog models trained on ``data`` (``--data digits32`` alone: digits32-cnn, digits32-resnet),
    else the embedded defaults (the subject then says which catalog models fit, if any)."""
    from robustaudit.models.catalog import get_card, model_names

    name = str(getattr(data, "name", "")).partition(":")[0]
    trained_on = {get_card(m).dataset for m in opt.DEFAULT_MODELS}
    if name in trained_on:
        return opt.DEFAULT_MODELS
    own = tuple(m for m in model_names() if get_card(m).dataset == name and get_card(m).task == "classification")
    return own or opt.DEFAULT_MODELS


def _class_map(given: Any, data: Any, task: str) -> tuple[tuple[str, int], ...] | None:
    """``--class-map``: parsed, then checked against the data's classes (every class once, no output twice)."""
    if given is None:
        return None
    from robustaudit.evaluate.classmap import check_class_map

    return check_class_map(opt.parse_class_map(given), data, task)


def _plain(g: dict[str, Any]) -> dict[str, Any]:
    """The options whose default does not depend on the data, validated."""
    out = g.get("out")
    if out is not None:
        out = opt.check_out(str(out))
    resume, overwrite = bool(g.get("resume", False)), bool(g.get("overwrite", False))
    opt.check_resume(resume, overwrite, out)
    fpr = g.get("defense_fpr", opt.DEFAULT_DEFENSE_FPR)
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 < float(fpr) < 1.0:
        raise UserError(f"--defense-fpr must be in (0, 1), got {fpr!r}")
    return {
        "device": opt.check_device(g.get("device", opt.DEFAULT_DEVICE)),
        "seed": opt.check_seed(g.get("seed", opt.DEFAULT_SEED)), "out": out, "resume": resume,
        "overwrite": overwrite, "checks": opt.check_checks(g.get("checks", opt.DEFAULT_CHECKS)),
        "cost": bool(g.get("cost", opt.DEFAULT_COST)), "defense_fpr": float(fpr), "defense_data": g.get("defense_data"),
        "train_data": g.get("train_data"), "physical": bool(g.get("physical", False)),
        "precision": opt.check_choice(g.get("precision", "fp32"), opt.PRECISIONS, "--precision"),
        "tf32": bool(g.get("tf32", False)), "compile": bool(g.get("compile", False)),
        "distributed": bool(g.get("distributed", False)), "trust_pickle": bool(g.get("trust_pickle", False)),
        "allow_download": bool(g.get("allow_download", False)),
        "model_dir": None if g.get("model_dir") is None else str(g["model_dir"]),
        "config_file": None if g.get("config_file") is None else str(g["config_file"]),
    }


def _attacks(given: Any, segmentation: bool) -> tuple[Any, ...]:
    if given is None:
        given = opt.DEFAULT_ATTACKS
    items = tuple(given) if _is_sequence(given) else (given,)
    if not items:
        raise UserError("no attack given")
    if items == opt.DEFAULT_ATTACKS:
        return opt.SEG_DEFAULT_ATTACKS if segmentation else opt.DEFAULT_ATTACKS
    return items


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _grid(given: Any, norm: str, segmentation: bool, embedded: bool = False) -> tuple[float, ...]:
    """The eps grid: parsed (``"8/255"`` strings too), ascending, without duplicates; not given (or
    ``audit()``'s default grid): the patch grid under ``norm="patch"``, the segmentation grid under
    segmentation, the embedded default's grid when no model was given, else the default grid."""
    grid = tuple(opt.parse_eps(given)) if given is not None else opt.DEFAULT_EPS
    if grid == opt.DEFAULT_EPS:
        grid = (opt.PATCH_DEFAULT_EPS if norm == "patch" else opt.SEG_DEFAULT_EPS if segmentation
                else opt.EMBEDDED_EPS if embedded and given is None else grid)
    return tuple(sorted(set(grid)))


def _norm(norm: Any) -> str:
    if norm not in opt.AUDIT_NORMS:
        raise UserError(f"unknown norm '{norm}'{suggest(str(norm), opt.AUDIT_NORMS)}; use {', '.join(opt.AUDIT_NORMS)}")
    return str(norm)


def _n(given: Any, default_segmentation: bool) -> int | None:
    if given is None:
        return opt.SEG_DEFAULT_N if default_segmentation else None  # the bare default fits a 2-core CPU
    return opt.check_int(given, "--n", low=1)


def _batch(given: Any, segmentation: bool) -> int | None:
    """The user's batch size (segmentation's capped); ``None``: chosen when the audit runs."""
    if given is None:
        return None
    size = opt.check_int(given, "--batch-size", low=1)
    return min(size, opt.SEG_MAX_BATCH) if segmentation else size


def _detectors(given: Any, embedded: bool) -> tuple[str, ...]:
    """``defense`` names (a comma-separated string or a list; ``"none"``: no detector); not given: the
    embedded default audit's detector, else none."""
    if given is None:
        given = opt.DEFAULT_DEFENSE if embedded else "none"
    if isinstance(given, str) and given.strip().lower() == "none":
        return ()
    from robustaudit.defenses.detection import parse_detectors  # a misspelt name fails before any model loads

    return tuple(parse_detectors(given))


def _check_task(spec: AuditSpec) -> None:
    """What the task cannot do (``Task.unsupported``), refused in one line before anything is loaded."""
    in_use = {"detectors": bool(spec.detectors), "physical": bool(spec.physical),
              "precision": spec.precision != "fp32", "compile": bool(spec.compile)}
    task_named(spec.task).refuse(o for o, used in in_use.items() if used)


def resolve_task(requested: str, data: Any) -> str:
    """``auto`` -> the data's task; an explicit task must match the data's (one line when it does not)."""
    opt.check_choice(requested, opt.TASKS, "--task")
    have = getattr(data, "task", "classification")
    if requested == "auto" or requested == have:
        return have
    if requested == "segmentation":
        raise UserError(f"--task segmentation needs segmentation data (a class per pixel); '{data.name}' has one "
                        "label per image: use digit-scenes, segfolder:ROOT or voc:ROOT, or --task classification")
    raise UserError(f"--task classification needs one label per image; '{data.name}' is a segmentation set (a "
                    "class per pixel): use --task segmentation (or auto)")
