"""The Python API: :func:`audit`, which builds an :class:`~robustaudit.evaluate.spec.AuditSpec` and runs
it, and :func:`spec_of`, the same for options collected by the CLI (flags over a TOML file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustaudit.attacks.base import Attack
from robustaudit.data.base import as_image_data
from robustaudit.data.registry import open_dataset
from robustaudit.evaluate.distributed import rank_of
from robustaudit.evaluate.execute import execute
from robustaudit.evaluate.options import DEFAULT_ATTACKS, DEFAULT_DATA, DEFAULT_EPS
from robustaudit.evaluate.progress import open_progress
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.runner import Progress
from robustaudit.evaluate.spec import AuditSpec, resolve_spec
from robustaudit.evaluate.subject import ModelLike, attack_entries_from, model_entries, model_specs, open_subject

__all__ = ["attack_entries_from", "audit", "spec_of"]


def audit(
    model: ModelLike | Sequence[ModelLike] | Mapping[str, ModelLike], data: Any = "digits", *,
    attacks: str | Attack | Sequence[str | Attack] = DEFAULT_ATTACKS,
    eps: float | str | Sequence[float | str] = DEFAULT_EPS,
    norm: str = "linf", n: int | None = None, batch_size: int | None = None, device: str = "auto", seed: int = 0,
    out: str | Path | None = None, progress: bool | Progress | None = None, resume: bool = False, overwrite: bool = False,
    checks: str = "basic", cost: bool = True, defense: str | Sequence[str] | None = None, defense_fpr: float = 0.05,
    defense_data: Any = None, physical: bool = False, train_data: Any = None, task: str = "auto",
    precision: str = "fp32", tf32: bool = False, compile: bool = False, distributed: bool = False,
    allow_download: bool = False, model_dir: str | Path | None = None, transfer: bool | None = None,
    class_map: str | Path | Mapping[str, int] | None = None,
) -> ResultMatrix:
    """Audit one or several models under attacks on an eps grid.

    Each option is documented on :class:`~robustaudit.evaluate.spec.AuditSpec`, where its default is
    resolved (the same for the CLI, TOML files and the pytest plugin).

    Args:
        model: an ``nn.Module`` mapping ``(N, C, H, W)`` in [0, 1] to logits ``(N, K)``, a model spec
            string (catalog name, ``file.py:callable``, ``torchvision:resnet18``...), or a list / a
            ``{name: model}`` mapping of those (one matrix row group each).
        data: an ``(x, y)`` pair of tensors (``x`` float in [0, 1], NCHW; ``y`` int64), a ``Dataset``,
            a ``DataLoader`` (materialised once), or a dataset spec string such as ``"digits"``.
        attacks: attack names with inline settings (``"pgd:steps=100"``) or Attack objects.
        eps: radii in pixel units of ``norm``: numbers or fractions such as ``"8/255"``; under
            ``norm="patch"`` the default grid is the patch's area shares, under segmentation its own.
        defense: detectors (``"squeeze"``, ``"metzen"``, ``"mahalanobis"``, a list or comma-separated);
            ``defense_fpr`` and ``defense_data`` set their threshold and fitting data.
        task: ``classification``, ``segmentation`` or ``auto`` (the data's task).
        allow_download, model_dir: how model spec strings with published weights
            (``"torchvision:resnet18:weights=IMAGENET1K_V1"``, ``"robustbench:Standard"``, ``"timm:NAME"``)
            find them: the cache directory, and whether a missing file may be downloaded (off by default).
        transfer: the transferability matrix; ``None``: on for a classification audit of two models or more.
        class_map: data class name -> model output index, for a model with more outputs than the data's
            classes (an ImageNet model on a class subset): ``{"cat": 281, "dog": 207}``, ``"cat=281,dog=207"``
            or a JSON file; ``None``: the default map (:mod:`robustaudit.evaluate.classmap`). Each model is
            audited, and attacked, on those outputs only.
        progress: ``True``: ``robustaudit audit``'s progress on stderr (a bar on a terminal, else plain lines);
            ``False`` / ``None``: silent; or an object with ``start(description, total)``, ``advance(amount)``.
        n, out, resume, overwrite, checks, cost, physical, train_data, precision, tf32, compile,
            distributed: see :class:`~robustaudit.evaluate.spec.AuditSpec`.
    Returns:
        The :class:`ResultMatrix`; ``.records`` holds one row per model × attack × eps.

    Example:
        >>> result = robustaudit.audit(net, (x_test, y_test), attacks=["pgd"], eps=["8/255"])
        >>> result.robust_accuracy("model", "pgd", 8 / 255)
    """
    with open_progress(progress, rank=rank_of()) as bar:  # first: a bad value fails before any work
        model_dir = None if model_dir is None else str(model_dir)
        entries = model_entries(model, model_dir=model_dir, allow_download=allow_download)
        image_data = open_dataset(data) if isinstance(data, str) else as_image_data(data)
        spec = resolve_spec(
            image_data, models=model_specs(entries), attacks=attacks, eps=eps, norm=norm, n=n, batch_size=batch_size,
            device=device, seed=seed, out=None if out is None else str(out), resume=resume, overwrite=overwrite,
            checks=checks, cost=cost, defense=defense, defense_fpr=defense_fpr, defense_data=defense_data,
            physical=physical, train_data=train_data, task=task, precision=precision, tf32=tf32, compile=compile,
            distributed=distributed, allow_download=allow_download, model_dir=model_dir, transfer=transfer,
            class_map=class_map)
        return execute(spec, open_subject(spec, image_data, entries), bar)


def spec_of(given: Mapping[str, Any]) -> tuple[AuditSpec, Any]:
    """Open ``given["data"]`` (default ``digits``) and resolve the spec of the options ``given`` (keys of
    :data:`~robustaudit.evaluate.spec.GIVEN_KEYS` and ``data``); returns the spec and the opened data."""
    options = dict(given)
    data = open_dataset(options.pop("data", None) or DEFAULT_DATA)
    return resolve_spec(data, **options), data
