"""``robustaudit train``'s engine: build an architecture, train it with a defense, write checkpoint + card.

The checkpoint is a plain ``state_dict`` (``.pt`` via ``torch.save``, or ``.safetensors``) of the raw
architecture, so ``--model ARCH --weights CKPT`` loads it too. The model card ``CKPT.json`` beside
it names the architecture spec, so ``audit --model CKPT`` needs nothing else
(:mod:`robustaudit.models.loading` reads it). Card keys:

``format`` ("robustaudit-card/1"), ``name``, ``architecture`` (a model spec), ``num_classes``,
``input_shape``, ``data``, ``defense`` and ``settings``, ``threat_model`` ({norm, eps}),
``train`` (every TrainConfig field), ``reported`` (clean and PGD-20 accuracy on the test split:
``clean_accuracy``, ``pgd20_<norm>_<eps>``, ``n``), ``events`` (e.g. Fast-AT's rollback), ``seed``,
``train_seconds``, ``torch``, ``robustaudit``, ``weights`` (the checkpoint's file name) and
``sha256`` (of the checkpoint file), the same keys the catalog's shipped manifests use.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel
from robustaudit.data.registry import require_train_split
from robustaudit.defenses.training import TrainConfig, TrainLog, train

CARD_FORMAT = "robustaudit-card/1"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
#: data sets with one split only: training and testing on the same samples would report nothing
EVAL_N = 500
EVAL_STEPS = 20


def card_path(checkpoint: str | Path) -> Path:
    """The model card beside ``checkpoint``: ``model.pt`` -> ``model.pt.json``."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".json")


@dataclass
class TrainResult:
    """What :func:`train_checkpoint` wrote and measured."""

    checkpoint: Path
    card: Path
    record: dict[str, Any]
    log: TrainLog


def build_architecture(spec: str, num_classes: int, dropout: float | None = None) -> tuple[nn.Module, str]:
    """An untrained model for ``spec`` and the spec a card should name to rebuild it.

    ``spec``: a catalog name (its architecture, without the shipped weights), ``torchvision:ARCH``
    (``num_classes`` added unless given inline) or ``file.py:CALLABLE`` / ``module:CALLABLE``
    (file paths are made absolute in the returned spec). ``dropout`` is passed to builders that
    take a ``dropout`` argument; any other builder refuses it.
    """
    from robustaudit.models import loading
    from robustaudit.models.catalog import get_card, model_names

    if spec in model_names():
        card = get_card(spec)
        if card.num_classes != num_classes:
            raise UserError(f"architecture '{spec}' has {card.num_classes} classes, the data {num_classes}")
        kwargs = {}
        if dropout is not None:
            if "dropout" not in inspect.signature(card.builder).parameters:
                raise UserError(f"architecture '{spec}' has no dropout setting")
            kwargs["dropout"] = dropout
        return card.builder(**kwargs), spec
    if dropout is not None:
        if not spec.startswith("torchvision:"):
            raise UserError(f"--dropout works with catalog and torchvision architectures; set it inside '{spec}'")
        spec_run = spec + (":" if spec.count(":") == 1 else ",") + f"dropout={dropout}"
    else:
        spec_run = spec
    saved = spec
    if not spec.startswith("torchvision:") and ":" in spec:
        left, _, attr = spec.rpartition(":")
        if left.endswith(".py") and Path(left).is_file():
            saved = f"{Path(left).resolve()}:{attr}"
    # torchvision builders take the data's classes unless the spec sets them; factories build their own
    classes = num_classes if spec.startswith("torchvision:") and "num_classes=" not in spec else None
    with warnings.catch_warnings():
        # "no weights (random initialization)" is the point here
        warnings.filterwarnings("ignore", message=".*has no weights.*")
        model, _, _, _ = loading._resolve(spec_run, None, classes, False)
    return model, saved


def _save(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
             seed: int = 0, batch_size: int = 256) -> tuple[float, float]:
    """Clean and PGD-20 accuracy of ``model`` on ``x`` ``(N, C, H, W)``, ``y`` ``(N,)``."""
    from robustaudit.attacks.gradient import PGD

    model.eval()
    clean = robust = 0
    attack = PGD(steps=EVAL_STEPS)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        adv = attack(model, xb, yb, threat, ids=torch.arange(i, i + len(yb)), seed=seed)
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == yb).sum())
    return clean / len(y), robust / len(y)


def train_checkpoint(
    arch: str,
    data: str,
    config: TrainConfig,
    out: str | Path,
    *,
    dropout: float | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    overwrite: bool = True,
) -> TrainResult:
    """Train ``arch`` on the train split of ``data`` with ``config``; write ``out`` and its card.

    Raises :class:`UserError` for a bad checkpoint name or one that cannot be written (checked before
    training), an existing ``out`` unless ``overwrite`` (the API's default; the CLI asks for
    ``--overwrite``), a data set without a train split, an architecture that does not fit the data.
    """
    from robustaudit.data.registry import open_dataset

    out = check_out(out, overwrite=overwrite)
    require_train_split(data)
    train_data, test_data = open_dataset(data, split="train"), open_dataset(data, split="test")
    torch.manual_seed(config.seed)  # the architecture's initial weights
    model, arch_spec = build_architecture(arch, train_data.num_classes, dropout)
    x, y = train_data.load(range(len(train_data)))
    _check_fits(model, x, arch, data)
    config.build()  # validate the defense and its settings before the data and the loop are costly
    log = train(model, x, y, config, on_epoch=on_epoch)
    threat = ThreatModel(config.norm, config.eps)
    xt, yt = test_data.load(range(min(EVAL_N, len(test_data))))
    clean, robust = evaluate(model, xt, yt, threat, seed=config.seed)
    _save(model, out)
    record = _card(out, arch_spec, data, config, dropout, train_data.num_classes, list(x.shape[1:]),
                   {"clean": clean, "robust": robust, "n": len(yt)}, log)
    path = card_path(out)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return TrainResult(out, path, record, log)


def check_out(out: str | Path, *, overwrite: bool = True) -> Path:
    """``out`` as a path, or :class:`UserError` when it is no checkpoint file name, cannot be written
    (a directory, a parent that is a file or not writable) or exists and ``overwrite`` is false.

    Checked before training: a bad ``--out`` found at the save would throw the whole run away.
    """
    out = Path(out)
    if out.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UserError(f"--out '{out}' must end in {', '.join(CHECKPOINT_SUFFIXES)} (a state_dict checkpoint)")
    if out.is_dir():
        raise UserError(f"--out '{out}' is a directory; give a checkpoint file name")
    if out.exists() and not overwrite:
        raise UserError(f"--out '{out}' exists; give --overwrite to replace it and its card, or another name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # the first ancestor that exists is created in
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out '{out}' cannot be written: '{parent}' is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"--out '{out}' cannot be written: no write permission in '{parent}'")
    return out


def _check_fits(model: nn.Module, x: torch.Tensor, arch: str, data: str) -> None:
    """:class:`UserError` unless ``model`` takes the images ``x (N, C, H, W)`` (one forward of two, eval mode)."""
    try:
        with torch.no_grad():
            model.eval()
            model(x[:2])
    except Exception as err:  # noqa: BLE001 - a shape mismatch between architecture and data
        raise UserError(f"architecture '{arch}' does not take {data} images of shape "
                        f"{tuple(x.shape[1:])}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def _card(out: Path, arch_spec: Any, data: str, config: TrainConfig, dropout: float | None, num_classes: int,
          input_shape: list[int], scores: dict[str, Any], log: TrainLog) -> dict[str, Any]:
    """The card of the checkpoint just written to ``out``; ``scores``: ``clean``, ``robust``, ``n`` of the
    held-out evaluation."""
    from robustaudit.core.version import __version__
    from robustaudit.models.loading import file_sha256

    settings = config.build().settings()
    clean, robust = scores["clean"], scores["robust"]
    return {
        "format": CARD_FORMAT,
        "name": out.stem,
        "architecture": arch_spec,
        "num_classes": num_classes,
        "input_shape": input_shape,
        "data": data,
        "defense": config.defense,
        "settings": settings,
        "threat_model": {"norm": config.norm, "eps": config.eps},
        "dropout": dropout,
        "train": {**vars(config), "settings": dict(config.settings)},
        "reported": {"clean_accuracy": round(clean, 4), f"pgd{EVAL_STEPS}_{config.norm}_{config.eps:g}": round(robust, 4),
                     "n": scores["n"]},
        "events": list(log.events),
        "seed": config.seed,
        "train_seconds": round(log.seconds, 1),
        "torch": torch.__version__,
        "robustaudit": __version__,
        "weights": out.name,
        "sha256": file_sha256(out),
    }
