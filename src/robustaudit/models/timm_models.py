"""``timm:NAME[.TAG][:k=v,...]``: a timm architecture with the user's weights file, normalized as timm's
config says. Settings (``:num_classes=10``) go to ``timm.create_model``; without ``num_classes`` the
weights file's head gives the class count (as for ``torchvision:ARCH``).

timm is an optional extra (``pip install 'robustaudit[timm]'``); without it every ``timm:`` spec is one
line naming the extra. The model is built by ``timm.create_model(NAME, pretrained=False)`` (nothing is
downloaded) and the ``--weights`` file is loaded strictly into it; the model's ``pretrained_cfg`` gives
the normalization (``mean``/``std``) and the input size the weights expect.

Without ``--weights`` the weights come from timm's own cache, the Hugging Face hub's
(``<model_dir>/models--timm--<NAME.TAG>/snapshots/<rev>/model.safetensors`` or ``pytorch_model.bin``;
``model_dir`` defaults to ``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``), found offline with
``huggingface_hub.try_to_load_from_cache``; downloaded only with ``allow_download``. The file is read once
with ``weights_only=True`` (or as safetensors) before timm loads it through its ``file=`` override, so
timm's own checkpoint filter and classifier handling apply and nothing reaches the network.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from robustaudit.core.errors import UserError, unknown
from robustaudit.models.files import file_sha256, first_line
from robustaudit.models.state_dicts import load_state_dict, read_state_dict
from robustaudit.models.torchvision_models import _parse_settings, class_count, classes_from_weights, keyword_hint
from robustaudit.models.torchvision_weights import Pretrained

__all__ = ["TIMM_PREFIX", "from_timm", "hf_cache_dir", "list_timm_models", "list_timm_weights"]

TIMM_PREFIX = "timm:"
#: the files timm looks for in a hub repo, in its order
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def import_timm() -> ModuleType | None:
    """The timm package, or None when it is not installed. Imported with torch's deprecation warning on
    ``torch.jit.interface`` (which timm's layers use at import) silenced: it is timm's business, and a stray
    line before a one-line error breaks the CLI's one-line rule."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.interface.* is deprecated", category=FutureWarning)
        try:
            import timm
        except ImportError:
            return None
    return timm


def _timm() -> ModuleType:
    timm = import_timm()
    if timm is None:
        raise UserError("timm models need the timm package, which is not installed: install robustaudit[timm] "
                        "(pip install 'robustaudit[timm]')")
    return timm


def list_timm_models() -> list[str]:
    """The architectures timm registers (offline: its own registry)."""
    return sorted(_timm().list_models())


def list_timm_weights(model_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every pretrained tag timm registers, offline: ``spec`` (``timm:NAME.TAG``), ``hf_hub_id`` (``None``
    for tags timm loads from elsewhere than the hub), ``cached`` (a weights file timm would read is in
    ``model_dir``'s hub cache) and ``file`` (that file, or ``None``)."""
    timm = _timm()
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cache = hf_cache_dir(model_dir)
    # one listing of the cache, then a lookup only for the repos it holds: ~1,500 tags, few cached
    present = {p.name for p in cache.glob("models--*")} if cache.is_dir() else set()
    rows = []
    for name in timm.list_models(pretrained=True):
        cfg = get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) or None
        file = None
        if repo and f"models--{repo.replace('/', '--')}" in present:
            for filename in _HUB_FILES:
                found = try_to_load_from_cache(repo, filename, cache_dir=str(cache))
                if isinstance(found, str):
                    file = found
                    break
        rows.append({"spec": f"{TIMM_PREFIX}{name}", "hf_hub_id": repo, "cached": file is not None, "file": file})
    return rows


def hf_cache_dir(model_dir: str | os.PathLike[str] | None) -> Path:
    """The Hugging Face hub cache timm reads: ``model_dir`` when given, else ``HF_HUB_CACHE``."""
    if model_dir is not None:
        return Path(model_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_file(repo: str, cache: Path, allow_download: bool, spec: str) -> Path:
    """The cached weights file of hub repo ``repo`` (safetensors first, as timm), downloaded only when allowed."""
    from huggingface_hub import try_to_load_from_cache

    for filename in _HUB_FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache))  # local only: reads refs/ and snapshots/
        if isinstance(found, str):
            return Path(found)
    folder = cache / f"models--{repo.replace('/', '--')}"
    if not allow_download:
        raise UserError(f"weights of '{spec}' are not in timm's cache: expected '{folder}/snapshots/<revision>/"
                        f"{_HUB_FILES[0]}' (with refs/main; --model-dir is the Hugging Face hub cache, default "
                        "HF_HUB_CACHE); put them there, pass --weights FILE, or pass --allow-download")
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in _HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=str(cache)))
        except Exception as err:  # noqa: BLE001  (hub, HTTP and OS errors alike: the next file, then one line)
            errors.append(first_line(err))
    raise UserError(f"could not download '{repo}' from the Hugging Face hub to '{cache}': {errors[-1]}")


def from_timm(spec: str, weights: Path | None, num_classes: int | None, *,
              model_dir: str | os.PathLike[str] | None = None, allow_download: bool = False) -> Pretrained:
    """Build ``timm:NAME[.TAG]`` with ``weights`` (a state_dict file) or the weights in timm's cache.

    Raises:
        UserError: timm not installed (naming the extra), an unknown name (close matches), weights missing
            from the cache without ``allow_download``, a corrupt file, weights that do not fit; each in one line.
    """
    timm = _timm()
    name, _, settings = spec[len(TIMM_PREFIX):].partition(":")
    name = name.strip()
    kwargs = _parse_settings(settings, spec)  # timm:NAME[.TAG][:num_classes=N,...], as torchvision:ARCH
    arch, _, tag = name.partition(".")
    names = timm.list_models()
    if arch not in names:
        raise UserError(f"'{spec}': {unknown('timm model', arch, names)}")
    if tag and name not in (tagged := timm.list_models(arch, pretrained=True)):
        raise UserError(f"'{spec}': timm has no weights '{tag}' for {arch}; it has {', '.join(tagged) or 'none'}")
    given = class_count(spec, kwargs, num_classes)
    extra = {**kwargs, **({} if given is None else {"num_classes": given})}
    if weights is None:
        model, path = _from_cache(timm, spec, name, extra, model_dir, allow_download)
    else:
        path = weights
        state = read_state_dict(weights)
        if given is None:  # a fine-tuned head (10 classes, say): the file says how many, as for torchvision
            inferred = _classes_of(timm, spec, name, extra, state)
            if inferred is not None:
                extra["num_classes"] = inferred
        model = _create(timm, spec, name, extra)
        load_state_dict(model, state, weights)
    return _pretrained(spec, name, model, path)


def _classes_of(timm: ModuleType, spec: str, name: str, extra: dict[str, Any],
                state: Mapping[str, Any]) -> int | None:
    """The class count of ``state`` for timm model ``name`` (its default head built on the meta device:
    no memory, no init cost; on the CPU where an architecture cannot be built there)."""
    try:
        with torch.device("meta"):
            reference = timm.create_model(name, pretrained=False, **extra)
    except Exception:  # noqa: BLE001  (meta-device limits of some architectures): build it for real
        try:
            reference = _create(timm, spec, name, extra)
        except UserError:
            return None  # the real build reports the bad setting
    return classes_from_weights(reference.state_dict(), state)


def _create(timm: ModuleType, spec: str, name: str, extra: dict[str, Any], pretrained: bool = False,
            **kwargs: Any) -> nn.Module:
    """``timm.create_model``; ``pretrained=True`` only with a local ``file=`` overlay (no hub access)."""
    try:
        return timm.create_model(name, pretrained=pretrained, **extra, **kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        hint = ""
        if isinstance(err, TypeError):  # a misspelt setting (num_clases=10): the close one
            with contextlib.suppress(Exception), torch.device("meta"):
                hint = keyword_hint(err, type(timm.create_model(name, pretrained=False)))
        raise UserError(f"'{spec}': timm could not build it: {first_line(err)}{hint}") from None


def _from_cache(timm: ModuleType, spec: str, name: str, extra: dict[str, Any], model_dir: Any,
                allow_download: bool) -> tuple[nn.Module, Path]:
    """timm's own load of the cached hub file (its filter and classifier handling), after our safe read."""
    bare = _create(timm, spec, name, extra)
    repo = (dict(getattr(bare, "pretrained_cfg", None) or {})).get("hf_hub_id")
    if not repo:
        raise UserError(f"'{spec}': timm publishes no hub weights for '{name}'; pass --weights FILE")
    path = _hub_file(repo, hf_cache_dir(model_dir), allow_download, spec)
    try:
        state = read_state_dict(path)  # weights_only / safetensors: timm's own read never sees a code pickle
    except UserError as err:
        raise UserError(f"cached weights of '{spec}' are unusable: {err}; delete the file to download it again "
                        "with --allow-download") from None
    try:
        model = _create(timm, spec, name, extra, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    except UserError:
        load_state_dict(bare, state, path)  # says which keys do not fit, in one line
        raise
    return model, path


def _pretrained(spec: str, name: str, model: nn.Module, path: Path) -> Pretrained:
    """The record of a built timm model: its config's normalization and input size, the file and its hash."""
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    if "mean" not in cfg or "std" not in cfg:
        raise UserError(f"'{spec}': timm's config of '{name}' gives no mean/std to normalize with")
    size = cfg.get("input_size")
    card = {"timm_model": name, "weights_file": str(path), "hf_hub_id": cfg.get("hf_hub_id"),
            "input_size": [int(size[1]), int(size[2])] if size and len(size) == 3 else None,
            "resize_size": None}
    stats = ([float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]])
    return Pretrained(model=model, normalize=stats, sha256=file_sha256(path), card=card, source="timm")
