"""``timm:NAME``: a timm architecture with the user's weights file, normalized as timm's config says.

timm is an optional extra (``pip install 'robustaudit[timm]'``); without it every ``timm:`` spec is one
line naming the extra. The model is built by ``timm.create_model(NAME, pretrained=False)`` (nothing is
downloaded) and the ``--weights`` file is loaded strictly into it; the model's ``pretrained_cfg`` gives
the normalization (``mean``/``std``) and the input size the weights expect. Reading timm's own cache
(the Hugging Face hub's) is not done yet: a spec without ``--weights`` says so.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from robustaudit.core.errors import UserError, unknown
from robustaudit.models.files import file_sha256, first_line
from robustaudit.models.state_dicts import load_state_dict, read_state_dict
from robustaudit.models.torchvision_weights import Pretrained

__all__ = ["TIMM_PREFIX", "from_timm", "list_timm_models"]

TIMM_PREFIX = "timm:"


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise UserError("timm models need the timm package, which is not installed: install robustaudit[timm] "
                        "(pip install 'robustaudit[timm]')") from None
    return timm


def list_timm_models() -> list[str]:
    """The architectures timm registers (offline: its own registry)."""
    return sorted(_timm().list_models())


def from_timm(spec: str, weights: Path | None, num_classes: int | None) -> Pretrained:
    """Build ``timm:NAME`` and load ``weights`` (a state_dict file) strictly into it.

    Raises:
        UserError: timm not installed (naming the extra), an unknown name (close matches), no weights file,
            weights that do not fit; each in one line.
    """
    timm = _timm()
    name = spec[len(TIMM_PREFIX):].strip()
    names = timm.list_models()
    if name not in names:
        raise UserError(f"'{spec}': {unknown('timm model', name, names)}")
    if weights is None:
        raise UserError(f"'{spec}' needs its weights file: pass --weights FILE (timm's own cache is not read yet)")
    state = read_state_dict(weights)
    try:
        model = timm.create_model(name, pretrained=False, **({} if num_classes is None else {"num_classes": num_classes}))
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"'{spec}': timm could not build it: {first_line(err)}") from None
    load_state_dict(model, state, weights)
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    if "mean" not in cfg or "std" not in cfg:
        raise UserError(f"'{spec}': timm's config of '{name}' gives no mean/std to normalize with")
    size = cfg.get("input_size")
    card = {"timm_model": name, "weights_file": str(weights),
            "input_size": [int(size[1]), int(size[2])] if size and len(size) == 3 else None,
            "resize_size": None}
    stats = ([float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]])
    return Pretrained(model=model, normalize=stats, sha256=file_sha256(weights), card=card, source="timm")
