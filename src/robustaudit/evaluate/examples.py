"""The example images an audit keeps for its report, and their ``.npz`` files (``examples.npz``,
``seg_examples.npz``) beside ``results.json``. Re-exported by :mod:`robustaudit.evaluate.result`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Example", "SegExample", "load_examples", "load_seg_examples", "save_examples", "save_seg_examples"]


@dataclass
class Example:
    """One attacked sample for the report: images of shape ``(C, H, W)`` in [0, 1]."""

    model: str
    attack: str
    eps: float
    clean: np.ndarray
    adversarial: np.ndarray
    label: int
    clean_pred: int
    adv_pred: int
    #: the sample's id in the data set (what orders examples merged from several processes)
    sample_id: int | None = None


@dataclass
class SegExample:
    """One attacked image of a segmentation audit for the report's panels: ``clean`` and ``adversarial``
    ``(C, H, W)`` in [0, 1]; ``label``, ``clean_pred``, ``adv_pred`` ``(H, W)`` class maps (255 = ignore)."""

    model: str
    attack: str
    eps: float
    clean: np.ndarray
    adversarial: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray



#: the arrays each file stacks, one row per example, and their dtypes (the rest of a field is JSON ``meta``)
_IMAGES = {"clean": np.float32, "adversarial": np.float32}
_MAPS = {**_IMAGES, "label": np.int64, "clean_pred": np.int64, "adv_pred": np.int64}


def save_examples(examples: list[Example], path: Path) -> None:
    meta = [{k: v for k, v in asdict(e).items() if k not in _IMAGES} for e in examples]
    _save(path, examples, meta, _IMAGES)


def load_examples(path: Path) -> list[Example]:
    return _load(path, Example, _IMAGES)


def save_seg_examples(examples: list[SegExample], path: Path) -> None:
    _save(path, examples, [{"model": e.model, "attack": e.attack, "eps": e.eps} for e in examples], _MAPS)


def load_seg_examples(path: Path) -> list[SegExample]:
    return _load(path, SegExample, _MAPS)


def _save(path: Path, examples: list[Any], meta: list[dict[str, Any]], arrays: dict[str, Any]) -> None:
    """``meta`` as JSON, and each of ``arrays`` stacked over ``examples`` ``(N, ...)`` in its dtype."""
    np.savez_compressed(path, meta=np.array(json.dumps(meta)),
                        **{k: np.stack([getattr(e, k) for e in examples]).astype(t) for k, t in arrays.items()})


def _load(path: Path, cls: type, arrays: dict[str, Any]) -> list[Any]:
    with np.load(path, allow_pickle=False) as z:
        return [cls(**{k: z[k][i] for k in arrays}, **m) for i, m in enumerate(json.loads(str(z["meta"])))]
