"""``robustbench:NAME[:dataset=D,threat=T]``: a RobustBench model-zoo entry, read from its weights cache.

robustbench is an optional extra (``pip install 'robustaudit[robustbench]'``). The entry is found in
``robustbench.model_zoo.model_dicts[dataset][threat][NAME]`` (defaults: ``cifar10``, ``Linf``, as
robustbench's own) and loaded by ``robustbench.utils.load_model`` from robustbench's cache layout,
``<model_dir>/<dataset>/<threat>/<NAME>.pt`` (an ensemble: ``<NAME>.pt_m<i>.pt``); ``model_dir`` defaults
to robustbench's own default, ``./models`` (relative to the working directory).

Nothing is downloaded unless the caller allows it: load_model downloads a missing file by itself, so
every file it will read is checked first (present, and readable with ``weights_only=True``) and its
download function is replaced by one that raises while it runs without ``allow_download``.

Entries robustbench builds through timm (its XCiT, DeiT and AlexNet entries: timm registers them when
robustbench is imported, and ``load_model`` asks timm first, by the name ``<name>_<dataset>_<threat>``) are
read from torch hub's cache, ``$TORCH_HOME/hub/checkpoints/<file of the entry's URL>``, where timm keeps what
it downloads; the same checks and the same download guard apply (torch hub's download function raises too).

RobustBench models take ``(N, 3, H, W)`` inputs in [0, 1] and normalize inside (those that need it carry
their own normalization layer), so no ``Normalize`` wrapper is added. The card records the clean and
AutoAttack accuracy RobustBench publishes (``data/robustbench_published.json``, copied from its
repository's ``model_info/``, which the pip package does not ship).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from robustaudit.core.errors import UserError, suggest
from robustaudit.models.files import file_sha256, first_line, torch_load_safe
from robustaudit.models.state_dicts import load_state_dict, read_state_dict
from robustaudit.models.timm_models import import_timm
from robustaudit.models.torchvision_models import _parse_settings
from robustaudit.models.torchvision_weights import Pretrained

__all__ = ["DEFAULT_MODEL_DIR", "ROBUSTBENCH_PREFIX", "expected_files", "from_robustbench", "list_robustbench",
           "published", "robustbench_eps"]

ROBUSTBENCH_PREFIX = "robustbench:"
#: robustbench's own default for ``load_model(model_dir=...)``.
DEFAULT_MODEL_DIR = "./models"
DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = ("Linf", "L2", "corruptions")
#: the eps RobustBench evaluates each (dataset, threat) at: its leaderboards' convention.
_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar100", "Linf"): 8 / 255, ("imagenet", "Linf"): 4 / 255,
        ("cifar10", "L2"): 0.5}
_PUBLISHED = Path(__file__).parent / "data" / "robustbench_published.json"


def _alias_autoattack() -> None:
    """robustbench 1.1.1 from PyPI imports ``autoattack``, but its dependency installs that module as
    ``pyautoattack``: alias it, only when ``autoattack`` itself is not importable."""
    import importlib.util

    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    try:
        import pyautoattack
    except ImportError:
        return  # robustbench's own import then fails, and says so
    sys.modules["autoattack"] = pyautoattack


def _robustbench() -> ModuleType:
    """The robustbench package (with its model zoo and utils imported), or one line naming the extra."""
    _alias_autoattack()
    try:
        with warnings.catch_warnings():  # its import warns about pkg_resources, timm and torch.jit: not the user's
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            import robustbench
            import robustbench.model_zoo  # noqa: F401
            import robustbench.utils  # noqa: F401
    except ImportError as err:
        raise UserError("robustbench models need the robustbench package, which is not installed or does not "
                        f"import ({first_line(err)}): pip install 'robustaudit[robustbench]'") from None
    return robustbench


def _zoo() -> dict[tuple[str, str], dict[str, Any]]:
    """``(dataset, threat) -> {NAME: entry}`` of robustbench's model zoo (``corruptions_3d`` shares the
    ``corruptions`` models and files, so it is left out)."""
    zoo = _robustbench().model_zoo.model_dicts
    return {(ds.value, th.value): dict(models) for ds, by_threat in zoo.items() for th, models in by_threat.items()
            if th.value in THREATS}


@lru_cache(maxsize=1)
def _published_table() -> dict[str, Any]:
    return json.loads(_PUBLISHED.read_text(encoding="utf-8"))


def published(dataset: str, threat: str, name: str) -> dict[str, Any] | None:
    """RobustBench's published figures of one entry: ``clean_acc`` and ``robust_acc`` (AutoAttack, or
    corruptions accuracy; percent), ``eps``, ``paper``, ``link``, ``architecture``, ``source``; ``None`` when
    RobustBench publishes none."""
    table = _published_table()
    row = table["models"].get(f"{dataset}/{threat}/{name}")
    return None if row is None else {**row, "source": table["_source"]}


def robustbench_eps(dataset: str, threat: str) -> float | None:
    """The eps RobustBench's leaderboard evaluates ``(dataset, threat)`` at (``None``: corruptions)."""
    return _EPS.get((dataset, threat))


def parse_robustbench(spec: str) -> tuple[str, str, str]:
    """``robustbench:NAME[:dataset=D,threat=T]`` -> ``(NAME, dataset, threat)``, values checked."""
    name, _, settings = spec[len(ROBUSTBENCH_PREFIX):].partition(":")
    kwargs = _parse_settings(settings, spec)
    extra = sorted(set(kwargs) - {"dataset", "threat"})
    if extra:
        raise UserError(f"'{spec}': unknown setting {', '.join(extra)}; robustbench:NAME takes dataset= and threat=")
    dataset, threat = str(kwargs.get("dataset", "cifar10")), str(kwargs.get("threat", "Linf"))
    for key, value, choices in (("dataset", dataset, DATASETS), ("threat", threat, THREATS)):
        if value not in choices:
            raise UserError(f"'{spec}': {key}={value} is not one of {', '.join(choices)}{suggest(value, choices)}")
    if not name.strip():
        raise UserError(f"'{spec}': no model name; robustbench:NAME (robustaudit list models --source robustbench)")
    return name.strip(), dataset, threat


def _entry(spec: str, name: str, dataset: str, threat: str) -> dict[str, Any]:
    """The zoo entry, or one line: an unknown name (close matches) or a name of another dataset/threat."""
    zoo = _zoo()
    models = zoo[(dataset, threat)]
    if name in models:
        return models[name]
    elsewhere = [f"dataset={ds},threat={th}" for (ds, th), m in sorted(zoo.items()) if name in m]
    if elsewhere:
        raise UserError(f"'{spec}': RobustBench has no {dataset}/{threat} model '{name}'; it has one for "
                        f"{'; '.join(elsewhere)} (robustbench:{name}:{elsewhere[0]})")
    raise UserError(f"'{spec}': unknown RobustBench {dataset}/{threat} model '{name}'{suggest(name, models)} "
                    "(robustaudit list models --source robustbench)")


def _timm_hosted(name: str, dataset: str, threat: str) -> str | None:
    """The timm model ``load_model`` builds for this entry (it asks timm before its own zoo), or ``None``."""
    timm = import_timm()
    if timm is None:
        return None
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    return timm_name if timm.is_model(timm_name) else None


def _timm_file(timm_name: str) -> Path | None:
    """Where timm keeps the downloaded weights of ``timm_name``: torch hub's checkpoints folder, named after
    the URL of its pretrained config (``None``: weights published elsewhere, the Hugging Face hub)."""
    from urllib.parse import urlparse

    import torch.hub
    from timm.models import get_pretrained_cfg

    url = getattr(get_pretrained_cfg(timm_name), "url", None)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path) if url else None


def expected_files(model_dir: str | os.PathLike[str] | None, dataset: str, threat: str, name: str,
                   entry: dict[str, Any]) -> list[Path]:
    """The files ``load_model`` reads for ``entry``: ``<model_dir>/<dataset>/<threat>/<NAME>.pt``, or
    ``<NAME>.pt_m<i>.pt`` for each member of an ensemble; for an entry built through timm, its file in
    torch hub's cache (none when it is not published as a file)."""
    timm_name = _timm_hosted(name, dataset, threat)
    if timm_name is not None:
        file = _timm_file(timm_name)
        return [] if file is None else [file]
    base = Path(model_dir if model_dir is not None else DEFAULT_MODEL_DIR).expanduser() / dataset / threat
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [base / f"{name}.pt_m{i}.pt" for i in range(len(ids))]
    return [base / f"{name}.pt"]


def _refuse_unsupported(spec: str, name: str, dataset: str, entry: dict[str, Any], timm_hosted: bool,
                        files: list[Path]) -> None:
    """Entries load_model does not read from a cache file: one line each, saying what to use instead."""
    if timm_hosted and files:
        return
    if timm_hosted or entry.get("gdrive_id") is None:  # weights fetched inside the entry's own constructor
        raise UserError(f"'{spec}': RobustBench builds '{name}' from another library's pretrained weights, not "
                        "from a file robustaudit can check in a cache; robustaudit does not load it")
    if dataset == "imagenet" and "Standard" in name:  # built from torchvision's pretrained weights
        arch = {"Standard_R50": "resnet50"}.get(name, "ARCH")  # pretrained=True: IMAGENET1K_V1
        raise UserError(f"'{spec}': RobustBench builds '{name}' from torchvision's weights: use "
                        f"torchvision:{arch}:weights=IMAGENET1K_V1 (robustaudit list models --source torchvision)")


def _check_readable(path: Path, name: str) -> None:
    """Read ``path`` once with ``weights_only=True``: a truncated, garbage or code-carrying file is one line
    before robustbench's loader sees it."""
    if not path.is_file():
        raise UserError(f"weights of RobustBench model '{name}' are expected in the file '{path}', which is a directory")
    try:  # only readability and no code: robustbench unwraps its own checkpoint layouts ('last', 'state_dict')
        checkpoint = torch_load_safe(path, "weights file")
    except UserError as err:
        raise UserError(f"cached weights of RobustBench model '{name}' are unusable: {err}; delete the file to "
                        "download it again with --allow-download") from None
    if checkpoint is None:
        raise UserError(f"cached weights of RobustBench model '{name}' are unusable: '{path}' holds pickled objects "
                        "other than tensors (refused: unpickling them runs code); delete the file to download it "
                        "again with --allow-download")


def _explain_misfit(entry: dict[str, Any], files: list[Path], name: str) -> None:
    """Say in one line which keys of a single-file entry's weights do not fit its architecture (load_model's
    own report spans many lines); returns when the keys fit (the failure was something else)."""
    if len(files) != 1:
        return
    bare = entry["model"]()
    try:
        load_state_dict(bare, read_state_dict(files[0]), files[0])
    except UserError as explained:
        raise UserError(f"cached weights of RobustBench model '{name}' are not its architecture's: {explained}; "
                        "delete the file to download it again with --allow-download") from None


@contextmanager
def _downloads_blocked(rb: ModuleType, blocked: bool) -> Iterator[None]:
    """While ``blocked``, robustbench's download functions, and torch hub's that timm uses, raise instead of
    fetching (a second guard: every file is checked to exist before load_model runs)."""
    import torch.hub

    targets = [(rb.utils, n) for n in ("download_gdrive_new", "download_gdrive") if hasattr(rb.utils, n)]
    targets.append((torch.hub, "download_url_to_file"))
    saved = [(owner, n, getattr(owner, n)) for owner, n in targets]

    def refuse(source: Any, fname_save: Any, *args: Any, **kwargs: Any) -> None:
        raise UserError(f"robustbench tried to download '{fname_save}'; pass --allow-download to allow it")

    if blocked:
        for owner, n in targets:
            setattr(owner, n, refuse)
    try:
        yield
    finally:
        for owner, n, fn in saved:
            setattr(owner, n, fn)


def from_robustbench(spec: str, *, model_dir: str | os.PathLike[str] | None, allow_download: bool,
                     num_classes: int | None = None) -> Pretrained:
    """Load ``robustbench:NAME[:dataset=D,threat=T]`` from robustbench's cache (see the module docstring).

    Returns:
        a :class:`Pretrained` whose model takes ``(N, 3, H, W)`` in [0, 1] (``normalize`` is ``None``).

    Raises:
        UserError: robustbench not installed (naming the extra), an unknown name, a wrong dataset or threat,
            a missing file without ``allow_download``, a corrupt cached file; each in one line.
    """
    name, dataset, threat = parse_robustbench(spec)
    entry = _entry(spec, name, dataset, threat)
    files = expected_files(model_dir, dataset, threat, name, entry)
    timm_hosted = _timm_hosted(name, dataset, threat) is not None
    _refuse_unsupported(spec, name, dataset, entry, timm_hosted, files)
    classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    if num_classes is not None and num_classes != classes:
        raise UserError(f"'{spec}' has {classes} classes ({dataset}), not num_classes={num_classes}")
    missing = [f for f in files if not f.exists()]
    if missing and not allow_download:
        where = ("built through timm: torch hub's cache, TORCH_HOME" if timm_hosted else
                 f"--model-dir is robustbench's model_dir, default {DEFAULT_MODEL_DIR}")
        raise UserError(f"weights of RobustBench {dataset}/{threat} model '{name}' are not in the cache: expected "
                        f"'{missing[0]}' ({where}); put the file there or pass --allow-download (allow_download=True)")
    for path in files:
        if path.exists():
            _check_readable(path, name)
    rb = _robustbench()
    root = Path(model_dir or DEFAULT_MODEL_DIR) if timm_hosted else files[0].parent.parent.parent
    with _downloads_blocked(rb, blocked=not allow_download):
        try:
            model = rb.utils.load_model(name, model_dir=str(root), dataset=dataset, threat_model=threat)
        except (RuntimeError, KeyError, ValueError, OSError, EOFError) as err:
            if not timm_hosted:  # timm's own error names the keys
                _explain_misfit(entry, files, name)
            raise UserError(f"robustbench could not load '{name}' from '{files[0]}': {first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"robustbench's load_model returned {type(model).__name__} for '{name}', not a module")
    digests = [file_sha256(path) for path in files]
    card = {"robustbench_model": name, "dataset": dataset, "threat": threat,
            "weights_file": str(files[0]) if len(files) == 1 else [str(f) for f in files],
            "published": published(dataset, threat, name), "published_eps": robustbench_eps(dataset, threat),
            "input_size": None, "resize_size": None}
    sha = digests[0] if len(digests) == 1 else ",".join(digests)
    return Pretrained(model=model, normalize=None, sha256=sha, card=card, source="robustbench")


def list_robustbench(model_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every entry of robustbench's zoo, offline: ``spec``, ``dataset``, ``threat``, ``clean_acc`` and
    ``robust_acc`` (published, percent; ``None`` when not), ``cached`` (every file present), ``file``."""
    rows = []
    for (dataset, threat), models in sorted(_zoo().items()):
        for name, entry in models.items():
            files = expected_files(model_dir, dataset, threat, name, entry)
            pub = published(dataset, threat, name) or {}
            rows.append({"spec": f"robustbench:{name}:dataset={dataset},threat={threat}", "name": name,
                         "dataset": dataset, "threat": threat, "clean_acc": pub.get("clean_acc"),
                         "robust_acc": pub.get("robust_acc"),
                         "cached": bool(files) and all(f.is_file() for f in files),
                         "file": str(files[0]) if files else None})
    return rows
