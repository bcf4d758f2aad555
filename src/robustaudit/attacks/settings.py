"""One declaration of an attack's settings: type, range, default and a one-line doc per setting.

An attack class declares ``SETTINGS`` once; the declaration validates the values at construction
(``<Class>.SETTINGS.apply(self, locals())`` in ``__init__``, one :class:`UserError` line naming the setting, its value and the allowed
range), caps absurd values (``pgd:steps=10**20`` would run forever), names what a spec may set
(:func:`spec_keys`), drives ``settings()`` and ``repr`` and documents the attack in
``robustaudit list attacks NAME``. The keyword-only ``__init__`` signature stays for IDEs; the
base class checks at class creation that it and the declaration agree (names, order, defaults).

Example:
    >>> SETTINGS = Settings(Int("steps", 50, "iterations per restart", 1, MAX_STEPS),
    ...                     Choice("loss", "ce", "objective", ("ce", "margin")))
    >>> SETTINGS["steps"].range_text(), SETTINGS["loss"].range_text()
    ('1 .. 100000', 'ce | margin')
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from robustaudit.core.errors import UserError

#: Upper bounds of the counting settings: generous for any real audit, far below "runs forever".
MAX_STEPS = 100_000  # iterations of a search or a fit (steps, max_iter, iterations, compact_every)
MAX_RESTARTS = 1_000
MAX_QUERIES = 1_000_000  # model evaluations per sample of a score-based attack
MAX_CLASSES = 100_000  # class counts and indices (target classes, candidates, a class to hide)
MAX_BATCH = 65_536
MAX_EPOCHS = 10_000
MAX_SAMPLES = 100_000_000  # training samples a fit draws from (and indices into them)
MAX_WIDTH = 4_096  # channels of a generator network
MAX_EOT = 10_000  # forward passes averaged per gradient
MAX_SEARCH = 1_000  # binary-search steps of C&W's constant

_TYPE_TEXT = {int: "int", float: "float", bool: "bool", str: "str"}


@dataclass(frozen=True)
class Setting:
    """One setting of an attack: what it holds, what it may hold, its default and what it means.

    ``low``/``high`` bound numbers (``open_low``/``open_high`` exclude the bound); ``choices`` list the
    allowed words; ``optional`` admits ``None`` (the documented automatic value); ``parse`` replaces the
    type check with a function ``(owner, value) -> value`` for values of their own grammar. ``key`` is
    the spec's name when it differs from the keyword; ``spec=False`` settings take Python objects and
    cannot be written in a spec; ``init=False`` ones exist in specs only (the spec builder reads them).
    """

    name: str
    type: type | None
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    parse: Callable[[str, Any], Any] | None = None
    key: str | None = None
    spec: bool = True
    init: bool = True
    noun: str | None = None
    kind: str | None = None

    @property
    def spec_key(self) -> str:
        """The name a spec uses (``transfer``'s ``di`` for ``input_diversity``)."""
        return self.key or self.name

    def but(self, **changes: Any) -> Setting:
        """A copy with some fields changed (a subclass's other default)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def check(self, owner: str, value: Any) -> Any:
        """The value to store, or :class:`UserError` ``"{owner}: {name} must be ..., got {value!r}"``."""
        if value is None and self.optional:
            return None
        if self.parse is not None:
            return self.parse(owner, value)
        if self.type is bool:
            if not isinstance(value, bool):
                raise UserError(f"{owner}: {self.name} is a switch: true or false, got {value!r}")
            return value
        if self.choices:
            if value not in self.choices:
                raise UserError(f"{owner}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.type is int:
            return self._check_int(owner, value)
        if self.type is float:
            return self._check_float(owner, value)
        if self.type is str and (not isinstance(value, str) or not value.strip()):
            raise UserError(f"{owner}: {self.name} must be {self.noun or 'a non-empty text'}, got {value!r}")
        return value

    def _check_int(self, owner: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self._inside(value):
            none = " (or none)" if self.optional else ""
            raise UserError(f"{owner}: {self.name} must be {self.noun or 'an integer'} {self.range_text(words=True)}"
                            f"{none}, got {value!r}")
        return value

    def _check_float(self, owner: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{owner}: {self.name} must be a number, got {value!r}")
        # NaN passes every comparison and inf breaks the JSON results: both refused
        if not math.isfinite(value):
            raise UserError(f"{owner}: {self.name} must be a finite number, got {value!r}")
        if not self._inside(value):
            raise UserError(f"{owner}: {self.name} must be {self.range_text(words=True)}, got {value!r}")
        return float(value)

    def _inside(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.open_high and value == self.high))

    # ------------------------------------------------------------------ documentation
    def type_text(self) -> str:
        """``int``, ``float``, ``bool``, ``str`` or the setting's own word (``class``, ``object``)."""
        text = self.kind or _TYPE_TEXT.get(self.type, "object")  # type: ignore[arg-type]
        return f"{text} | none" if self.optional else text

    def range_text(self, *, words: bool = False) -> str:
        """What the setting accepts: ``1 .. 100000``, ``(0, 1]``, ``> 0``, ``ce | margin``...

        ``words=True`` phrases a numeric range for a sentence: ``>= 1 and <= 100000``.
        """
        if self.choices:
            return " | ".join(self.choices)
        if self.type is bool:
            return "true | false"
        lo = None if self.low is None else (">" if self.open_low else ">=") + f" {_num(self.low)}"
        hi = None if self.high is None else ("<" if self.open_high else "<=") + f" {_num(self.high)}"
        if words or self.low is None or self.high is None:
            return " and ".join(p for p in (lo, hi) if p) or ("any" if self.type is None and not self.parse else "")
        if self.type is int:
            return f"{_num(self.low)} .. {_num(self.high)}"
        return f"{'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}{')' if self.open_high else ']'}"


def _num(x: float) -> str:
    """A bound as written: ``100000``, not ``1e+05``; ``0.5``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ---------------------------------------------------------------------------------------- shorthands
def Int(name: str, default: int | None, doc: str, low: int = 1, high: int = MAX_STEPS, **kw: Any) -> Setting:  # noqa: N802
    """An integer setting in ``[low, high]``."""
    return Setting(name, int, default, doc, low=low, high=high, **kw)


def Float(name: str, default: float | None, doc: str, low: float | None = None, high: float | None = None,  # noqa: N802
          **kw: Any) -> Setting:
    """A finite number in ``[low, high]`` (``open_low``/``open_high`` exclude a bound), stored as ``float``."""
    return Setting(name, float, default, doc, low=low, high=high, **kw)


def Bool(name: str, default: bool, doc: str) -> Setting:  # noqa: N802
    """A switch: ``True`` or ``False`` only (``bool(value)`` would read ``maybe`` as true)."""
    return Setting(name, bool, default, doc)


def Choice(name: str, default: str | None, doc: str, choices: tuple[str, ...], **kw: Any) -> Setting:  # noqa: N802
    """One word of ``choices``."""
    return Setting(name, str, default, doc, choices=choices, **kw)


def ClassIndex(name: str, default: int | None, doc: str, **kw: Any) -> Setting:  # noqa: N802
    """A class index ``>= 0`` (checked against the model's outputs when it runs)."""
    return Setting(name, int, default, doc, low=0, high=MAX_CLASSES, noun="a class index", kind="class", **kw)


def FilePath(name: str, doc: str) -> Setting:  # noqa: N802
    """An optional file path (``None``: no file)."""
    return Setting(name, str, None, doc, optional=True, noun="the path of a file", kind="path")


# ---------------------------------------------------------------------------------------- a declaration
class Settings:
    """The ordered settings of one attack class (see the module docstring)."""

    def __init__(self, *items: Setting, exclusive: tuple[tuple[str, str], ...] = (), inferred: bool = False) -> None:
        names = [s.name for s in items]
        if len(set(names)) != len(names):
            raise TypeError(f"settings declared twice in {names}")
        self.items: tuple[Setting, ...] = items
        #: pairs of settings of which at most one may be given (``step_size`` or ``rel_step_size``)
        self.exclusive = tuple(pair for pair in exclusive if set(pair) <= set(names))
        #: True when read from an ``__init__`` signature (an attack without a declaration)
        self.inferred = inferred

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, name: str) -> Setting:
        for s in self.items:
            if s.name == name:
                return s
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"Settings({', '.join(s.name for s in self.items)})"

    def pick(self, *items: str | Setting) -> Settings:
        """A new declaration of these settings in this order: names taken from this one, or new settings."""
        return Settings(*(self[i] if isinstance(i, str) else i for i in items), exclusive=self.exclusive)

    def init_names(self) -> list[str]:
        """The ``__init__`` keywords, in order."""
        return [s.name for s in self.items if s.init]

    def apply(self, obj: Any, given: Mapping[str, Any]) -> None:
        """Validate ``given[name]`` (an ``__init__``'s ``locals()``) of every keyword and set it on ``obj``.

        Errors are prefixed with ``obj.name`` (``pgd: steps must be ...``).
        """
        owner = str(getattr(obj, "name", type(obj).__name__))
        for s in self.items:
            if s.init:
                setattr(obj, s.name, s.check(owner, given[s.name]))
        for a, b in self.exclusive:
            if given[a] is not None and given[b] is not None:
                raise UserError(f"{owner}: give {a} or {b}, not both")

    @classmethod
    def infer(cls, init: Callable[..., Any]) -> Settings:
        """The settings of an undeclared ``__init__``: its keyword-only parameters, untyped except switches."""
        items = []
        for p in _keywords(init):
            default = None if p.default is inspect.Parameter.empty else p.default
            items.append(Setting(p.name, bool if isinstance(default, bool) else None, default, optional=True))
        return cls(*items, inferred=True)


def _forwards(init: Callable[..., Any]) -> bool:
    try:
        kinds = [p.kind for p in list(inspect.signature(init).parameters.values())[1:]]
    except (TypeError, ValueError):
        return False
    return inspect.Parameter.VAR_KEYWORD in kinds and all(
        k in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for k in kinds)


def _keywords(init: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        params = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def conform(cls: type, inherited: Settings | None) -> Settings:
    """The declaration of attack class ``cls``, checked against its ``__init__`` at class creation.

    A declaration in the class body must list exactly the keyword-only ``__init__`` parameters, in
    order and with the same defaults (a ``TypeError`` for the developer otherwise). A class without
    one keeps its parent's when that still fits, else gets one inferred from its signature.
    """
    params = _keywords(cls.__init__)  # type: ignore[misc]
    signature = [(p.name, p.default) for p in params]
    own = cls.__dict__.get("SETTINGS")
    if own is None and inherited is not None and _forwards(cls.__init__):  # type: ignore[misc]
        return inherited  # __init__(self, *args, **kwargs) passes everything on to its parent's
    candidate = own if own is not None else inherited
    if candidate is not None:
        declared = [(s.name, s.default) for s in candidate if s.init]
        if declared == signature:
            return candidate
        if own is not None:
            raise TypeError(f"{cls.__name__}.SETTINGS declares {declared} but __init__ takes {signature}")
    return Settings.infer(cls.__init__)  # type: ignore[misc]


def spec_keys(cls: type) -> list[str]:
    """The settings a spec may give attack class ``cls`` (``pgd:steps=5``), in declaration order."""
    return [s.spec_key for s in declared(cls) if s.spec]


def declared(cls: type) -> Settings:
    """``cls.SETTINGS``, or the settings inferred from its ``__init__`` for a class that is no Attack."""
    found = getattr(cls, "SETTINGS", None)
    return found if isinstance(found, Settings) else Settings.infer(cls.__init__)  # type: ignore[misc]


def check_like_defaults(what: str, init: Callable[..., Any], settings: Mapping[str, Any]) -> None:
    """Refuse a value whose type differs from its parameter's default, for classes that do not check
    their own settings (foolbox's, which would fail mid-attack instead).

    A ``bool`` default takes true or false only; an ``int`` default only integers; a ``float``
    default only finite numbers. Parameters without a default, or defaulting to ``None``, take anything.
    """
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return
    for key, value in settings.items():
        param = params.get(key)
        default = param.default if param is not None else inspect.Parameter.empty
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{what}: {key} is a switch: true or false, got {value!r}")
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{what}: {key} must be an integer, got {value!r}")
        elif isinstance(default, float) and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise UserError(f"{what}: {key} must be a finite number, got {value!r}")
