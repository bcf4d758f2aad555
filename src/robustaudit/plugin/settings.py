"""Settings of the pytest plugin: profiles, marker validation and the precedence between sources.

Standard library only (plus ``robustaudit.core``, which is torch-free): marker validation runs at test
setup and must not drag torch into a session that only validates.

Precedence, first match wins: the fixture call's keyword arguments, then the
``@pytest.mark.robustness(...)`` marker (the closest one per key: function over class over module),
then the ``--robust-*`` options, then ``[tool.pytest.ini_options]``, then the profile, then the
defaults of :func:`robustaudit.audit`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from robustaudit.core.errors import UserError, suggest
from robustaudit.evaluate.options import (  # torch-free: the audit's defaults and levels, defined once
    CHECK_LEVELS,
    DEFAULT_DEVICE,
    DEFAULT_SEED,
    check_choice,
    parse_class_map,
    parse_eps,
)

#: Valid keys of ``@pytest.mark.robustness(...)`` (``attack`` and ``attacks`` are synonyms).
MARKER_KEYS: tuple[str, ...] = (
    "attack",
    "attacks",
    "eps",
    "norm",
    "n",
    "min_accuracy",
    "bound",
    "steps",
    "restarts",
    "seed",
    "device",
    "batch_size",
    "checks",
    "allow_failed_checks",
    "class_map",
)
#: What a gate may compare against the threshold: the measured accuracy or its lower 95% bound.
BOUNDS: tuple[str, ...] = ("point", "lower")
DEFAULT_BOUND = "point"
DEFAULT_PROFILE = "ci"


@dataclass(frozen=True)
class Profile:
    """One switch for the cost of every audit in a session.

    ``n`` caps the samples per audit (``None``: all); ``steps`` and ``restarts`` apply to attacks given
    by bare name (``"pgd"``) that have those settings. An attack written with inline settings
    (``"pgd:steps=7"``) keeps its own. ``checks`` is the level of the sanity checks after each audit
    (:data:`CHECK_LEVELS`): a smoke run skips them, since they cost about a fifth of an audit.
    """

    name: str
    n: int | None
    steps: int
    restarts: int
    checks: str

    def describe(self, checks: str | None = None) -> str:
        """``'ci (n=256, steps=50, restarts=1, checks=basic)'``; ``checks`` shows a level that overrides
        the profile's (``--robust-checks``)."""
        n = "all" if self.n is None else str(self.n)
        return f"{self.name} (n={n}, steps={self.steps}, restarts={self.restarts}, checks={checks or self.checks})"


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", 64, 10, 1, "off"),
    "ci": Profile("ci", 256, 50, 1, "basic"),
    "full": Profile("full", None, 100, 5, "full"),
}

#: ``n="all"`` in a marker or call: every sample, overriding the profile's cap.
ALL = "all"


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one audit (or the defaults a test starts from)."""

    profile: str
    attacks: tuple[Any, ...] | None  # None: robustaudit.audit's default attacks
    eps: tuple[float, ...] | None  # None: robustaudit.audit's default grid
    norm: str
    n: int | None  # None: all samples
    steps: int
    restarts: int
    steps_explicit: bool  # given by the marker or the call (not the profile): an error if unusable
    restarts_explicit: bool
    seed: int
    device: str
    batch_size: int | None  # None: chosen by the audit (the largest that fits)
    min_accuracy: float | None
    bound: str
    checks: str  # sanity-check level of robustaudit.audit (CHECK_LEVELS)
    allow_failed_checks: bool  # assert_robust() passes despite a failing sanity check
    #: ``(data class name, model output index)`` pairs (robustaudit.audit's ``class_map``); None: the default map
    class_map: tuple[tuple[str, int], ...] | None = None

    def plain(self) -> dict[str, Any]:
        """JSON-able view (attack objects by repr) for the session file and the summary."""
        d = asdict(self)
        d.pop("steps_explicit")
        d.pop("restarts_explicit")
        if d["class_map"] is None:  # shown only when given
            d.pop("class_map")
        else:
            d["class_map"] = dict(d["class_map"])
        if d["attacks"] is not None:
            d["attacks"] = [a if isinstance(a, str) else repr(a) for a in d["attacks"]]
        if d["eps"] is not None:
            d["eps"] = list(d["eps"])
        return d


@dataclass(frozen=True)
class SessionOptions:
    """The ``--robust-*`` options after merging with the ini keys (options win)."""

    profile: str = DEFAULT_PROFILE
    device: str | None = None
    gate: str = DEFAULT_BOUND
    checks: str | None = None  # None: the profile's level


def validate(kwargs: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Check and normalise robustness keyword arguments (a marker's or a fixture call's).

    Returns a dict keyed like :data:`MARKER_KEYS` without ``attack`` (folded into ``attacks``, a tuple),
    ``eps`` as a tuple of floats and ``n`` as an int or :data:`ALL`. ``None`` values mean "not given"
    and are dropped. Raises :class:`UserError` naming the valid keys for an unknown key, and saying
    what is expected for a bad value; ``where`` (``"@pytest.mark.robustness"``) starts the message.
    """
    out: dict[str, Any] = {}
    for key in kwargs:
        if key not in MARKER_KEYS:
            raise UserError(
                f"{where}: unknown key '{key}'{suggest(key, MARKER_KEYS)}; valid keys: {', '.join(MARKER_KEYS)}"
            )
    if kwargs.get("attack") is not None and kwargs.get("attacks") is not None:
        raise UserError(f"{where}: give attack= or attacks=, not both")
    for key, value in kwargs.items():
        if value is None:
            continue
        if key in ("attack", "attacks"):
            out["attacks"] = _attacks(value, where)
        elif key == "eps":
            out["eps"] = _eps(value, where)
        elif key == "norm":
            from robustaudit.core.threat import NORMS

            if value not in NORMS:
                raise UserError(f"{where}: norm must be one of {', '.join(NORMS)}, got {value!r}")
            out["norm"] = value
        elif key == "n":
            if value == ALL:
                out["n"] = ALL
            else:
                out["n"] = _positive_int(value, f"{where}: n", extra=" or 'all'")
        elif key == "min_accuracy":
            out["min_accuracy"] = _fraction(value, f"{where}: min_accuracy")
        elif key == "bound":
            out["bound"] = check_bound(value, f"{where}: bound")
        elif key in ("steps", "restarts", "batch_size"):
            out[key] = _positive_int(value, f"{where}: {key}")
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{where}: seed must be an integer >= 0, got {value!r}")
            out["seed"] = value
        elif key == "device":
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{where}: device must be a string such as 'cpu', 'cuda' or 'auto', got {value!r}")
            out["device"] = value.strip()
        elif key == "checks":
            out["checks"] = check_checks(value, f"{where}: checks")
        elif key == "allow_failed_checks":
            if not isinstance(value, bool):
                raise UserError(f"{where}: allow_failed_checks must be True or False, got {value!r}")
            out["allow_failed_checks"] = value
        elif key == "class_map":  # the form here; the data's classes and the model's outputs when it runs
            out["class_map"] = parse_class_map(value, f"{where}: class_map")
    return out


def merge_markers(marks: Iterable[tuple[tuple[Any, ...], Mapping[str, Any]]], *, where: str) -> dict[str, Any]:
    """Validate and merge ``(args, kwargs)`` of robustness markers given farthest first (module, class,
    function): a closer marker overrides the keys it sets."""
    merged: dict[str, Any] = {}
    for args, kwargs in marks:
        if args:
            raise UserError(
                f"{where} takes keyword arguments only, got {len(args)} positional; valid keys: {', '.join(MARKER_KEYS)}"
            )
        merged.update(validate(kwargs, where=where))
    return merged


def resolve(options: SessionOptions, marker: Mapping[str, Any], call: Mapping[str, Any]) -> Settings:
    """Apply the precedence call > marker > options/ini > profile > audit defaults."""
    profile = PROFILES[options.profile]

    def pick(key: str, fallback: Any) -> Any:
        if key in call:
            return call[key]
        if key in marker:
            return marker[key]
        return fallback

    n = pick("n", profile.n)
    return Settings(
        profile=profile.name,
        attacks=pick("attacks", None),
        eps=pick("eps", None),
        norm=pick("norm", "linf"),
        n=None if n == ALL else n,
        steps=pick("steps", profile.steps),
        restarts=pick("restarts", profile.restarts),
        steps_explicit="steps" in call or "steps" in marker,
        restarts_explicit="restarts" in call or "restarts" in marker,
        seed=pick("seed", DEFAULT_SEED),
        device=pick("device", options.device or DEFAULT_DEVICE),
        batch_size=pick("batch_size", None),
        min_accuracy=pick("min_accuracy", None),
        bound=pick("bound", options.gate),
        checks=pick("checks", options.checks or profile.checks),
        allow_failed_checks=pick("allow_failed_checks", False),
        class_map=pick("class_map", None),
    )


def check_profile(value: str, what: str) -> str:
    if value not in PROFILES:
        raise UserError(f"{what}: unknown profile '{value}'{suggest(value, PROFILES)}; known: {', '.join(PROFILES)}")
    return value


def check_checks(value: Any, what: str) -> str:
    """A sanity-check level (:data:`CHECK_LEVELS`); a :class:`UserError` naming the valid ones."""
    return check_choice(value, CHECK_LEVELS, what)


def check_bound(value: Any, what: str) -> str:
    if value not in BOUNDS:
        raise UserError(f"{what} must be 'point' or 'lower', got {value!r}")
    return str(value)


def _attacks(value: Any, where: str) -> tuple[Any, ...]:
    items = [value] if isinstance(value, str) or not isinstance(value, (list, tuple)) else list(value)
    if not items:
        raise UserError(f"{where}: attacks is empty; give a name such as 'pgd' or a list of them")
    for item in items:
        if isinstance(item, str):
            if not item.strip() or item.strip().startswith(":"):
                raise UserError(f"{where}: an attack is a name such as 'pgd' or 'pgd:steps=50', got {item!r}")
        elif isinstance(item, (int, float, bool)) or item is None:
            raise UserError(f"{where}: an attack is a name such as 'pgd' or an Attack object, got {item!r}")
    return tuple(i.strip() if isinstance(i, str) else i for i in items)


def _eps(value: Any, where: str) -> tuple[float, ...]:
    """Numbers or fractions such as ``"8/255"`` (parsed as the audit parses them), each >= 0."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise UserError(f"{where}: eps is empty; give a radius such as 0.1 or a list of them")
    try:
        return tuple(parse_eps(items))
    except UserError:
        bad = next((i for i in items if not _parses(i)), items)
        raise UserError(f"{where}: eps must be numbers >= 0 (or fractions such as '8/255'), got {bad!r}") from None


def _parses(item: Any) -> bool:
    try:
        parse_eps([item])
    except UserError:
        return False
    return True


def _positive_int(value: Any, what: str, *, extra: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be an integer >= 1{extra}, got {value!r}")
    return int(value)


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise UserError(f"{what} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        hint = f" (did you mean {value / 100:g}?)" if 1.0 < value <= 100.0 else ""
        raise UserError(f"{what} is a fraction in [0, 1], got {value!r}{hint}")
    return float(value)
