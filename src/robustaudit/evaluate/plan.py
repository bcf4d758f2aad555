"""AuditPlan: everything an audit needs, from the command line and/or a TOML file.

TOML keys mirror the CLI flags (``model``, ``weights``, ``normalize``, ``data``, ``attack``, ``eps``,
``norm``, ``n``, ``batch_size``, ``device``, ``seed``, ``out``, ``fail_under``, ``fail_on``, ``resume``,
``overwrite``, ``checks``); flags given on the command line override the file. Models may also be tables::

    [[models]]
    spec = "nets.py:make_net"
    weights = "net.safetensors"
    normalize = "mean=0.5,std=0.25"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from robustaudit.core.errors import UserError, suggest
from robustaudit.core.threat import NORMS

DEFAULT_MODELS: tuple[str, ...] = ("digits-cnn", "digits-cnn-pgdat")
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd")
DEFAULT_EPS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
FAIL_ON: tuple[str, ...] = ("point", "lower")
#: Sanity-check levels (kept here, torch-free, for validation; robustaudit.checks runs them).
CHECK_LEVELS: tuple[str, ...] = ("off", "basic", "full")


@dataclass
class ModelSpec:
    """One ``--model`` with its own weights file and normalization."""

    spec: str
    weights: str | None = None
    normalize: str | None = None


@dataclass
class AuditPlan:
    """A complete, validated audit configuration (numbers are numbers, never strings)."""

    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec(m) for m in DEFAULT_MODELS])
    data: str = "digits"
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    eps: list[float] = field(default_factory=lambda: list(DEFAULT_EPS))
    norm: str = "linf"
    n: int | None = None
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    out: str = "robustaudit-out"
    fail_under: float | None = None
    fail_on: str = "lower"
    trust_pickle: bool = False
    #: continue the unfinished run stored in ``out`` (see :mod:`robustaudit.evaluate.resume`)
    resume: bool = False
    #: discard the unfinished run stored in ``out``
    overwrite: bool = False
    #: sanity checks after the matrix: off, basic, full (docs/checks.md)
    checks: str = "basic"

    def validate(self) -> AuditPlan:
        """Raise :class:`UserError` on the first bad value; returns ``self``."""
        if not self.models:
            raise UserError("no model given")
        if not self.attacks:
            raise UserError("no attack given")
        if self.norm not in ("linf", "l2", "l1"):
            valid = [n for n in NORMS if n in ("linf", "l2", "l1")]
            raise UserError(f"unknown norm '{self.norm}'{suggest(self.norm, valid)}; use {', '.join(valid)}")
        if not self.eps:
            raise UserError("the eps grid is empty")
        for e in self.eps:
            if e < 0 or e != e or e == float("inf"):
                raise UserError(f"eps must be finite and >= 0, got {e}")
        if self.n is not None and self.n < 1:
            raise UserError(f"--n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.fail_under is not None and not 0.0 <= self.fail_under <= 1.0:
            raise UserError(f"--fail-under is an accuracy in [0, 1], got {self.fail_under}")
        if self.fail_on not in FAIL_ON:
            raise UserError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got '{self.fail_on}'")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite exclude each other: continue the stored run or discard it")
        if self.checks not in CHECK_LEVELS:
            raise UserError(f"--checks must be one of {', '.join(CHECK_LEVELS)}, got '{self.checks}'"
                            f"{suggest(self.checks, CHECK_LEVELS)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> AuditPlan:
        """A copy with every non-``None`` entry of ``overrides`` applied (CLI flags over the file)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)


def parse_eps(value: str | float | int | list[Any]) -> list[float]:
    """``"0.1,0.2"``, ``"8/255,16/255"``, a number or a list of them -> floats (validated)."""
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    out: list[float] = []
    for item in items:
        if isinstance(item, bool):
            raise UserError(f"cannot parse eps {item!r}")
        if isinstance(item, (int, float)):
            e = float(item)
        else:
            text = str(item).strip()
            try:
                e = float(Fraction(text)) if "/" in text else float(text)
            except (ValueError, ZeroDivisionError):
                raise UserError(f"cannot parse eps '{text}': expected numbers like 0.1 or 8/255") from None
        if e != e or e in (float("inf"), float("-inf")):
            raise UserError(f"eps must be finite, got {item!r}")
        if e < 0:
            raise UserError(f"eps must be >= 0, got {item!r}")
        out.append(e)
    if not out:
        raise UserError("the eps grid is empty")
    return out


_KEYS = {f.name for f in dataclasses.fields(AuditPlan)} | {"model", "weights", "normalize", "attack"}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an audit TOML file into AuditPlan keyword arguments (validated types)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' not found")
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config '{path}': {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config '{path}' is not valid TOML: {exc}") from None
    doc = dict(doc.get("audit", doc))  # allow an [audit] table or top-level keys
    for key in doc:
        if key not in _KEYS:
            raise UserError(f"config '{path}': unknown key '{key}'{suggest(key, sorted(_KEYS))}")
    out: dict[str, Any] = {}
    models = doc.pop("models", None)
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, Mapping) and "spec" in m for m in models):
            raise UserError(f"config '{path}': [[models]] entries need a 'spec' key")
        out["models"] = [ModelSpec(str(m["spec"]), m.get("weights"), m.get("normalize")) for m in models]
    if "model" in doc:
        specs = _str_list(doc.pop("model"), "model", path)
        weights = _str_list(doc.pop("weights", []), "weights", path)
        normalize = _str_list(doc.pop("normalize", []), "normalize", path)
        out["models"] = pair_models(specs, weights, normalize)
    if "attack" in doc or "attacks" in doc:
        out["attacks"] = _str_list(doc.pop("attack", doc.pop("attacks", None)), "attack", path)
    if "eps" in doc:
        out["eps"] = parse_eps(doc.pop("eps"))
    types = {"data": str, "norm": str, "device": str, "out": str, "fail_on": str, "n": int, "batch_size": int,
             "seed": int, "fail_under": float, "trust_pickle": bool, "resume": bool, "overwrite": bool,
             "checks": str}
    for key, value in doc.items():
        want = types.get(key)
        if want is None:
            raise UserError(f"config '{path}': '{key}' must come with 'model'")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UserError(f"config '{path}': '{key}' must be {want.__name__}, got {value!r}")
        out[key] = value
    return out


def _str_list(value: Any, key: str, path: str | Path) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UserError(f"config '{path}': '{key}' must be a string or a list of strings")


def pair_models(specs: list[str], weights: list[str], normalize: list[str]) -> list[ModelSpec]:
    """Pair ``--model`` flags with ``--weights``/``--normalize`` flags: one for all, or one each."""
    def spread(values: list[str], flag: str) -> list[str | None]:
        if not values:
            return [None] * len(specs)
        if len(values) == len(specs):
            return [v or None for v in values]
        if len(values) == 1 and len(specs) == 1:
            return list(values)
        raise UserError(
            f"{len(specs)} --model but {len(values)} {flag}: give one {flag} per --model, in the same order"
        )

    return [ModelSpec(s, w, z) for s, w, z in zip(specs, spread(weights, "--weights"), spread(normalize, "--normalize"))]
