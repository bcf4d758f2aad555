"""Model files that carry their own architecture: TorchScript, ``torch.export`` (``.pt2``) and, only with
``trust_pickle``, a whole pickled module."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustaudit.core.errors import UserError
from robustaudit.models.cards import check_card
from robustaudit.models.files import describe_pickle, file_sha256, first_line, sniff, torch_load_safe
from robustaudit.models.state_dicts import CHECKPOINT_KEYS, is_state_dict, load_state_dict, read_state_dict
from robustaudit.models.wrappers import ExportedModule, type_name

__all__ = ["from_model_file"]


def from_model_file(
    path: Path, weights: Path | None, num_classes: int | None, trust_pickle: bool
) -> tuple[nn.Module, str, str, str | None]:
    check_card(path)
    kind = sniff(path)
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
        load_state_dict(model, read_state_dict(weights), weights)
        return model, "pickle", path.stem, file_sha256(weights)
    return model, "pickle", path.stem, file_sha256(path)


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch deprecates the TorchScript API for its own callers (us); the user's file is fine.
            warnings.filterwarnings(
                "ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated"
            )
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        raise UserError(f"could not load TorchScript model '{path}': {first_line(err)}") from None


def _load_export(path: Path) -> nn.Module:
    try:
        with _quiet_logger("torch.export"):
            program = torch.export.load(str(path))
            graph = program.module()
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        raise UserError(
            f"could not load torch.export archive '{path}': {first_line(err)}"
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


def _unpickle(path: Path) -> Any:
    """``torch.load`` of a whole pickled object. Its classes are looked up by module name; a module beside
    the file or in the working directory (``nets.py`` next to ``net.pt``) is found the way ``python -m``
    would find it: the console script's ``sys.path`` holds neither, so a first miss retries with both in
    front, for this load only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError:
        added = [d for d in dict.fromkeys((str(Path.cwd()), str(path.resolve().parent))) if d not in sys.path]
        if not added:
            raise
        sys.path[:0] = added
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        finally:
            for d in added:
                sys.path.remove(d)


def _load_pickled_module(path: Path, trust_pickle: bool) -> nn.Module:
    obj = torch_load_safe(path, "model file")
    if obj is None:
        if not trust_pickle:
            raise UserError(
                f"{describe_pickle(path)}; unpickling runs code from the file: "
                "pass --trust-pickle if you trust its source, "
                "or save its state_dict and give --model ARCH --weights FILE"
            )
        try:
            obj = _unpickle(path)
        except Exception as err:  # noqa: BLE001 - e.g. the class it was pickled with is not importable
            raise UserError(
                f"unpickling '{path}' failed ({type(err).__name__}: {first_line(err)}); "
                "the classes it was saved with must be importable, "
                "or save its state_dict and give --model ARCH --weights FILE"
            ) from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
        return obj["model"]  # a checkpoint that pickles the whole model under 'model'
    if is_state_dict(obj) or (
        isinstance(obj, Mapping) and any(is_state_dict(obj.get(k)) for k in CHECKPOINT_KEYS)
    ):
        raise UserError(
            f"'{path}' holds a state_dict, not a model: give the architecture with --model ARCH "
            f"and the file with --weights {path}"
        )
    raise UserError(f"'{path}' holds {type_name(obj)}, not a model")
