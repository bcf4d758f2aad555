"""AuditPlan: everything an audit needs, from the command line and/or a TOML file.

TOML keys mirror the CLI flags (``model``, ``weights``, ``normalize``, ``data``, ``attack``, ``eps``,
``norm``, ``n``, ``batch_size``, ``device``, ``seed``, ``out``, ``fail_under``, ``fail_on``, ``resume``,
``overwrite``, ``checks``, ``defense``, ``defense_fpr``, ``defense_data``, ``train_data``, ``task``, ``precision``,
``tf32``, ``compile``); flags given on the command line
override the file. Models may also be tables::

    [[models]]
    spec = "nets.py:make_net"
    weights = "net.safetensors"
    normalize = "mean=0.5,std=0.25"
"""

from __future__ import annotations

import dataclasses
import os
import re
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

DEFAULT_MODELS: tuple[str, ...] = ("digits-cnn", "digits-cnn-pgdat", "digits-cnn-trades", "digits-cnn-ls")
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd")
DEFAULT_EPS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
#: The grid of ``--norm patch`` when no eps is given: shares of the image area a patch covers.
PATCH_DEFAULT_EPS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2)
FAIL_ON: tuple[str, ...] = ("point", "lower")
#: What a segmentation audit runs when the plan keeps the classification defaults (``--data digit-scenes``
#: alone): the shipped U-Net, the three dense attacks, a small Linf grid that shows a curve.
SEG_DEFAULT_MODELS: tuple[str, ...] = ("unet-tiny",)
SEG_DEFAULT_ATTACKS: tuple[str, ...] = ("pgd", "segpgd", "cospgd")
SEG_DEFAULT_EPS: tuple[float, ...] = (0.01, 0.02, 0.04)
#: Images of the bare default segmentation audit (no --model, no --n): 100 of digit-scenes' 200 test scenes.
SEG_DEFAULT_N = 100
#: ``--task``: ``auto`` reads it from the data (``ImageData.task``).
TASKS: tuple[str, ...] = ("auto", "classification", "segmentation")
#: What ``--precision`` takes (the precision attacks run at; robustaudit.evaluate.fastpath applies it).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
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
    #: detectors wrapped around every model (``squeeze,metzen``); ``None`` or ``"none"``: no detector
    defense: str | None = None
    #: clean false-positive rate the detector thresholds are set at
    defense_fpr: float = 0.05
    #: data the detectors are fitted on (its train split); default: the train split of ``data``
    defense_data: str | None = None
    #: data universal attacks (patch, UAP, learned generators) are fitted on (its train split);
    #: default: the train split of ``data``
    train_data: str | None = None
    #: physical-world proxies (destruction rates under JPEG, blur, resize, rotation, translation, photo)
    physical: bool = False
    #: classification, segmentation, or auto (the data's task)
    task: str = "auto"
    #: the precision attacks run at (autocast): fp32, bf16, fp16; the verdict is always fp32
    precision: str = "fp32"
    #: allow TF32 for float32 matmuls/convolutions on NVIDIA GPUs (off: fp32 means fp32)
    tf32: bool = False
    #: torch.compile the model the attacks get
    compile: bool = False

    @property
    def detectors(self) -> str | None:
        """``defense`` with ``"none"`` read as no detector."""
        return None if self.defense is None or self.defense.strip().lower() == "none" else self.defense

    def validate(self) -> AuditPlan:
        """Raise :class:`UserError` on the first bad value; returns ``self``."""
        if not self.models:
            raise UserError("no model given")
        if not self.attacks:
            raise UserError("no attack given")
        if self.norm not in ("linf", "l2", "l1", "patch"):
            valid = [n for n in NORMS if n in ("linf", "l2", "l1", "patch")]
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
        if self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got '{self.task}'{suggest(self.task, TASKS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"
                            f"{suggest(str(self.precision).lower(), PRECISIONS)}")
        if self.checks not in CHECK_LEVELS:
            raise UserError(f"--checks must be one of {', '.join(CHECK_LEVELS)}, got '{self.checks}'"
                            f"{suggest(self.checks, CHECK_LEVELS)}")
        if not -(2**63) <= self.seed < 2**63:  # torch generators take 64-bit seeds
            raise UserError(f"--seed must fit in 64 bits (|seed| < 2**63), got {self.seed}")
        _check_device(self.device)
        _check_out(self.out)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> AuditPlan:
        """A copy with every non-``None`` entry of ``overrides`` applied (CLI flags over the file)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)


#: What ``--device`` takes; whether the device exists is checked when the audit starts.
_DEVICE = re.compile(r"(auto|cpu|cuda|mps)(:\d+)?")
_DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
#: Names people reach for that torch spells differently.
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "metal": "mps"}


def _check_device(device: str) -> None:
    """Refuse a device string that is no device at all, with a close match; existence is the runner's."""
    if _DEVICE.fullmatch(device):
        return
    base = device.partition(":")[0].strip().lower()
    close = _DEVICE_ALIASES.get(base)
    hint = f" (did you mean '{close}'?)" if close else suggest(base, _DEVICE_NAMES)
    raise UserError(f"unknown device '{device}'{hint}; use auto, cpu, cuda, cuda:N or mps")


def _check_out(out: str) -> None:
    """Refuse an output directory that cannot be one, before any model runs: an empty path, an existing
    file, a path under a file, or a folder that cannot be written."""
    if not out.strip():
        raise UserError("--out is empty; give the directory the results go to")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{out}' is a file, not a directory")
    parent = path
    while not parent.exists():  # the deepest existing ancestor is the one that gets written
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--out '{out}' cannot be created: '{parent}' is a file")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out '{out}' cannot be written: no write permission on '{parent}'")


def parse_eps(value: str | float | list[Any]) -> list[float]:
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
    if "eps" in doc:
        out["eps"] = parse_eps(doc.pop("eps"))
    types = {"data": str, "norm": str, "device": str, "out": str, "fail_on": str, "n": int, "batch_size": int,
             "seed": int, "fail_under": float, "trust_pickle": bool, "resume": bool, "overwrite": bool,
             "checks": str, "defense": str, "defense_fpr": float, "defense_data": str, "physical": bool,
             "train_data": str, "task": str, "precision": str, "tf32": bool, "compile": bool}
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


_MODEL_KEYS = ("spec", "weights", "normalize")


def _model_tables(models: Any, path: str | Path) -> list[ModelSpec]:
    """``[[models]]`` tables: each with a string ``spec``, optional string ``weights``/``normalize``."""
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
        out.append(ModelSpec(table["spec"], table.get("weights"), table.get("normalize")))
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
