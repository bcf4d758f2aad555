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

import importlib
import importlib.util
import inspect
import itertools
import json
import logging
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import torch
from torch import nn

from robustaudit.core.errors import UserError, suggest, unknown
from robustaudit.core.hashing import file_sha256
from robustaudit.models.wrappers import ExportedModule, parse_normalize, prepare
from robustaudit.models.wrappers import _describe as _type_name

__all__ = ["LoadedModel", "card_path", "check_card", "file_sha256", "load_model"]

_TORCHVISION = "torchvision:"
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
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENT}(\.{_IDENT})*")
# Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MODULE_COUNTER = itertools.count()


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
    """

    name: str
    module: nn.Module
    source: str
    weights_sha256: str | None
    spec: str


#: The model card beside a checkpoint: ``FILE.json`` for ``FILE`` (e.g. ``net.safetensors.json``).
CARD_SUFFIX = ".json"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def card_path(path: str | os.PathLike[str]) -> Path:
    """Where the model card of the checkpoint ``path`` lives: ``path`` + ``.json``."""
    return Path(str(path) + CARD_SUFFIX)


def check_card(path: str | os.PathLike[str]) -> str | None:
    """Verify ``path`` against the ``"sha256"`` of its model card, if it has one.

    The card is ``FILE.json`` beside ``FILE``, in the format of the shipped
    ``robustaudit/models/weights/<name>.json`` manifests (``name``, ``sha256``, ``torch``, ``train``,
    ``reported``...); only ``sha256`` is read here. Returns the verified hex digest, or ``None`` when
    there is no card or it records no ``sha256``.

    Raises:
        UserError: the card is not a JSON object, its ``sha256`` is not 64 hex digits, or the file's
            digest differs from it (a corrupted or replaced checkpoint).
    """
    card = card_path(path)
    if not card.is_file():
        return None
    try:
        doc = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"cannot read the model card '{card}' of '{path}': {_first_line(err)}") from None
    if not isinstance(doc, dict):
        raise UserError(f"model card '{card}' must be a JSON object with a \"sha256\" key, got {_type_name(doc)}")
    expected = doc.get("sha256")
    if expected is None:
        return None
    if not isinstance(expected, str) or not _SHA256_HEX.fullmatch(expected.strip().lower()):
        raise UserError(f"model card '{card}': \"sha256\" must be 64 hex digits, got {expected!r:.80}")
    expected = expected.strip().lower()
    digest = file_sha256(path)
    if digest != expected:
        raise UserError(
            f"'{path}' has sha256 {digest[:12]}…, but its card '{card.name}' expects {expected[:12]}…: "
            "refused: the file was corrupted or replaced, or the card belongs to another file"
        )
    return digest


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    normalize: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
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
    weights_path = _existing_file(weights, "weights file") if weights is not None else None
    if weights_path is not None:
        check_card(weights_path)  # before anything reads the file: a replaced file is never unpickled

    model, source, name, sha = _resolve(text, weights_path, num_classes, trust_pickle)
    module = prepare(model, normalize=stats)
    # A model loaded for an audit has no mode of the user's to preserve; eval is the one that
    # matches how it is used (the runner still guards modes around attacks).
    module.cpu().eval()
    return LoadedModel(name=name, module=module, source=source, weights_sha256=sha, spec=spec)


# --------------------------------------------------------------------------------------------------
# dispatch


def _resolve(
    spec: str, weights: Path | None, num_classes: int | None, trust_pickle: bool
) -> tuple[nn.Module, str, str, str | None]:
    """Return ``(raw model, source, display name, sha256)`` for ``spec``."""
    catalog = _catalog()
    names = list(catalog.model_names()) if catalog is not None else []
    if spec in names:
        return _from_catalog(catalog, spec, weights, num_classes)
    if spec.startswith(_TORCHVISION):
        return _from_torchvision(spec, weights, num_classes)
    path = Path(spec)
    if path.is_file():
        card = _checkpoint_card(path)
        if card is not None:
            return _from_checkpoint_card(path, card, weights, num_classes)
        return _from_model_file(path, weights, num_classes, trust_pickle)
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
            return _from_python_file(Path(left), attr, spec, weights, num_classes)
        if _DOTTED.fullmatch(left):
            return _from_import(left, attr, spec, weights, num_classes)
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


def _catalog() -> ModuleType | None:
    """The catalog module, or ``None`` while it does not exist yet (imported at call time)."""
    try:
        return importlib.import_module("robustaudit.models.catalog")
    except ModuleNotFoundError as err:
        # Only the catalog's own absence is tolerated; a missing dependency inside it is a bug.
        if err.name == "robustaudit.models.catalog":
            return None
        raise


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
    _load_state_dict(model, _read_state_dict(weights), weights)
    return model, "catalog", name, file_sha256(weights)


# --------------------------------------------------------------------------------------------------
# checkpoints with a model card (written by `robustaudit train`)


def _checkpoint_card(path: Path) -> dict[str, Any] | None:
    """The model card ``CKPT.json`` beside a state_dict checkpoint ``CKPT``, when it names an
    architecture; ``None`` otherwise (the file is then loaded as any other model file)."""
    import json

    card_file = path.with_name(path.name + ".json")
    if path.suffix.lower() == ".json" or not card_file.is_file():
        return None
    try:
        card = json.loads(card_file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"model card '{card_file}' is not readable JSON: {_first_line(err)}") from None
    if not isinstance(card, dict) or not isinstance(card.get("architecture"), str):
        return None
    return card


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


# --------------------------------------------------------------------------------------------------
# torchvision


def _from_torchvision(
    spec: str, weights: Path | None, num_classes: int | None
) -> tuple[nn.Module, str, str, str | None]:
    import torchvision

    arch, _, settings = spec[len(_TORCHVISION) :].partition(":")
    arch = arch.strip()
    kwargs = _parse_settings(settings, spec)
    classification = torchvision.models.list_models(module=torchvision.models)
    segmentation = torchvision.models.list_models(module=torchvision.models.segmentation)
    if arch not in classification and arch not in segmentation:
        supported = classification + segmentation
        if arch in torchvision.models.list_models():
            raise UserError(
                f"'{spec}': '{arch}' is not a torchvision classification or segmentation architecture; "
                f"torchvision:ARCH takes one of: {', '.join(sorted(supported))}"
            )
        raise unknown("torchvision classification or segmentation architecture", arch, supported)
    if "weights" in kwargs or "weights_backbone" in kwargs:
        raise UserError(
            f"'{spec}': robustaudit never downloads weights; "
            "save them to a file and pass it with --weights"
        )

    state = _read_state_dict(weights) if weights is not None else None
    if arch in segmentation:
        # torchvision's segmentation builders fetch ImageNet backbone weights by default: never here
        kwargs["weights_backbone"] = None
        kwargs.setdefault("aux_loss", False)
        if state is not None and not kwargs["aux_loss"]:
            state = _drop_aux_classifier(state, weights, spec)
    if "num_classes" in kwargs:
        if num_classes is not None and num_classes != kwargs["num_classes"]:
            warnings.warn(
                f"'{spec}' sets num_classes={kwargs['num_classes']}, "
                f"which overrides num_classes={num_classes}",
                stacklevel=4,
            )
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    elif state is not None:
        inferred = _infer_num_classes(arch, kwargs, state)
        if inferred is not None:
            kwargs["num_classes"] = inferred

    model = _build_torchvision(arch, kwargs, spec)
    if weights is None or state is None:
        warnings.warn(
            f"'{spec}' has no weights (random initialization): its accuracy will be at chance; "
            "pass the trained weights with --weights",
            stacklevel=4,
        )
        return model, "torchvision", spec, None
    _load_state_dict(model, state, weights)
    return model, "torchvision", spec, file_sha256(weights)


def _drop_aux_classifier(state: dict[str, Any], path: Path | None, spec: str) -> dict[str, Any]:
    """Drop the ``aux_classifier.*`` keys of a torchvision segmentation checkpoint trained with
    ``aux_loss=True``: the auxiliary head only feeds ``dict['aux']``, which no attack or metric reads, and
    building it would cost a second head's compute at every attack step. ``aux_loss=true`` keeps it."""
    aux = [key for key in state if key.startswith("aux_classifier.")]
    if not aux:
        return state
    warnings.warn(
        f"'{spec}': {len(aux)} aux_classifier weights in '{path}' are not loaded (the auxiliary head is "
        "training-only; add ':aux_loss=true' to keep it)",
        stacklevel=5,
    )
    return {key: value for key, value in state.items() if not key.startswith("aux_classifier.")}


def _parse_settings(settings: str, spec: str) -> dict[str, Any]:
    """Parse ``num_classes=10,aux_logits=false`` into builder keyword arguments."""
    kwargs: dict[str, Any] = {}
    for item in (s.strip() for s in settings.split(",")):
        if not item:
            continue
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not re.fullmatch(_IDENT, key) or not raw:
            raise UserError(
                f"'{spec}': setting '{item}' is not KEY=VALUE (e.g. torchvision:resnet18:num_classes=10)"
            )
        kwargs[key] = _literal(raw)
    if "num_classes" in kwargs:
        value = kwargs["num_classes"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"'{spec}': num_classes must be a positive integer, got '{value}'")
    return kwargs


def _literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


@contextmanager
def _quiet_torchvision_init() -> Iterator[None]:
    # GoogLeNet and Inception warn about a future change of their random init on every build with
    # weights=None; that is torchvision's note to itself, not something the user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The default weight initialization", category=FutureWarning
        )
        yield


def _build_torchvision(arch: str, kwargs: dict[str, Any], spec: str) -> nn.Module:
    import torchvision

    try:
        with _quiet_torchvision_init():
            return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"'{spec}': torchvision rejected the settings {kwargs}: {_first_line(err)}"
        ) from None


def _infer_num_classes(
    arch: str, kwargs: dict[str, Any], state: Mapping[str, torch.Tensor]
) -> int | None:
    """The classes the weights were trained for: the out-features of the layers whose shape differs
    from the default (1000-class) model's only in the first dimension.

    The reference model is built on the meta device (no memory, no init cost); a few architectures
    (RegNet) compute their widths with tensors and cannot be built there, and are built on the CPU.
    """
    import torchvision

    try:
        with _quiet_torchvision_init(), torch.device("meta"):
            reference = torchvision.models.get_model(arch, weights=None, **kwargs)
    except NotImplementedError:
        try:
            reference = _build_torchvision(arch, kwargs, arch)
        except UserError:
            return None
    except (TypeError, ValueError):
        return None  # the real build reports the bad setting
    found = set()
    for key, expected in reference.state_dict().items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor) or got.ndim != expected.ndim or got.ndim == 0:
            continue
        if got.shape[0] != expected.shape[0] and got.shape[1:] == expected.shape[1:]:
            found.add(int(got.shape[0]))
    # Several candidates means the weights differ in more than the head: strict loading will say how.
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------------
# model files: TorchScript, torch.export, pickled modules


def _from_model_file(
    path: Path, weights: Path | None, num_classes: int | None, trust_pickle: bool
) -> tuple[nn.Module, str, str, str | None]:
    check_card(path)
    kind = _sniff(path)
    if kind == "python":
        raise UserError(
            f"'{path}' is a Python file: name the function that builds the model, as '{path}:CALLABLE'"
        )
    if kind == "safetensors":
        raise UserError(
            f"'{path}' holds weights only (safetensors), not a model: give the architecture with "
            f"--model ARCH and the file with --weights {path}"
        )
    if kind in ("torchscript", "export"):
        label = "TorchScript" if kind == "torchscript" else "torch.export"
        if weights is not None:
            raise UserError(
                f"'{path}' is a {label} model, which carries its own weights; drop --weights {weights}"
            )
        if num_classes is not None:
            raise UserError(
                f"'{path}' is a {label} model with fixed classes; drop num_classes={num_classes}"
            )
        model = _load_torchscript(path) if kind == "torchscript" else _load_export(path)
        return model, kind, path.stem, file_sha256(path)
    if num_classes is not None:
        raise UserError(
            f"'{path}' is a model file with fixed classes; drop num_classes={num_classes}"
        )
    model = _load_pickled_module(path, trust_pickle)
    if weights is not None:
        _load_state_dict(model, _read_state_dict(weights), weights)
        return model, "pickle", path.stem, file_sha256(weights)
    return model, "pickle", path.stem, file_sha256(path)


def _sniff(path: Path) -> str:
    """Tell a file's kind by its content (the extension only breaks ties).

    Returns ``"python"``, ``"safetensors"``, ``"torchscript"``, ``"export"`` or ``"torch"`` (a
    ``torch.save`` file, or anything unrecognised: ``torch.load`` will say what is wrong with it).
    """
    suffix = path.suffix.lower()
    if suffix == ".py":
        return "python"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"
        # Every PyTorch archive puts its records under one top folder; what matters is below it.
        inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
        if "constants.pkl" in inner or any(name.startswith("code/") for name in inner):
            return "torchscript"
        if "archive_format" in inner or suffix == ".pt2":
            return "export"
        return "torch"
    if suffix == ".safetensors" or _looks_like_safetensors(path):
        return "safetensors"
    if suffix == ".pt2":
        return "export"
    return "torch"


def _looks_like_safetensors(path: Path) -> bool:
    # The format: an 8-byte little-endian header length, then that many bytes of JSON.
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch deprecates the TorchScript API for its own callers (us); the user's file is fine.
            warnings.filterwarnings(
                "ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated"
            )
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        raise UserError(f"could not load TorchScript model '{path}': {_first_line(err)}") from None


def _load_export(path: Path) -> nn.Module:
    try:
        with _quiet_logger("torch.export"):
            program = torch.export.load(str(path))
            graph = program.module()
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        raise UserError(
            f"could not load torch.export archive '{path}': {_first_line(err)}"
        ) from None
    return ExportedModule(graph, str(path))


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    # torch.export logs a warning WITH a traceback before it retries a corrupt archive another way;
    # the one-line error below says what went wrong, so the traceback is noise on the user's stderr
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _torch_load_safe(path: Path, role: str) -> Any:
    """``torch.load(weights_only=True)``; returns ``None`` when the file holds other pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _could_be_pickle(path):
            raise UserError(
                f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
                "it is neither a zip archive (torch.save) nor a pickle"
            ) from None
        if "weights only load failed" in str(err).lower():
            return None
        raise UserError(
            f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
            f"{_first_line(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated zips, bad magic numbers, EOF: all a bad file
        if _broken_zip(path):  # torch's own words for it are about miniz and its central directory
            raise UserError(
                f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
                "a zip archive cut short or damaged (torch.save, TorchScript and .pt2 files are zip archives)"
            ) from None
        raise UserError(
            f"could not read {role} '{path}' (corrupt, truncated or not a PyTorch file?): "
            f"{_first_line(err)}"
        ) from None


def _broken_zip(path: Path) -> bool:
    """A file that starts like a zip archive but cannot be opened as one (cut short, or damaged)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _could_be_pickle(path: Path) -> bool:
    """Whether ``path`` may hold pickled objects: a zip archive (``torch.save``) or a stream that opens
    with pickle's PROTO opcode (the legacy format); random bytes are then "corrupt", not "a pickle"."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _pickled_classes(path: Path) -> list[str]:
    """The classes a ``torch.save`` archive would import when unpickled, read without unpickling."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - only for the message; old non-zip files are not inspectable
        return []


def _describe_pickle(path: Path) -> str:
    classes = _pickled_classes(path)
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    what = (
        "a pickled model"
        if any(".nn.modules." in c for c in classes) or not classes
        else "pickled Python objects"
    )
    return f"'{path}' is {what}" + (f" ({shown})" if shown else "")


def _load_pickled_module(path: Path, trust_pickle: bool) -> nn.Module:
    obj = _torch_load_safe(path, "model file")
    if obj is None:
        if not trust_pickle:
            raise UserError(
                f"{_describe_pickle(path)}; unpickling runs code from the file: "
                "pass --trust-pickle if you trust its source, "
                "or save its state_dict and give --model ARCH --weights FILE"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - e.g. the class it was pickled with is not importable
            raise UserError(
                f"unpickling '{path}' failed ({type(err).__name__}: {_first_line(err)}); "
                "the classes it was saved with must be importable, "
                "or save its state_dict and give --model ARCH --weights FILE"
            ) from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
        return obj["model"]  # a checkpoint that pickles the whole model under 'model'
    if _is_state_dict(obj) or (
        isinstance(obj, Mapping) and any(_is_state_dict(obj.get(k)) for k in _CHECKPOINT_KEYS)
    ):
        raise UserError(
            f"'{path}' holds a state_dict, not a model: give the architecture with --model ARCH "
            f"and the file with --weights {path}"
        )
    raise UserError(f"'{path}' holds {_type_name(obj)}, not a model")


# --------------------------------------------------------------------------------------------------
# factories: file.py:callable and package.module:callable


def _from_python_file(
    path: Path, attr: str, spec: str, weights: Path | None, num_classes: int | None
) -> tuple[nn.Module, str, str, str | None]:
    if not path.is_file():
        raise UserError(f"model file '{path}' not found (from '{spec}')")
    _check_attr(attr, spec)
    # A fresh, unique module name per load: two files with the same stem never collide, and a file
    # edited between two loads in one process is read again.
    safe_stem = re.sub(r"\W", "_", path.stem)
    module_name = f"robustaudit_user_{safe_stem}_{next(_MODULE_COUNTER)}"
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    if file_spec is None or file_spec.loader is None:
        raise UserError(f"cannot import '{path}' as Python code")
    module = importlib.util.module_from_spec(file_spec)
    label = f"'{path}'"
    # Like `python file.py`, the file's folder is importable while it loads and builds, so a model
    # file can import its sibling modules.
    with _on_sys_path(path.resolve().parent):
        # Registered before running so dataclasses and pickling inside the file can find it.
        sys.modules[module_name] = module
        try:
            file_spec.loader.exec_module(module)
        except BaseException as err:  # noqa: BLE001 - re-raised: KeyboardInterrupt as is, the rest as UserError
            sys.modules.pop(module_name, None)
            _reraise_import_error(err, label)
        factory = _get_callable(module, attr, label)
        model = _call_factory(factory, f"'{path}:{attr}'", num_classes)
    return _with_weights(model, "callable", f"{path.stem}:{attr}", weights)


def _from_import(
    module_name: str, attr: str, spec: str, weights: Path | None, num_classes: int | None
) -> tuple[nn.Module, str, str, str | None]:
    _check_attr(attr, spec)
    label = f"module '{module_name}'"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (
            module_name == err.name or module_name.startswith(err.name + ".")
        ):
            raise UserError(
                f"cannot import module '{module_name}' (no module named '{err.name}'); "
                f"for a file, write path/to/file.py:{attr}"
            ) from None
        _reraise_import_error(err, label)
    except BaseException as err:  # noqa: BLE001 - see _reraise_import_error
        _reraise_import_error(err, label)
    factory = _get_callable(module, attr, label)
    model = _call_factory(factory, f"'{spec}'", num_classes)
    return _with_weights(model, "callable", spec, weights)


def _with_weights(
    model: nn.Module, source: str, name: str, weights: Path | None
) -> tuple[nn.Module, str, str, str | None]:
    if weights is None:
        return model, source, name, None
    _load_state_dict(model, _read_state_dict(weights), weights)
    return model, source, name, file_sha256(weights)


def _check_attr(attr: str, spec: str) -> None:
    if not _DOTTED.fullmatch(attr):
        raise UserError(f"'{attr}' in '{spec}' is not a Python name; expected FILE.py:CALLABLE")


def _reraise_import_error(err: BaseException, label: str) -> NoReturn:
    """Turn an exception raised while importing user code into a one-line UserError."""
    if isinstance(err, KeyboardInterrupt):
        raise err
    if isinstance(err, SyntaxError):
        where = f"'{err.filename}' line {err.lineno}" if err.filename else label
        raise UserError(f"syntax error in {where} (importing {label}): {err.msg}") from None
    if isinstance(err, SystemExit):
        raise UserError(
            f"importing {label} called sys.exit({err.code!r}); "
            "put script code under if __name__ == '__main__':"
        ) from None
    raise UserError(f"importing {label} raised {type(err).__name__}: {_first_line(err)}") from None


@contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _public_callables(module: ModuleType) -> list[str]:
    """Public callables defined in ``module``; all public callables when it defines none itself."""
    items = [(n, v) for n, v in vars(module).items() if not n.startswith("_") and callable(v)]
    own = [n for n, v in items if getattr(v, "__module__", None) == module.__name__]
    return sorted(own or [n for n, v in items if not isinstance(v, ModuleType)])


def _get_callable(module: ModuleType, attr: str, label: str) -> Callable[..., Any]:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            choices = _public_callables(module)
            listing = (
                f"; callables: {', '.join(choices)}"
                if choices
                else "; it defines no public callables"
            )
            raise UserError(f"{label} has no callable '{attr}'{suggest(attr, choices)}{listing}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(
            f"'{attr}' in {label} is not callable ({_type_name(obj)}); "
            "name the function or class that builds the model"
        )
    return obj


def _call_factory(factory: Callable[..., Any], label: str, num_classes: int | None) -> nn.Module:
    """Call the factory with no arguments (or ``num_classes=`` when given and accepted)."""
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None  # builtins and some C types: just call and report what happens
    kwargs: dict[str, Any] = {}
    if signature is not None:
        params = signature.parameters.values()
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        takes_classes = takes_any or any(
            p.name == "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            for p in params
        )
        required = [
            p.name
            for p in params
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and not (p.name == "num_classes" and num_classes is not None)
        ]
        if required:
            raise UserError(
                f"{label} needs arguments ({', '.join(required)}) but is called with none; give them "
                "defaults or wrap it in a function that takes no arguments"
            )
        if num_classes is not None:
            if not takes_classes:
                raise UserError(
                    f"{label} takes no num_classes argument, but num_classes={num_classes} was given"
                )
            kwargs["num_classes"] = num_classes
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - the user's factory failed; say so in one line
        raise UserError(f"{label} raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{label} returned {_type_name(model)}, expected torch.nn.Module")
    return model


# --------------------------------------------------------------------------------------------------
# weights


def _existing_file(path: str | os.PathLike[str], role: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise UserError(f"{role} must be a path, got {path!r}")
    resolved = Path(path)
    if not resolved.exists():
        raise UserError(f"{role} '{path}' not found")
    if not resolved.is_file():
        raise UserError(f"{role} '{path}' is not a file")
    return resolved


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a ``torch.save`` file, unwrapping checkpoints."""
    kind = _sniff(path)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _strip_prefixes(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(
                f"could not read weights file '{path}' (corrupt or truncated safetensors?): "
                f"{_first_line(err)}"
            ) from None
    if kind in ("torchscript", "export"):
        label = "TorchScript" if kind == "torchscript" else "torch.export"
        raise UserError(
            f"weights file '{path}' is a {label} model, not weights: "
            "give it as the model and drop --weights"
        )
    if kind == "python":
        raise UserError(
            f"weights file '{path}' is Python code; "
            "--weights takes a .safetensors or state_dict .pt file"
        )
    obj = _torch_load_safe(path, "weights file")
    if obj is None:
        raise UserError(
            f"weights file {_describe_pickle(path)}, not a state_dict; give it as the model with "
            "--trust-pickle, or save model.state_dict() and pass that"
        )
    return _strip_prefixes(_unwrap_state_dict(obj, path))


def _is_state_dict(obj: object) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    # `_extra_state` entries may hold any object a module chose to save.
    return all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        for k, v in obj.items()
    )


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)  # type: ignore[call-overload]
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in itertools.islice(obj, 8)) + (
            ", ..." if len(obj) > 8 else ""
        )
        raise UserError(
            f"weights file '{path}' is a dict ({keys or 'empty'}) but not a state_dict; "
            "expected parameter names -> tensors, or a checkpoint with them under "
            f"{' or '.join(repr(k) for k in _CHECKPOINT_KEYS)}"
        )
    raise UserError(f"weights file '{path}' holds {_type_name(obj)}, not a state_dict")


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def _load_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Load strictly; explain any mismatch in one line before torch's multi-line message can."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first_keys(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first_keys(unexpected)})")
        raise UserError(f"weights '{path}' do not fit the model: keys {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
            continue
        if nn.parameter.is_lazy(want):
            continue  # shape decided by the weights themselves
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(
                f"weights '{path}' do not fit the model: '{key}' has shape {tuple(got.shape)} "
                f"in the file but {tuple(want.shape)} in the model"
            )
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"weights '{path}' do not fit the model: {_first_line(err)}") from None


def _first_keys(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


# --------------------------------------------------------------------------------------------------
# helpers


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message: errors here are one line by contract."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
