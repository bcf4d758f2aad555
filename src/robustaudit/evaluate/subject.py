"""What an audit runs on: the opened models, data and attacks of an :class:`AuditSpec`.

The spec holds names and options; :func:`open_subject` turns its model specs and attack specs into the
runner's :class:`ModelEntry` rows and :class:`AttackEntry` columns (or takes models handed over in Python)
and refuses, before anything runs, models built for the other task or another input shape.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.registry import from_spec, parse_spec, split_specs
from robustaudit.core.errors import UserError
from robustaudit.data.base import ImageData
from robustaudit.evaluate.plan import ModelSpec
from robustaudit.evaluate.runner import AttackEntry, ModelEntry
from robustaudit.evaluate.spec import AuditSpec
from robustaudit.models.loading import LoadedModel, load_model
from robustaudit.models.storage import check_storage
from robustaudit.models.wrappers import prepare

ModelLike = nn.Module | str | LoadedModel

__all__ = ["ModelLike", "Subject", "attack_entries_from", "check_model_tasks", "model_entries", "open_subject"]


@dataclass
class Subject:
    """The rows, the data and the columns of one audit (opened from its spec)."""

    entries: list[ModelEntry]
    data: ImageData
    attacks: list[AttackEntry]


def open_subject(spec: AuditSpec, data: ImageData, entries: list[ModelEntry] | None = None) -> Subject:
    """Open ``spec``'s models (unless ``entries``, models handed over in Python, are given) and attacks
    on ``data``; refuse models of the other task or input shape; restrict a classifier with more outputs
    than the data's classes to theirs (:mod:`robustaudit.evaluate.classmap`)."""
    if entries is None:
        entries = [_load(m, spec) for m in spec.models]
        _tell_apart(entries, list(spec.models))
    _unique([e.name for e in entries], "model")
    attacks = attack_entries_from(list(spec.attacks), task=spec.task)
    check_model_tasks(entries, spec.task, data)  # a catalog segmentation model: one line, not a shape error
    check_surrogates(attacks, data)  # likewise a transfer attack's catalog surrogate, before anything runs
    warn_input_sizes(entries, data)
    if spec.task == "classification":
        from robustaudit.evaluate.classmap import apply_class_maps
        from robustaudit.evaluate.physical import check_patch_norm

        check_patch_norm(attacks, spec.norm)
        # more outputs than the data's classes: each model restricted to the data's (the label map)
        apply_class_maps(entries, data, spec.class_map)
    return Subject(entries, data, attacks)


def _load(m: ModelSpec, spec: AuditSpec) -> ModelEntry:
    # the class count comes from the weights (or an inline num_classes=), never from the data: the
    # runner then checks outputs against labels with a message about both
    loaded = load_model(m.spec, weights=m.weights, normalize=m.normalize, trust_pickle=spec.trust_pickle,
                        model_dir=spec.model_dir, allow_download=spec.allow_download)
    entry = _model_entry(m.name or loaded.name, loaded)
    entry.info["normalize"] = m.normalize  # changes the numbers: part of the resume fingerprint
    return entry


def model_entries(model: Any, *, model_dir: str | None = None, allow_download: bool = False) -> list[ModelEntry]:
    """The rows of ``audit(model, ...)``: an ``nn.Module``, a spec string, a :class:`LoadedModel`, or a
    list / ``{name: model}`` mapping of those; spec strings are loaded with ``model_dir`` and
    ``allow_download`` (see :func:`~robustaudit.models.loading.load_model`)."""
    return [_model_entry(name, load_model(m, model_dir=model_dir, allow_download=allow_download)
                         if isinstance(m, str) else m) for name, m in _named_models(model)]


def model_specs(entries: Sequence[ModelEntry]) -> tuple[ModelSpec, ...]:
    """How the spec describes models handed over in Python: their spec string, else ``python:NAME``."""
    return tuple(ModelSpec(e.info.get("spec") or f"python:{e.name}") for e in entries)


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
        info = {"source": model.source, "spec": model.spec, "weights_sha256": model.weights_sha256,
                **(model.card or {})}
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
    check_storage(module, label)  # meta or half weights: one line now, not a torch error in the first forward
    info["params"] = sum(p.numel() for p in module.parameters())
    return ModelEntry(label, module, info)


def _card(spec: str) -> Any:
    from robustaudit.models.catalog import get_card

    try:
        return get_card(spec)
    except UserError:
        return None


def _tell_apart(entries: list[ModelEntry], models: list[ModelSpec]) -> None:
    """Rows of one spec with different weights files (two checkpoints of one factory, before and after
    fine-tuning) are named after their file: ``nets:make_net[a.pt]``, ``nets:make_net[b.pt]``. Names a
    ``[[models]]`` table gave are kept; what is still the same is refused by :func:`_unique`."""
    names = [e.name for e in entries]
    for e, m in zip(entries, models):
        clash = [other for other, n in zip(models, names) if n == e.name and other is not m]
        if clash and m.name is None and m.weights and all(o.weights != m.weights for o in clash):
            # the file's name, or the path as given where two files share a name (runs/a/net.pt, runs/b/net.pt)
            short = Path(m.weights).name
            e.name = f"{e.name}[{m.weights if any(o.weights and Path(o.weights).name == short for o in clash) else short}]"


def _unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{what} name '{dupes[0]}' appears twice; each row needs its own name"
                        + ("; name them: 'name' in each [[models]] table of --config, or audit(model={name: model})"
                           if what == "model" else ""))


def check_model_tasks(entries: Sequence[ModelEntry], task: str, data: ImageData) -> None:
    """Refuse, before anything runs, a catalog model whose card says it does the other task or takes
    inputs of another shape (a classifier's exact ``(C, H, W)``; a segmentation model's channels)."""
    from robustaudit.models.catalog import get_card, model_names

    for e in entries:
        card = _card(str(e.info["spec"])) if e.info.get("source") == "catalog" and e.info.get("spec") else None
        if card is None:
            continue
        if card.task == task:
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


def check_surrogates(attacks: Sequence[AttackEntry], data: ImageData) -> None:
    """Refuse, before anything runs, a transfer attack whose catalog surrogate's card says it is not a
    classifier or takes inputs of another ``(C, H, W)`` than the data's images. Other surrogates (files,
    torchvision, timm) are probed on the first batch by :class:`~robustaudit.attacks.transfer.Transfer`."""
    from robustaudit.attacks.transfer import Transfer

    shape = tuple(data.sample_shape)
    for a in attacks:
        if not isinstance(a.attack, Transfer):
            continue
        for name in a.attack.surrogate_names:
            card = _card(name)
            if card is None:
                continue
            if card.task != "classification":
                raise UserError(f"'{a.name}': surrogate '{name}' is a {card.task} model, not a classifier; a "
                                "transfer surrogate must classify the audited data")
            if tuple(card.input_shape) != shape:
                raise UserError(f"'{a.name}': surrogate '{name}' takes {'x'.join(map(str, card.input_shape))} inputs "
                                f"but data '{data.name}' has {'x'.join(map(str, shape))} images; pick a surrogate "
                                "for this data")


def warn_input_sizes(entries: Sequence[ModelEntry], data: ImageData) -> None:
    """One warning per model whose published weights were trained at another input size than the data's
    images (a torchvision enum's crop size): it runs (convolutional nets pool to any size), but its
    published accuracy does not describe it at this size. Nothing is resized here: the data's own
    ``size=`` setting does that, when the user asks."""
    shape = tuple(getattr(data, "sample_shape", ()))
    for e in entries:
        want = e.info.get("input_size")
        if not want or len(shape) != 3 or tuple(shape[1:]) == tuple(want):
            continue
        size = "x".join(map(str, want))
        resize = e.info.get("resize_size")
        how = f" (resized to {resize[0]}, centre-cropped)" if resize else ""
        warnings.warn(f"model '{e.name}' ({e.info.get('weights_enum')}) was trained on {size} inputs{how} but data "
                      f"'{data.name}' has {shape[1]}x{shape[2]} images: its published accuracy does not apply at "
                      f"this size; resize the data to {size} (e.g. imagefolder:ROOT:size={want[0]})", stacklevel=3)
