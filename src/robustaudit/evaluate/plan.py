"""The TOML audit file: its keys mirror the CLI flags, read into the options an AuditSpec resolves.

TOML keys (``model``, ``weights``, ``normalize``, ``data``, ``attack``, ``eps``, ``norm``, ``n``,
``batch_size``, ``device``, ``seed``, ``out``, ``fail_under``, ``fail_on``, ``allow_unreliable``, ``resume``,
``overwrite``, ``checks``, ``defense``, ``defense_fpr``, ``defense_data``, ``train_data``, ``task``, ``precision``,
``tf32``, ``compile``, ``physical``, ``trust_pickle``, ``allow_download``, ``model_dir``, ``class_map``: a
string such as ``"cat=281,dog=207"``, a JSON file's path or a table ``{cat = 281, dog = 207}``); flags given
on the command line override the file. Models may also be tables::

    [[models]]
    spec = "nets.py:make_net"
    weights = "net.safetensors"
    normalize = "mean=0.5,std=0.25"

Only types are checked here; every value is validated once, by
:func:`robustaudit.evaluate.spec.resolve_spec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from robustaudit.core.errors import UserError, suggest
from robustaudit.evaluate.options import (  # noqa: F401 - the vocabulary, re-exported for callers
    CHECK_LEVELS,
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    DEFAULT_MODELS,
    FAIL_ON,
    PATCH_DEFAULT_EPS,
    PRECISIONS,
    SEG_DEFAULT_ATTACKS,
    SEG_DEFAULT_EPS,
    SEG_DEFAULT_MODELS,
    SEG_DEFAULT_N,
    TASKS,
    check_eps_type,
    parse_eps,
)


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model`` with its own weights file and normalization (``spec`` is what loads it), and the row
    name a ``[[models]]`` table may give it (else the loaded model's own)."""

    spec: str
    weights: str | None = None
    normalize: str | None = None
    name: str | None = None


#: The plain keys of an audit file and their TOML types (``model``, ``attack``, ``eps`` are read apart).
_TYPES: dict[str, type] = {
    "data": str, "norm": str, "device": str, "out": str, "fail_on": str, "n": int, "batch_size": int,
    "seed": int, "fail_under": float, "trust_pickle": bool, "resume": bool, "overwrite": bool, "checks": str,
    "defense": str, "defense_fpr": float, "defense_data": str, "physical": bool, "train_data": str,
    "task": str, "precision": str, "tf32": bool, "transfer": bool, "compile": bool, "allow_unreliable": bool,
    "allow_download": bool, "model_dir": str,
}


_KEYS = set(_TYPES) | {"models", "model", "weights", "normalize", "attack", "attacks", "eps", "class_map"}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an audit TOML file into the options it gives (``models``, ``attacks``, ``eps`` and the plain
    keys), types checked; what it leaves out is absent (the spec resolves its default)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config file '{path}' is a directory; give the TOML file")
    if not p.is_file():
        raise UserError(f"config file '{path}' not found")
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config '{path}': {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config '{path}' is not valid TOML: {exc}") from None
    if "audit" in doc:  # an [audit] table, or top-level keys: not both (one of them would be ignored)
        table, others = doc["audit"], sorted(k for k in doc if k != "audit")
        if not isinstance(table, Mapping):
            raise UserError(f"config '{path}': 'audit' must be a table ([audit]), got {table!r}")
        if others:
            raise UserError(f"config '{path}': key '{others[0]}' is outside the [audit] table; "
                            "put every key under [audit], or use no [audit] table")
        doc = table
    doc = dict(doc)
    for key in doc:
        if key not in _KEYS:
            raise UserError(f"config '{path}': unknown key '{key}'{suggest(key, sorted(_KEYS))}")
    out: dict[str, Any] = {}
    models = doc.pop("models", None)
    if models is not None:
        out["models"] = _model_tables(models, path)
    if "model" in doc:
        specs = _str_list(doc.pop("model"), "model", path)
        weights = _str_list(doc.pop("weights", []), "weights", path)
        normalize = _str_list(doc.pop("normalize", []), "normalize", path)
        out["models"] = pair_models(specs, weights, normalize)
    if "attack" in doc or "attacks" in doc:
        out["attacks"] = _str_list(doc.pop("attack", doc.pop("attacks", None)), "attack", path)
    if "eps" in doc:  # parsed (numbers, "8/255" strings) by the spec, as the flag's and the API's
        out["eps"] = check_eps_type(doc.pop("eps"))
    if "class_map" in doc:  # a string or a table, parsed and checked by the spec
        value = doc.pop("class_map")
        if not isinstance(value, (str, Mapping)):
            raise UserError(f"config '{path}': 'class_map' must be a string (cat=281,dog=207 or a JSON file) or "
                            f"a table {{cat = 281}}, got {value!r}")
        out["class_map"] = dict(value) if isinstance(value, Mapping) else value
    for key, value in doc.items():
        want = _TYPES.get(key)
        if want is None:
            raise UserError(f"config '{path}': '{key}' must come with 'model'")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UserError(f"config '{path}': '{key}' must be {want.__name__}, got {value!r}")
        out[key] = value
    return out


_MODEL_KEYS = ("spec", "weights", "normalize", "name")


def _model_tables(models: Any, path: str | Path) -> list[ModelSpec]:
    """``[[models]]`` tables: each with a string ``spec``, optional string ``weights``/``normalize``/``name``."""
    if not isinstance(models, list) or not all(isinstance(m, Mapping) for m in models):
        raise UserError(f"config '{path}': 'models' must be [[models]] tables, each with a 'spec' key")
    out = []
    for i, table in enumerate(models):
        for key in table:
            if key not in _MODEL_KEYS:
                raise UserError(f"config '{path}': [[models]] entry {i + 1} has unknown key '{key}'"
                                f"{suggest(key, _MODEL_KEYS)}; known: {', '.join(_MODEL_KEYS)}")
        if "spec" not in table:
            raise UserError(f"config '{path}': [[models]] entry {i + 1} needs a 'spec' key")
        for key in _MODEL_KEYS:
            if key in table and not isinstance(table[key], str):
                raise UserError(f"config '{path}': [[models]] entry {i + 1}: '{key}' must be a string, "
                                f"got {table[key]!r}")
        if "name" in table and not table["name"].strip():
            raise UserError(f"config '{path}': [[models]] entry {i + 1}: 'name' must not be empty")
        out.append(ModelSpec(table["spec"], table.get("weights"), table.get("normalize"), table.get("name")))
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
