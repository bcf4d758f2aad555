"""The example images an audit keeps for its report, and their ``.npz`` files (``examples.npz``,
``seg_examples.npz``) beside ``results.json``. Re-exported by :mod:`robustaudit.evaluate.result`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

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



def save_examples(examples: list[Example], path: Path) -> None:
    meta = [{k: v for k, v in asdict(e).items() if k not in ("clean", "adversarial")} for e in examples]
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(meta)),
        clean=np.stack([e.clean for e in examples]).astype(np.float32),
        adversarial=np.stack([e.adversarial for e in examples]).astype(np.float32),
    )


def load_examples(path: Path) -> list[Example]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return [
            Example(clean=z["clean"][i], adversarial=z["adversarial"][i], **m)
            for i, m in enumerate(meta)
        ]


def save_seg_examples(examples: list[SegExample], path: Path) -> None:
    meta = [{"model": e.model, "attack": e.attack, "eps": e.eps} for e in examples]
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(meta)),
        clean=np.stack([e.clean for e in examples]).astype(np.float32),
        adversarial=np.stack([e.adversarial for e in examples]).astype(np.float32),
        label=np.stack([e.label for e in examples]).astype(np.int64),
        clean_pred=np.stack([e.clean_pred for e in examples]).astype(np.int64),
        adv_pred=np.stack([e.adv_pred for e in examples]).astype(np.int64),
    )


def load_seg_examples(path: Path) -> list[SegExample]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return [
            SegExample(clean=z["clean"][i], adversarial=z["adversarial"][i], label=z["label"][i],
                       clean_pred=z["clean_pred"][i], adv_pred=z["adv_pred"][i], **m)
            for i, m in enumerate(meta)
        ]
