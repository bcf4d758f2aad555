"""Load a user's model from the string they typed: a catalog name, a factory, a file, a torchvision arch.

:func:`load_model` is the one entry point. Every spec form ends in the same place: an ``nn.Module`` on
the CPU, in eval mode, wrapped by :func:`~robustaudit.models.wrappers.prepare` so it takes [0, 1]
NCHW inputs and returns a logits tensor. Every way the user can get it wrong ends in a one-line
:class:`~robustaudit.core.errors.UserError` that names the file or spec at fault.

Spec forms, tried in this order:

==================================  =====================================================
``NAME``                            a catalog model (``robustaudit.models.catalog``)
``torchvision:ARCH[:k=v,...]``      a torchvision classification or segmentation architecture
                                    (FCN, DeepLabV3, LRASPP), no weights downloaded; e.g.
                                    ``torchvision:resnet18:num_classes=10``
``torchvision:ARCH:weights=ENUM``   torchvision's published weights from torch hub's cache
                                    (``model_dir``; downloaded only with ``allow_download``),
                                    normalized as the enum says (:mod:`.torchvision_weights`)
``timm:NAME``                       a timm architecture (optional extra) with ``weights``,
                                    normalized as timm's config says (:mod:`.timm_models`)
``robustbench:NAME[:k=v,...]``      a RobustBench zoo entry (optional extra; ``dataset=``, ``threat=``)
                                    from its cache (``model_dir``, default ``./models``)
an existing file                    TorchScript (``torch.jit.save``), ``torch.export``
                                    (``.pt2``), or, with ``trust_pickle``, a pickled module
``path/to/file.py:CALLABLE``        a factory in a Python file, called without arguments
``package.module:CALLABLE``         a factory in an importable module
==================================  =====================================================

``weights`` (a ``.safetensors`` file or a ``torch.save``\\ d state_dict) is loaded strictly into the
first, second and last two forms; TorchScript and ``.pt2`` files carry their own. A checkpoint
``FILE`` with a model card ``FILE.json`` holding ``"sha256"`` is checked against it before it is read
(:func:`check_card`), and refused when they differ.

Example::

    >>> loaded = load_model("torchvision:resnet18", weights="resnet18_cifar10.safetensors",
    ...                     normalize="mean=0.49,0.48,0.45,std=0.25,0.24,0.26")
    >>> logits = loaded.module(torch.rand(2, 3, 32, 32))      # (2, 10)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from robustaudit.core.errors import UserError, unknown
from robustaudit.models.cards import card_path, check_card, checkpoint_card
from robustaudit.models.factories import DOTTED, from_import, from_python_file
from robustaudit.models.files import file_sha256
from robustaudit.models.model_files import from_model_file
from robustaudit.models.state_dicts import existing_file, load_state_dict, read_state_dict
from robustaudit.models.storage import check_storage
from robustaudit.models.robustbench_models import ROBUSTBENCH_PREFIX
from robustaudit.models.timm_models import TIMM_PREFIX
from robustaudit.models.torchvision_models import TORCHVISION_PREFIX, from_torchvision, parse_torchvision
from robustaudit.models.wrappers import parse_normalize, prepare

# card_path, check_card and file_sha256 are re-exported: callers import them from here
__all__ = ["LoadedModel", "card_path", "check_card", "file_sha256", "load_model"]

# File endings that mark a spec as a path, so a missing file is reported as such (not as an
# unknown catalog name).
_MODEL_SUFFIXES = {
    ".pt",
    ".pth",
    ".pt2",
    ".ts",
    ".jit",
    ".torchscript",
    ".pkl",
    ".bin",
    ".safetensors",
    ".py",
}


@dataclass(frozen=True)
class LoadedModel:
    """A user's model, ready to attack.

    Attributes:
        name: display name: the catalog name, ``stem:callable`` for a file factory, the spec for a
            module factory or torchvision arch, the file's stem for a model file.
        module: ``prepare(...)``-wrapped, on the CPU, in eval mode: ``(N, C, H, W)`` in [0, 1] in,
            logits tensor out. The caller moves it to its device.
        source: ``"catalog"``, ``"callable"``, ``"torchvision"``, ``"torchscript"``, ``"export"`` or
            ``"pickle"`` (a whole pickled module, loaded with ``trust_pickle=True``).
        weights_sha256: sha256 hex of the file the weights were read from (``weights``, the model
            file, or the catalog's shipped weights); ``None`` when nothing was read.
        spec: the spec string as given.
        card: what a published model's source says about it (``torchvision:ARCH:weights=ENUM``: the
            enum, its url, published figures and input size); ``None`` for the other forms.
    """

    name: str
    module: nn.Module
    source: str
    weights_sha256: str | None
    spec: str
    card: dict[str, Any] | None = None


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    normalize: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    model_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring for the forms).

    Args:
        spec: catalog name, ``torchvision:ARCH[:k=v,...]``, ``file.py:CALLABLE``,
            ``package.module:CALLABLE``, or a TorchScript / ``.pt2`` / pickled-model file.
        weights: a ``.safetensors`` file or a ``torch.save``\\ d state_dict (possibly nested under
            ``'state_dict'``/``'model'``, possibly with a ``module.`` prefix), loaded with
            ``strict=True``; for a catalog model it replaces the shipped weights.
        normalize: ``"mean=...,std=..."`` (see :func:`~robustaudit.models.wrappers.parse_normalize`)
            when the model expects normalized inputs.
        num_classes: the number of classes, for ``torchvision:ARCH`` (an inline ``num_classes=``
            wins over it) and for a factory that takes a ``num_classes`` argument; for a catalog
            model it must match the card. Other forms fix their classes and reject it.
        trust_pickle: allow unpickling a whole pickled module, which runs code from the file.
        model_dir: where published weights are cached (``torchvision:...:weights=ENUM``: torch hub's
            directory, files in its ``checkpoints/``); ``None``: the library's own default.
        allow_download: download published weights missing from the cache (off: a missing file is a
            UserError naming the path expected).

    Returns:
        a :class:`LoadedModel` whose ``module`` takes ``(N, C, H, W)`` in [0, 1] and returns logits.

    Raises:
        UserError: one line naming the spec or file, for every mistake the user can fix.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(
            f"empty model spec {spec!r}; give a catalog name, FILE.py:CALLABLE, "
            "torchvision:ARCH or a model file"
        )
    text = spec.strip()
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    stats = parse_normalize(normalize) if normalize is not None else None
    weights_path = existing_file(weights, "weights file") if weights is not None else None
    if weights_path is not None:
        check_card(weights_path)  # before anything reads the file: a replaced file is never unpickled

    card = None
    if _names_weights(text):  # published weights: the source gives the normalization and a card
        pretrained = _published(text, weights_path, stats, num_classes, model_dir, allow_download)
        model, source, name, sha = pretrained.model, pretrained.source, text, pretrained.sha256
        stats, card = pretrained.normalize, pretrained.card
    else:
        model, source, name, sha = _resolve(text, weights_path, num_classes, trust_pickle)
    return _ready(model, stats, LoadedModel(name, model, source, sha, spec, card))


def _ready(model: nn.Module, stats: Any, loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with ``model`` wrapped by ``prepare`` as its module: checked, on the CPU, in eval mode."""
    name = loaded.name
    module = prepare(model, normalize=stats)
    check_storage(module, name)  # meta or half weights: one line, before .cpu() fails on them
    # A model loaded for an audit has no mode of the user's to preserve; eval is the one that
    # matches how it is used (the runner still guards modes around attacks).
    module.cpu().eval()
    return dataclasses.replace(loaded, module=module)


def _names_weights(spec: str) -> bool:
    """``torchvision:ARCH:...weights=ENUM...`` (published weights named by the spec itself), ``timm:NAME``
    or ``robustbench:NAME``."""
    if spec.startswith((TIMM_PREFIX, ROBUSTBENCH_PREFIX)):
        return True
    return spec.startswith(TORCHVISION_PREFIX) and "weights" in parse_torchvision(spec)[1]


def _published(spec: str, weights: Path | None, stats: Any, num_classes: int | None, model_dir: Any,
               allow_download: bool) -> Any:
    """The :class:`~robustaudit.models.torchvision_weights.Pretrained` of ``spec``; the enum names the
    weights and the normalization, so a ``--weights`` file or ``--normalize`` beside it is refused."""
    from robustaudit.models.torchvision_weights import from_torchvision_weights

    if spec.startswith(TIMM_PREFIX):
        from robustaudit.models.timm_models import from_timm

        if stats is not None:
            raise UserError(f"'{spec}': timm's config gives the normalization; drop --normalize")
        return from_timm(spec, weights, num_classes, model_dir=model_dir, allow_download=allow_download)
    if spec.startswith(ROBUSTBENCH_PREFIX):
        from robustaudit.models.robustbench_models import from_robustbench

        if weights is not None or stats is not None:
            raise UserError(f"'{spec}': RobustBench's cache gives the weights and the model normalizes inside; "
                            "drop --weights and --normalize")
        return from_robustbench(spec, model_dir=model_dir, allow_download=allow_download, num_classes=num_classes)
    if weights is not None:
        raise UserError(f"'{spec}' names its weights (weights=); drop --weights {weights}, or drop weights= to "
                        "load the file into the bare architecture")
    if stats is not None:
        raise UserError(f"'{spec}': the weights enum gives the normalization; drop --normalize")
    return from_torchvision_weights(spec, model_dir=model_dir, allow_download=allow_download,
                                    num_classes=num_classes)


# --------------------------------------------------------------------------------------------------
# dispatch


def _resolve(
    spec: str, weights: Path | None, num_classes: int | None, trust_pickle: bool
) -> tuple[nn.Module, str, str, str | None]:
    """Return ``(raw model, source, display name, sha256)`` for ``spec``."""
    catalog = _catalog()
    names = list(catalog.model_names())
    if spec in names:
        return _from_catalog(catalog, spec, weights, num_classes)
    if spec.startswith(TORCHVISION_PREFIX):
        return from_torchvision(spec, weights, num_classes)
    path = Path(spec)
    if path.is_file():
        card = checkpoint_card(path)
        if card is not None:
            return _from_checkpoint_card(path, card, weights, num_classes)
        return from_model_file(path, weights, num_classes, trust_pickle)
    if path.is_dir():
        raise UserError(
            f"model spec '{spec}' is a directory; give a model file, FILE.py:CALLABLE or a catalog name"
        )
    if ":" in spec:
        left, _, attr = spec.rpartition(":")
        if not attr:
            raise UserError(
                f"model spec '{spec}' has nothing after ':'; "
                "expected FILE.py:CALLABLE or package.module:CALLABLE"
            )
        if left.endswith(".py") or "/" in left or "\\" in left or Path(left).is_file():
            return from_python_file(Path(left), attr, spec, weights, num_classes)
        if DOTTED.fullmatch(left):
            return from_import(left, attr, spec, weights, num_classes)
        raise UserError(
            f"model spec '{spec}' is not FILE.py:CALLABLE, package.module:CALLABLE or torchvision:ARCH"
        )
    if path.suffix.lower() in _MODEL_SUFFIXES or "/" in spec or os.sep in spec:
        raise UserError(f"model file '{spec}' not found")
    forms = (
        "or give FILE.py:CALLABLE, package.module:CALLABLE, torchvision:ARCH, "
        "or a TorchScript/.pt2 file"
    )
    if names:
        raise UserError(f"{unknown('model', spec, names)}; {forms}")
    raise UserError(f"unknown model '{spec}'; {forms}")


def _catalog() -> ModuleType:
    """The catalog module, looked up when a spec is resolved (not bound at import), so a test can stand
    in its own catalog through ``sys.modules``."""
    return importlib.import_module("robustaudit.models.catalog")


def _from_catalog(
    catalog: Any, name: str, weights: Path | None, num_classes: int | None
) -> tuple[nn.Module, str, str, str | None]:
    card = catalog.get_card(name)
    card_classes = getattr(card, "num_classes", None)
    if num_classes is not None and card_classes is not None and num_classes != card_classes:
        raise UserError(
            f"catalog model '{name}' has {card_classes} classes, not num_classes={num_classes}"
        )
    if weights is None:
        model = catalog.create_model(name)
        sha = getattr(card, "sha256", None)
        shipped = getattr(card, "weights_path", None)
        if sha is None and shipped is not None and Path(shipped).is_file():
            sha = file_sha256(shipped)
        return model, "catalog", name, sha
    # The user's weights replace the shipped ones, so skip reading (and checking) those when the
    # catalog lets us.
    try:
        skip_shipped = "pretrained" in inspect.signature(catalog.create_model).parameters
    except (TypeError, ValueError):
        skip_shipped = False
    model = (
        catalog.create_model(name, pretrained=False) if skip_shipped else catalog.create_model(name)
    )
    load_state_dict(model, read_state_dict(weights), weights)
    return model, "catalog", name, file_sha256(weights)


def _from_checkpoint_card(
    path: Path, card: dict[str, Any], weights: Path | None, num_classes: int | None
) -> tuple[nn.Module, str, str, str | None]:
    """Rebuild the card's architecture and load ``path`` into it (strictly), after checking the
    checkpoint's sha256 against the card's."""
    if weights is not None:
        raise UserError(f"'{path}' is a checkpoint with a model card: it is the weights; drop --weights {weights}")
    digest = check_card(path) or file_sha256(path)
    arch = card["architecture"]
    if arch == str(path) or arch.endswith(".json"):
        raise UserError(f"model card '{path.name}.json' names itself as its architecture")
    model, source, _, _ = _resolve(arch, path, num_classes, False)
    return model, source, path.stem, digest

