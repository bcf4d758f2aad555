"""The attack registry: ``get(name, **settings)``, ``names()``, ``register(name, cls)`` and spec parsing.

Built-in attacks are listed explicitly and imported on first use, so importing the registry is cheap
and registration never depends on import side effects.

Spec grammar (the CLI's ``--attack``, TOML plans, ``audit(attacks=[...])``)::

    spec     := name [":" settings] ["(" spec ")"]      wrappers take the wrapped attack in parentheses
              | "foolbox:" CLASS [":" settings]          any foolbox attack by class name
    settings := key "=" value ("," key "=" value)*       values: int, float, 8/255, true/false, none, text

Examples: ``pgd:steps=50,restarts=2``, ``eot:k=20(pgd:steps=50)``, ``bpda(pgd)``,
``eot:k=10(bpda(apgd))``, ``transfer:surrogate=digits-cnn+digits-cnn-pgdat,di=0.5(mifgsm)``,
``foolbox:L2CarliniWagnerAttack:steps=200,stepsize=0.01``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from robustaudit.attacks.base import Attack
from robustaudit.attacks.settings import spec_keys
from robustaudit.core.errors import UserError, suggest, unknown

if TYPE_CHECKING:
    from torch import nn

#: name -> "module:Class" of the attacks robustaudit ships.
BUILTIN: dict[str, str] = {
    "fgsm": "robustaudit.attacks.gradient:FGSM",
    "pgd": "robustaudit.attacks.gradient:PGD",
    "bim": "robustaudit.attacks.gradient:BIM",
    "illc": "robustaudit.attacks.gradient:ILLC",
    "mifgsm": "robustaudit.attacks.gradient:MIFGSM",
    "apgd": "robustaudit.attacks.apgd:APGD",
    "apgd-t": "robustaudit.attacks.apgd:APGDTargeted",
    "square": "robustaudit.attacks.square:Square",
    "cw": "robustaudit.attacks.minimal:CarliniWagnerL2",
    "deepfool": "robustaudit.attacks.minimal:DeepFool",
    "fab-t": "robustaudit.attacks.fab:FABTargeted",
    "autoattack": "robustaudit.attacks.ensemble:AutoAttack",
    "fast": "robustaudit.attacks.ensemble:FastEnsemble",
    "patch": "robustaudit.attacks.patch:AdversarialPatch",
    "atn": "robustaudit.attacks.learned:ATN",
    "advgan": "robustaudit.attacks.learned:AdvGAN",
    "uap": "robustaudit.attacks.uap:UAP",
    "detector-aware-pgd": "robustaudit.attacks.detector_aware:DetectorAwarePGD",
}

#: name -> "module:Class" of the attacks serving the segmentation task (``attacks.get(name,
#: task="segmentation")``); under that task ``pgd`` is pixel-wise PGD. Kept apart from :data:`BUILTIN`
#: so classification names, listings and contract tests are unchanged.
SEGMENTATION: dict[str, str] = {
    "pgd": "robustaudit.attacks.segmentation:PixelPGD",
    "segpgd": "robustaudit.attacks.segmentation:SegPGD",
    "cospgd": "robustaudit.attacks.segmentation:CosPGD",
    "dag": "robustaudit.attacks.segmentation:DAG",
    "seg-uap": "robustaudit.attacks.segmentation:SegUAP",
}
TASKS: tuple[str, ...] = ("classification", "segmentation")

#: name -> "module:Class" of the attacks that wrap another attack (or, for ``foolbox``, a foolbox
#: class); they are built from specs (:func:`from_spec`), not by :func:`get` with settings alone.
WRAPPERS: dict[str, str] = {
    "eot": "robustaudit.attacks.wrappers:EOT",
    "bpda": "robustaudit.attacks.wrappers:BPDA",
    "transfer": "robustaudit.attacks.transfer:Transfer",
    "foolbox": "robustaudit.attacks.foolbox_bridge:FoolboxAttack",
}

_USER: dict[str, type[Attack]] = {}


def register(name: str, cls: type[Attack]) -> type[Attack]:
    """Register a user attack class under ``name`` (an error if the name is taken)."""
    if name in BUILTIN or name in WRAPPERS or name in _USER:
        raise ValueError(f"attack '{name}' is already registered")
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"{cls!r} is not an Attack subclass")
    _USER[name] = cls
    return cls


def names(*, wrappers: bool = False, task: str = "classification") -> list[str]:
    """The registered attack names of ``task``, sorted: each one builds with ``get(name, task=task)`` alone.

    With ``wrappers=True`` (classification) also ``bpda``, ``eot``, ``foolbox`` and ``transfer``, which
    wrap another attack and are built from specs (see :data:`WRAPPERS`); :func:`attack_class` knows them all.
    """
    _check_task(task)
    if task == "segmentation":
        return sorted([*SEGMENTATION, *_USER])
    return sorted([*BUILTIN, *_USER, *(WRAPPERS if wrappers else ())])


def tasks_of(name: str) -> list[str]:
    """The tasks an attack name serves (``[]`` for an unknown name)."""
    out = []
    if name in BUILTIN or name in WRAPPERS or name in _USER or name.startswith("foolbox:"):
        out.append("classification")
    if name in SEGMENTATION or name in _USER:
        out.append("segmentation")
    return out


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'{suggest(task, TASKS)}; use {', '.join(TASKS)}")


def attack_class(name: str, *, task: str = "classification") -> type[Attack]:
    """The class registered under ``name`` for ``task``; :class:`UserError` with a close match when unknown,
    and a one-line refusal when the name serves the other task only."""
    _check_task(task)
    if name in _USER:
        return _USER[name]
    table = SEGMENTATION if task == "segmentation" else {**BUILTIN, **WRAPPERS}
    target = table.get(name)
    if target is None:
        if task == "segmentation" and "classification" in tasks_of(name):
            raise UserError(f"attack '{name}' attacks classifiers, not segmentation models; segmentation "
                            f"attacks: {', '.join(names(task='segmentation'))}")
        if task == "classification" and name in SEGMENTATION:
            raise UserError(f"attack '{name}' attacks segmentation models: use segmentation data or --task "
                            "segmentation")
        raise unknown("attack", name, names(wrappers=True, task=task))
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def valid_settings(cls: type[Attack]) -> list[str]:
    """The settings an attack class accepts in a spec, in declaration order (its ``SETTINGS``; for a
    class without a declaration, its keyword-only ``__init__`` parameters)."""
    return spec_keys(cls)


def get(name: str, *, task: str = "classification", **settings: Any) -> Attack:
    """Build attack ``name`` of ``task`` with ``settings``; unknown settings name the valid ones.

    ``foolbox:CLASS`` builds a foolbox attack with ``settings`` as its constructor arguments. The
    other wrappers need the attack they wrap: build them with :func:`from_spec` or their class.
    Under ``task="segmentation"`` the names are :data:`SEGMENTATION`'s (``pgd`` is pixel-wise PGD).
    The values are checked by the class's declaration (:mod:`robustaudit.attacks.settings`).
    """
    if task == "classification" and name.startswith("foolbox:"):
        return attack_class("foolbox")(name.partition(":")[2], **settings)  # type: ignore[call-arg]
    if task == "classification" and name in WRAPPERS:
        example = "foolbox:LinfPGD:steps=10" if name == "foolbox" else _WRAPPER_EXAMPLES[name]
        raise UserError(f"attack '{name}' wraps another attack: write it as a spec, e.g. {example}")
    cls = attack_class(name, task=task)
    _check_spec_settings(name, settings, valid_settings(cls))
    if cls.SETTINGS.inferred:  # a user class without a declaration: its switches take true or false only
        for key, value in settings.items():
            cls.SETTINGS[key].check(f"attack '{name}'", value)
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


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of attack specs: ``"atn,advgan"`` -> ``["atn", "advgan"]``.

    A piece that reads ``key=value`` (an ``=`` before any ``:``) continues the previous spec's settings,
    so ``"fgsm,pgd:steps=50,restarts=2"`` -> ``["fgsm", "pgd:steps=50,restarts=2"]``; commas inside
    parentheses (wrapped attacks) never split.

    Example:
        >>> split_specs("atn:load=out/artifacts/g.pt,advgan:epochs=5,lr=0.002")
        ['atn:load=out/artifacts/g.pt', 'advgan:epochs=5,lr=0.002']
    """
    pieces: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    out: list[str] = []
    for piece in pieces:
        head = piece.strip()
        eq, colon = head.find("="), head.find(":")
        if out and (not head or (eq > 0 and (colon < 0 or eq < colon) and "(" not in head[:eq])):
            out[-1] = f"{out[-1]},{head}"
        else:
            out.append(head)
    return out


_WRAPPER_EXAMPLES = {
    "eot": "eot:k=20(pgd)",
    "bpda": "bpda(pgd)",
    "transfer": "transfer:surrogate=digits-cnn(mifgsm)",
}


def _split_outer(spec: str) -> tuple[str, str | None]:
    """``"eot:k=5(bpda(pgd))"`` -> ``("eot:k=5", "bpda(pgd)")``; ``"pgd"`` -> ``("pgd", None)``."""
    text = spec.strip()
    open_at = text.find("(")
    if open_at < 0:
        if ")" in text:
            raise UserError(f"unbalanced parentheses in attack spec '{spec}'")
        return text, None
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                if text[i + 1 :].strip():
                    raise UserError(
                        f"unexpected '{text[i + 1:].strip()}' after the wrapped attack in '{spec}'; "
                        "settings go before the parentheses: eot:k=20(pgd)"
                    )
                inner = text[open_at + 1 : i].strip()
                if not inner:
                    raise UserError(f"empty wrapped attack '()' in '{spec}'")
                return text[:open_at].strip(), inner
    raise UserError(f"unbalanced parentheses in attack spec '{spec}'")


def parse_nested(spec: str) -> tuple[str, dict[str, Any], str | None]:
    """Split a spec into (name, settings, wrapped spec or ``None``), one level deep.

    ``foolbox:CLASS:settings`` keeps the class in the name. Parentheses are balanced, so the wrapped
    spec may itself wrap another.

    Examples:
        >>> parse_nested("eot:k=20(pgd:steps=50)")
        ('eot', {'k': 20}, 'pgd:steps=50')
        >>> parse_nested("eot:k=10(bpda(apgd))")
        ('eot', {'k': 10}, 'bpda(apgd)')
        >>> parse_nested("foolbox:L2CarliniWagnerAttack:steps=200,stepsize=0.01")
        ('foolbox:L2CarliniWagnerAttack', {'steps': 200, 'stepsize': 0.01}, None)
        >>> parse_nested("pgd")
        ('pgd', {}, None)
    """
    head, inner = _split_outer(spec)
    name, _, rest = head.partition(":")
    name = name.strip()
    if not name:
        raise UserError(f"empty attack name in '{spec}'")
    if name == "foolbox":
        cls_name, _, rest = rest.partition(":")
        if not cls_name.strip():
            raise UserError(f"'{spec}': name the foolbox attack class, e.g. foolbox:LinfPGD:steps=10")
        name = f"foolbox:{cls_name.strip()}"
    return name, parse_settings(rest, what=f"attack '{name}'"), inner


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"pgd:steps=50,restarts=2"`` into ``("pgd", {"steps": 50, "restarts": 2})``.

    A wrapper's spec puts the wrapped attack's spec under ``"attack"``:
    ``"eot:k=5(pgd)"`` -> ``("eot", {"k": 5, "attack": "pgd"})``; see :func:`parse_nested`.
    """
    name, settings, inner = parse_nested(spec)
    if inner is not None:
        settings = {**settings, "attack": inner}
    return name, settings


def _check_spec_settings(name: str, settings: dict[str, Any], valid: list[str]) -> None:
    for key in settings:
        if key not in valid:
            raise UserError(
                f"attack '{name}' has no setting '{key}'{suggest(key, valid)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )


def from_spec(spec: str, *, resolve_model: Callable[[str], nn.Module] | None = None,
              task: str = "classification") -> Attack:
    """Build an attack from its CLI form, e.g. ``pgd:steps=50,restarts=2,step_size=0.01``.

    Wrappers build their wrapped attack recursively: ``eot:k=10(bpda(apgd))``,
    ``foolbox:LinfPGD:steps=10``. ``transfer:surrogate=NAME[+NAME](ATTACK)`` needs ``resolve_model``
    (model name -> ``nn.Module``, e.g. the catalog) because attacks never load models themselves.

    Example:
        >>> attack = from_spec("eot:k=5(bpda(pgd:steps=3))")
        >>> type(attack).__name__, type(attack.attack).__name__, attack.attack.attack.steps
        ('EOT', 'BPDA', 3)
    """
    name, settings, inner = parse_nested(spec)
    if task != "classification":
        attack_class(name, task=task)  # unknown, or serving the other task: one line
        if inner is not None:
            raise UserError(f"attack '{name}' does not wrap another attack; remove '({inner})' from '{spec}'")
        return get(name, task=task, **settings)
    if name.startswith("foolbox:"):
        if inner is not None:
            raise UserError(f"'{spec}': a foolbox attack does not wrap another attack")
        return get(name, **settings)
    if name not in WRAPPERS or name == "foolbox":
        attack_class(name)  # an unknown name: say so (with a close match) before anything else
        if inner is not None:
            raise UserError(f"attack '{name}' does not wrap another attack; remove '({inner})' from '{spec}'")
        if name == "foolbox":
            raise UserError(f"'{spec}': name the foolbox attack class, e.g. foolbox:LinfPGD:steps=10")
        return get(name, **settings)
    if inner is None:
        raise UserError(f"attack '{name}' wraps another attack: write it as {_WRAPPER_EXAMPLES[name]}")
    cls = attack_class(name)
    _check_spec_settings(name, settings, valid_settings(cls))
    if name == "transfer":
        return _transfer(cls, spec, settings, inner, resolve_model)
    return cls(from_spec(inner, resolve_model=resolve_model), **settings)  # type: ignore[call-arg]


def _transfer(cls: type[Attack], spec: str, settings: dict[str, Any], inner: str,
              resolve_model: Callable[[str], nn.Module] | None) -> Attack:
    if resolve_model is None:
        raise UserError(
            f"'{spec}': a transfer attack needs its surrogate model names resolved to models; build it "
            "through the audit (CLI, robustaudit.audit) or pass from_spec(..., resolve_model=...)"
        )
    surrogate = settings.get("surrogate")
    if not isinstance(surrogate, str) or not surrogate.strip("+ "):
        raise UserError(f"'{spec}': transfer needs surrogate=MODEL (several: surrogate=a+b)")
    model_names = [n.strip() for n in surrogate.split("+")]
    if any(not n for n in model_names):
        raise UserError(f"'{spec}': empty surrogate name in '{surrogate}'")
    surrogates = {n: resolve_model(n) for n in model_names}
    return cls(from_spec(inner, resolve_model=resolve_model), surrogates,  # type: ignore[call-arg]
               input_diversity=settings.get("di", 0.0))
