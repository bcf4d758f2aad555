"""``torchvision:ARCH:weights=ENUM``: torchvision's published weights, read from torch hub's cache.

The enum (``ResNet18_Weights.IMAGENET1K_V1``, or ``DEFAULT``) names everything: the file
(``<hub dir>/checkpoints/<the file name of its url>``, the layout ``torch.hub`` itself writes), the
normalization and input size (its ``transforms()``), the published accuracy (``meta["_metrics"]``).
Nothing is downloaded unless the caller allows it (``allow_download``); a missing file is a one-line
:class:`~robustaudit.core.errors.UserError` naming the exact path expected and the flag.

The model is built by torchvision's own builder with the enum (so every builder's own handling of its
weights applies: class count, Inception's ``transform_input``, DenseNet's old key names), after the file
has been read once with ``weights_only=True``: torch hub unpickles cached files with
``weights_only=False``, so a file holding anything but tensors is refused before it gets there.

Example::

    >>> pre = from_torchvision_weights("torchvision:resnet18:weights=IMAGENET1K_V1", model_dir=None,
    ...                                allow_download=False)
    >>> pre.normalize, pre.card["input_size"]      # ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), [224, 224]
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from robustaudit.core.errors import UserError, suggest
from robustaudit.models.files import file_sha256, first_line
from robustaudit.models.state_dicts import load_state_dict, read_state_dict
from robustaudit.models.torchvision_models import parse_torchvision, quiet_torchvision_init

__all__ = ["Pretrained", "cached_file", "from_torchvision_weights", "hub_dir", "list_torchvision_weights",
           "weights_enum"]

#: torch hub's convention: ``name-<first 8+ hex digits of the file's sha256>.ext``.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")


@dataclass(frozen=True)
class Pretrained:
    """A torchvision model with its published weights.

    Attributes:
        model: the raw network (``(N, 3, H, W)`` normalized inputs -> logits), on the CPU.
        normalize: the enum's ``(mean, std)``, one value per channel, for the ``Normalize`` wrapper;
            ``None`` when the model normalizes inside (RobustBench's).
        sha256: the cached file's sha256 hex.
        card: what the provenance records: the enum, its url and published figures, the file, whether
            its sha256 is the one its name announces, the input size the weights were trained at.
        source: the library (``torchvision``; ``timm`` and ``robustbench`` build the same record).
    """

    model: nn.Module
    normalize: tuple[list[float], list[float]] | None
    sha256: str
    card: dict[str, Any]
    source: str = "torchvision"


def hub_dir(model_dir: str | os.PathLike[str] | None) -> Path:
    """The torch hub directory weights are read from: ``model_dir`` when given, else ``torch.hub.get_dir()``
    (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``)."""
    return Path(model_dir).expanduser() if model_dir is not None else Path(torch.hub.get_dir())


def cached_file(weights: Any, model_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where torch hub keeps the file of ``weights`` (a torchvision weights enum member)."""
    return hub_dir(model_dir) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def weights_enum(arch: str, name: str, spec: str) -> Any:
    """The member ``name`` (``IMAGENET1K_V1``, ``DEFAULT`` or ``ResNet18_Weights.IMAGENET1K_V1``) of
    ``arch``'s weights enum; an unknown name lists the close matches."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    short = name.removeprefix(f"{enum.__name__}.")
    if short in enum.__members__:
        return enum[short]
    names = list(enum.__members__)
    raise UserError(f"'{spec}': {enum.__name__} has no weights '{short}'{suggest(short, names)}; it has "
                    f"{', '.join(sorted(names))} (robustaudit list models --source torchvision)")


def from_torchvision_weights(
    spec: str, *, model_dir: str | os.PathLike[str] | None, allow_download: bool, num_classes: int | None = None
) -> Pretrained:
    """Load ``torchvision:ARCH:weights=ENUM[,k=v...]`` from torch hub's cache (see the module docstring).

    Raises:
        UserError: unknown architecture or enum, missing file without ``allow_download``, a corrupt
            or foreign cached file, settings the builder rejects; each in one line.
    """
    arch, kwargs, _ = parse_torchvision(spec)
    name = kwargs.pop("weights")
    if not isinstance(name, str):
        raise UserError(f"'{spec}': weights= takes a weights enum name such as DEFAULT or IMAGENET1K_V1, got {name!r}")
    if "weights_backbone" in kwargs:
        raise UserError(f"'{spec}': weights= gives the whole model's weights; drop weights_backbone=")
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)  # the builder refuses a count other than the enum's
    weights = weights_enum(arch, name, spec)
    label = f"{type(weights).__name__}.{weights.name}"
    path = _ensure_cached(weights, label, model_dir, allow_download)
    try:
        state = read_state_dict(path)  # weights_only=True: a pickle with code never reaches torch hub
    except UserError as err:
        raise UserError(f"cached weights of {label} are unusable: {err}; delete the file to download it "
                        "again with --allow-download") from None
    sha = file_sha256(path)
    model = _build(arch, weights, kwargs, path, state, spec)
    del state
    categories = weights.meta.get("categories")
    if isinstance(categories, list):
        # the output names the class map matches an ImageFolder's folder names against (evaluate/classmap.py)
        model.class_names = list(categories)
    announced = _announced_hash(path)
    published = announced is None or sha.startswith(announced)
    if not published:
        warnings.warn(f"'{path}' is not the file torchvision publishes for {label} (its sha256 starts "
                      f"{sha[:len(announced or '')]}, its name says {announced}): the published accuracy does "
                      "not describe it", stacklevel=3)
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", None)
    resize = getattr(transforms, "resize_size", None)
    card = {
        "weights_enum": label, "weights_url": weights.url, "weights_file": str(path), "published_file": published,
        "published": _finite(weights.meta.get("_metrics", {})), "num_params": weights.meta.get("num_params"),
        "input_size": [int(crop[0]), int(crop[-1])] if crop else None,
        "resize_size": [int(v) for v in resize] if resize else None,
    }
    stats = ([float(v) for v in transforms.mean], [float(v) for v in transforms.std])
    card.update(mean=stats[0], std=stats[1])
    return Pretrained(model=model, normalize=stats, sha256=sha, card=card)


def _finite(metrics: Any) -> Any:
    """``meta["_metrics"]`` with unpublished figures (torchvision writes NaN) as ``None``: valid JSON."""
    if isinstance(metrics, dict):
        return {str(k): _finite(v) for k, v in metrics.items()}
    if isinstance(metrics, float) and not math.isfinite(metrics):
        return None
    return metrics


def _ensure_cached(weights: Any, label: str, model_dir: Any, allow_download: bool) -> Path:
    """The cached file of ``weights``, downloaded first when it is missing and ``allow_download``."""
    path = cached_file(weights, model_dir)
    if path.is_file():
        return path
    if path.exists():
        raise UserError(f"weights of {label} are expected in the file '{path}', which is a directory")
    if not allow_download:
        beside = path.parent.parent / path.name
        hint = (f" ('{beside}' exists: --model-dir is torch hub's directory, files go in its checkpoints/)"
                if beside.is_file() else "")
        raise UserError(f"weights of {label} are not in the cache: expected '{path}'{hint}; put the file there "
                        f"(from {weights.url}) or pass --allow-download (allow_download=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # writes a temporary file and moves it in place once its hash is checked
        torch.hub.download_url_to_file(weights.url, str(path), _announced_hash(path), progress=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"could not download {weights.url} to '{path}': {first_line(err)}") from None
    return path


def _build(arch: str, weights: Any, kwargs: dict[str, Any], path: Path, state: dict[str, Any], spec: str) -> nn.Module:
    """torchvision's builder with ``weights``, reading the file at ``path`` (already checked) through torch
    hub pointed at its directory; a file that does not fit the architecture is explained in one line."""
    import torchvision

    try:
        with _hub_dir_set(path.parent.parent), quiet_torchvision_init():
            return torchvision.models.get_model(arch, weights=weights, progress=False, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"'{spec}': torchvision rejected the settings {kwargs}: {first_line(err)}") from None
    except RuntimeError as err:  # load_state_dict's multi-line report: say it in one line
        categories = weights.meta.get("categories")
        with quiet_torchvision_init():
            bare = torchvision.models.get_model(arch, weights=None, **({"num_classes": len(categories)}
                                                                     if categories else {}))
        try:
            load_state_dict(bare, state, path)
        except UserError as explained:
            raise UserError(f"cached weights of {arch} are not {type(weights).__name__}'s: {explained}") from None
        raise UserError(f"cached weights '{path}' do not fit {arch}: {first_line(err)}") from None


@contextmanager
def _hub_dir_set(directory: Path) -> Iterator[None]:
    """Point torch hub at ``directory`` for the builder's read, then restore the caller's setting."""
    previous = getattr(torch.hub, "_hub_dir", None)  # None: derived from $TORCH_HOME, as before
    torch.hub.set_dir(str(directory))
    try:
        yield
    finally:
        torch.hub._hub_dir = previous  # set_dir cannot restore "unset"


def _announced_hash(path: Path) -> str | None:
    """The first hex digits of the sha256 the file's name announces (torch hub's convention), if any."""
    match = _HASH_IN_NAME.search(path.name)
    return match.group(1) if match else None


def list_torchvision_weights(model_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every classification weights enum of torchvision, offline: ``spec``, ``params``, ``acc1`` (published
    ImageNet-1K top-1, percent; ``None`` when not published), ``default`` (the enum's DEFAULT), ``cached``
    (its file is in the hub directory) and ``file`` (that file's path)."""
    import torchvision

    rows = []
    for arch in sorted(torchvision.models.list_models(module=torchvision.models)):
        enum = torchvision.models.get_model_weights(arch)
        default = enum.__members__.get("DEFAULT")
        for member in enum:  # iterating an enum skips aliases: DEFAULT is marked, not listed twice
            metrics = _finite(member.meta.get("_metrics", {})).get("ImageNet-1K", {})
            path = cached_file(member, model_dir)
            rows.append({"spec": f"torchvision:{arch}:weights={member.name}", "params": member.meta.get("num_params"),
                         "acc1": metrics.get("acc@1"), "default": member is default, "cached": path.is_file(),
                         "file": str(path)})
    return rows
