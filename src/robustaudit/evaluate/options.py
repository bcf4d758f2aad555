"""The audit options' vocabulary and their one-line validators: the one place each is defined.

Standard library only (plus ``robustaudit.core.errors``): the pytest plugin validates markers and
``--robust-*`` options with these before torch is imported. :class:`~robustaudit.evaluate.spec.AuditSpec`
resolves the defaults below and calls the validators; the CLI, the TOML loader, the Python API and the
plugin all go through it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from robustaudit.core.errors import UserError, suggest

#: The embedded default audit's models (classification, ``--data digits``): a standard and a PGD-trained
#: CNN, the two rows of the classic 2×2 table. The TRADES and label-smoothing CNNs are one flag away
#: (``--model``); with them the default took about 2.5 minutes of CPU time, with them it fits a minute.
DEFAULT_MODELS: tuple[str, ...] = ("digits-cnn", "digits-cnn-pgdat")
#: The default attacks of every audit (CLI, ``audit()``, every pytest-plugin profile). ``pgd:loss=margin``
#: is the scale-invariant one (issue 16): with Linf sign steps (L2/L1: normalised steps) and the logit
#: margin, multiplying the logits by any positive constant changes neither its steps nor its best iterate,
#: so saturated or scaled logits cannot hide behind a flattened cross-entropy. It is added, not swapped
#: for ``pgd``: a worst case over more columns can only go down.
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "pgd:loss=margin")
DEFAULT_EPS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
#: The eps grid of the embedded default audit (no model, no eps, no config file): the smallest radius of
#: :data:`DEFAULT_EPS` leaves almost every sample standing, and survivors are what attacks spend their
#: steps on, so dropping it halves the default's time; the curve keeps three points and the 2×2 table
#: its eps (0.2, what the PGD-trained model was trained for).
EMBEDDED_EPS: tuple[float, ...] = (0.1, 0.2, 0.3)
#: The grid of ``--norm patch`` when no eps is given: shares of the image area a patch covers.
PATCH_DEFAULT_EPS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2)
#: What a segmentation audit runs when the classification defaults were kept (``--data digit-scenes``
#: alone): the shipped U-Net, the three dense attacks, a small Linf grid that shows a curve.
SEG_DEFAULT_MODELS: tuple[str, ...] = ("unet-tiny",)
SEG_DEFAULT_ATTACKS: tuple[str, ...] = ("pgd", "segpgd", "cospgd")
SEG_DEFAULT_EPS: tuple[float, ...] = (0.01, 0.02, 0.04)
#: Images of the bare default segmentation audit (no model, no n): 100 of digit-scenes' 200 test scenes.
SEG_DEFAULT_N = 100
#: The largest batch of a segmentation audit: masks and per-pixel logits are K*H*W times larger.
SEG_MAX_BATCH = 32
#: The detector of the embedded default audit (no model, no config file): every kind of row is shown.
DEFAULT_DEFENSE = "squeeze"
#: The models the embedded default's detector wraps: one detector row under plain and adaptive attack
#: (each wrapped model costs as much again as its own matrix rows).
DEFAULT_DEFENSE_MODELS: tuple[str, ...] = ("digits-cnn",)
DEFAULT_DATA = "digits"
#: The largest automatic batch on CPU (:mod:`robustaudit.evaluate.batchsize`): the batch size before it was
#: automatic, so the digits audits, whose models fit it with room to spare, run as they did.
DEFAULT_BATCH_SIZE = 256
DEFAULT_DEVICE = "auto"
DEFAULT_SEED = 0
DEFAULT_CHECKS = "basic"
DEFAULT_DEFENSE_FPR = 0.05
#: Measure each model's cost (docs/cost.md); read when a spec is resolved.
DEFAULT_COST = True
#: Where the CLI writes when ``--out`` is not given (the Python API writes nowhere by default).
DEFAULT_OUT = "robustaudit-out"
#: Threat-model norms of an audit's eps grid.
AUDIT_NORMS: tuple[str, ...] = ("linf", "l2", "l1", "patch")
#: ``task``: ``auto`` reads it from the data (``ImageData.task``).
TASKS: tuple[str, ...] = ("auto", "classification", "segmentation")
#: What ``precision`` takes (the precision attacks run at; robustaudit.evaluate.fastpath applies it).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: Sanity-check levels (robustaudit.checks runs them; the pytest plugin validates with them).
CHECK_LEVELS: tuple[str, ...] = ("off", "basic", "full")
#: What ``--fail-on`` gates on (a CLI gate, not an audit option).
FAIL_ON: tuple[str, ...] = ("point", "lower")

#: What ``device`` takes; whether the device exists is checked when the audit starts (runner.resolve_device).
_DEVICE = re.compile(r"(auto|cpu|cuda|mps)(:\d+)?")
_DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
#: Names people reach for that torch spells differently.
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "metal": "mps"}


def check_choice(value: Any, choices: Sequence[str], what: str) -> str:
    """``value`` when it is one of ``choices``; else one line naming them, with a close match."""
    if isinstance(value, str) and value in choices:
        return value
    hint = suggest(value.lower(), choices) if isinstance(value, str) else ""
    raise UserError(f"{what} must be one of {', '.join(choices)}, got {value!r}{hint}")


def check_checks(level: Any, what: str = "--checks") -> str:
    """A sanity-check level (:data:`CHECK_LEVELS`)."""
    return check_choice(level, CHECK_LEVELS, what)


def check_device(device: Any) -> str:
    """Refuse a device string that is no device at all, with a close match; existence is checked when
    the audit starts."""
    if isinstance(device, str) and _DEVICE.fullmatch(device.strip()):
        return device.strip()
    base = str(device).partition(":")[0].strip().lower()
    close = _DEVICE_ALIASES.get(base)
    hint = f" (did you mean '{close}'?)" if close else suggest(base, _DEVICE_NAMES)
    raise UserError(f"unknown device '{device}'{hint}; use auto, cpu, cuda, cuda:N or mps")


def check_resume(resume: bool, overwrite: bool, out: str | None) -> None:
    """``resume`` and ``overwrite`` exclude each other; ``resume`` needs the run's output directory."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the stored run or discard it")
    if resume and out is None:
        raise UserError("resume needs the output directory of the run to continue (out=...)")


def check_out(out: str) -> str:
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
    return out


def parse_eps(value: Any, what: str = "eps") -> list[float]:
    """``"0.1,0.2"``, ``"8/255,16/255"``, a number, or a list of numbers and such strings -> floats,
    each finite and >= 0 (one line naming the bad item otherwise)."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):  # a list item may itself be "0.1,0.2" (a marker's eps=["0.1,0.2"])
        items = [part for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
    else:
        items = [value]
    out = [_one_eps(item, what) for item in items]
    if not out:
        raise UserError(f"the {what} grid is empty")
    return out


def check_eps_type(value: Any, what: str = "eps") -> Any:
    """Refuse an eps value of no possible type (a bool, a table) as :func:`parse_eps` does; a TOML file's
    eps is checked so even when a flag overrides it, and parsed (once) by the spec."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise UserError(f"cannot parse {what} {item!r}: expected numbers like 0.1 or 8/255")
    return value


def _one_eps(item: Any, what: str) -> float:
    check_eps_type(item, what)
    if isinstance(item, str):
        text = item.strip()
        try:
            e = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"cannot parse {what} '{text}': expected numbers like 0.1 or 8/255") from None
    else:
        e = float(item)
    if e != e or e in (float("inf"), float("-inf")):
        raise UserError(f"{what} must be finite, got {item!r}")
    if e < 0:
        raise UserError(f"{what} must be >= 0, got {item!r}")
    return e


def check_eps_range(grid: Sequence[float], norm: str, sample_shape: Sequence[int]) -> list[str]:
    """Refuse an eps grid at or beyond the data range; return a warning line for radii above half of it.

    Images live in [0, 1]: the range of a ``norm`` ball over one image is the distance between the
    all-zeros and the all-ones image (1 in Linf, sqrt(C*H*W) in L2, C*H*W in L1). A radius at or beyond
    it reaches every image (the audit measures nothing); above half of it every image reaches the same
    mid-gray image, so no class can be told apart and robust accuracy is that of a constant input: a
    warning, not a refusal (stress tests use such radii on purpose). ``patch`` radii are area shares
    (checked by the patch attack)."""
    if norm not in ("linf", "l2", "l1") or not grid:
        return []
    d = 1
    for size in sample_shape:
        d *= int(size)
    span = {"linf": 1.0, "l2": d ** 0.5, "l1": float(d)}[norm]
    top = max(grid)
    if top >= span:
        raise UserError(f"eps {top:g} ({norm}) reaches every image: images are in [0, 1], so an {norm} radius must be "
                        f"below {span:g} (did you mean {top:g}/255?)")
    if top > span / 2:
        return [f"eps {top:g} ({norm}) is above half the data range ({span / 2:g}): every image can be turned into "
                "the same mid-gray image, so robust accuracy there measures the threat model, not the model"]
    return []


def check_int(value: Any, what: str, *, low: int | None = None) -> int:
    """An integer (not a bool) at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise UserError(f"{what} must be >= {low}, got {value}")
    return value


def check_seed(seed: Any) -> int:
    """Torch generators take 64-bit seeds."""
    seed = check_int(seed, "--seed")
    if not -(2**63) <= seed < 2**63:
        raise UserError(f"--seed must fit in 64 bits (|seed| < 2**63), got {seed}")
    return seed


#: What ``--class-map`` looks like, for its messages.
CLASS_MAP_FORM = "NAME=INDEX pairs such as cat=281,dog=207 (data class name = model output index) or a JSON file"


def parse_class_map(value: Any, what: str = "--class-map") -> tuple[tuple[str, int], ...] | None:
    """``--class-map`` as ``(data class name, model output index)`` pairs in the order given.

    Accepts ``"cat=281,dog=207"``, the path of a JSON file holding ``{"cat": 281, "dog": 207}``, a mapping
    (``audit(class_map={"cat": 281})``, a TOML table) or such pairs; ``None``: not given. Checks the form
    only (an index is an integer >= 0, no class twice); the data's classes and the model's outputs are
    checked against it when they are known (:mod:`robustaudit.evaluate.classmap`)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike) or (isinstance(value, str) and "=" not in value and value.strip()):
        pairs = _class_map_file(Path(value), what)
    elif isinstance(value, str):
        pairs = [_class_map_pair(piece, what) for piece in value.split(",") if piece.strip()]
    elif isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise UserError(f"{what} must be {CLASS_MAP_FORM}, got {value!r}")
    if not pairs:
        raise UserError(f"{what} is empty; give {CLASS_MAP_FORM}")
    out: list[tuple[str, int]] = []
    for name, index in pairs:
        name = str(name).strip()
        if not name:
            raise UserError(f"{what}: a class name is empty; give {CLASS_MAP_FORM}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UserError(f"{what}: the output index of class '{name}' must be an integer >= 0, got {index!r}")
        if any(name == seen for seen, _ in out):
            raise UserError(f"{what}: class '{name}' is given twice")
        out.append((name, index))
    return tuple(out)


def _class_map_pair(piece: str, what: str) -> tuple[str, Any]:
    name, eq, index = piece.partition("=")
    if not eq:
        raise UserError(f"{what}: '{piece.strip()}' is not NAME=INDEX; give {CLASS_MAP_FORM}")
    text = index.strip()
    return name, int(text) if re.fullmatch(r"\d+", text) else text


def _class_map_file(path: Path, what: str) -> list[tuple[Any, Any]]:
    """The pairs of a JSON file holding one object ``{"class name": output index}``."""
    import json

    if not path.is_file():
        raise UserError(f"{what} '{path}' is neither a file nor NAME=INDEX pairs; give {CLASS_MAP_FORM}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} '{path}' is not a JSON file: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{what} '{path}' must hold one JSON object such as {{\"cat\": 281, \"dog\": 207}}, "
                        f"got {type(doc).__name__}")
    return list(doc.items())
