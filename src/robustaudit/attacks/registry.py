"""The attack registry: ``get(name, **settings)``, ``names()``, ``register(name, cls)`` and spec parsing.

Built-in attacks are listed explicitly and imported on first use, so importing the registry is cheap
and registration never depends on import side effects.
"""

from __future__ import annotations

import importlib
import inspect
from fractions import Fraction
from typing import Any

from robustaudit.attacks.base import Attack
from robustaudit.core.errors import UserError, suggest, unknown

#: name -> "module:Class" of the attacks robustaudit ships.
BUILTIN: dict[str, str] = {
    "fgsm": "robustaudit.attacks.gradient:FGSM",
    "pgd": "robustaudit.attacks.gradient:PGD",
}

_USER: dict[str, type[Attack]] = {}


def register(name: str, cls: type[Attack]) -> type[Attack]:
    """Register a user attack class under ``name`` (an error if the name is taken)."""
    if name in BUILTIN or name in _USER:
        raise ValueError(f"attack '{name}' is already registered")
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"{cls!r} is not an Attack subclass")
    _USER[name] = cls
    return cls


def names() -> list[str]:
    """All registered attack names, sorted."""
    return sorted([*BUILTIN, *_USER])


def attack_class(name: str) -> type[Attack]:
    """The class registered under ``name``; :class:`UserError` with a close match when unknown."""
    if name in _USER:
        return _USER[name]
    if name not in BUILTIN:
        raise unknown("attack", name, names())
    module, _, cls = BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def valid_settings(cls: type[Attack]) -> list[str]:
    """The keyword-only settings an attack class accepts."""
    params = inspect.signature(cls.__init__).parameters
    return [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def get(name: str, **settings: Any) -> Attack:
    """Build attack ``name`` with ``settings``; unknown settings name the valid ones."""
    cls = attack_class(name)
    valid = valid_settings(cls)
    for key in settings:
        if key not in valid:
            raise UserError(
                f"attack '{name}' has no setting '{key}'{suggest(key, valid)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
    try:
        return cls(**settings)
    except TypeError as exc:  # wrong value types that the class did not catch itself
        raise UserError(f"attack '{name}': {exc}") from None


def parse_value(text: str) -> Any:
    """Parse an inline setting value: bool, None, int, float, a fraction like ``8/255``, else string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if "/" in t:
        try:
            return float(Fraction(t))
        except (ValueError, ZeroDivisionError):
            pass
    return t


def parse_settings(text: str, *, what: str) -> dict[str, Any]:
    """``"steps=50,restarts=2"`` -> ``{"steps": 50, "restarts": 2}``; ``what`` names it in errors."""
    out: dict[str, Any] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UserError(f"{what}: cannot parse setting '{part.strip()}': expected key=value")
        if key in out:
            raise UserError(f"{what}: setting '{key}' given twice")
        out[key] = parse_value(value)
    return out


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"pgd:steps=50,restarts=2"`` into ``("pgd", {"steps": 50, "restarts": 2})``."""
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise UserError(f"empty attack name in '{spec}'")
    return name, parse_settings(rest, what=f"attack '{name}'")


def from_spec(spec: str) -> Attack:
    """Build an attack from its CLI form, e.g. ``pgd:steps=50,restarts=2,step_size=0.01``."""
    name, settings = parse_spec(spec)
    return get(name, **settings)
