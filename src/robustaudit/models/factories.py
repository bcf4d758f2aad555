"""Model factories: ``path/to/file.py:CALLABLE`` and ``package.module:CALLABLE``, imported and called with
no arguments (or ``num_classes=``); whatever the user's code raises becomes one line naming it."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from torch import nn

from robustaudit.core.errors import UserError, suggest
from robustaudit.models.files import file_sha256, first_line
from robustaudit.models.state_dicts import load_state_dict, read_state_dict
from robustaudit.models.wrappers import type_name

__all__ = ["DOTTED", "IDENT", "from_import", "from_python_file", "with_weights"]


IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = re.compile(rf"{IDENT}(\.{IDENT})*")
_MODULE_COUNTER = itertools.count()


def from_python_file(
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
    return with_weights(model, "callable", f"{path.stem}:{attr}", weights)


def from_import(
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
    return with_weights(model, "callable", spec, weights)


def with_weights(
    model: nn.Module, source: str, name: str, weights: Path | None
) -> tuple[nn.Module, str, str, str | None]:
    if weights is None:
        return model, source, name, None
    load_state_dict(model, read_state_dict(weights), weights)
    return model, source, name, file_sha256(weights)


def _check_attr(attr: str, spec: str) -> None:
    if not DOTTED.fullmatch(attr):
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
    raise UserError(f"importing {label} raised {type(err).__name__}: {first_line(err)}") from None


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
            f"'{attr}' in {label} is not callable ({type_name(obj)}); "
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
        raise UserError(f"{label} raised {type(err).__name__}: {first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{label} returned {type_name(model)}, expected torch.nn.Module")
    return model
