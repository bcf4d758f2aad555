"""Architectures and catalog entries of the models robustaudit ships.

The entries are plain data (the keyword arguments of a ``ModelCard``); :mod:`robustaudit.models.catalog`
turns them into cards on first use, so the zoo knows nothing of the registry that holds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustaudit.core.threat import ThreatModel
from robustaudit.models.zoo.digits import DigitsCNN
from robustaudit.models.zoo.digits32 import DIGITS32_MODELS
from robustaudit.models.zoo.unet import unet_tiny

_WEIGHTS = Path(__file__).parent.parent / "weights"


#: sha256 of the shipped weight files, pinned in code (not read from the manifest beside them), so a
#: replaced file is refused. Regenerate with scripts/train_default_models.py and update both.
_SHA256 = {
    "digits-cnn": "aedfd32c6ef0873f0a29feb113929477572d728242995b8e739091f92697b658",
    "digits-cnn-pgdat": "1e6c37ca6a330527ca2f1b3207812b2187853d77fdb8bb3dfd7b2f82c66399a9",
    "digits-cnn-trades": "13d6f8d5ab8badce79f09ebf0878162ed4884c34b196fb1e02621aba28bbedc7",
    "digits-cnn-ls": "e23170a2f4d8169724fcb86c1648549467864a0d4ab3115ea9144e221cb48980",
    # scripts/train_digits32_models.py
    "digits32-cnn": "986526c65cc9c5ef2d63820641a5caa21654d10d4b40f75692dc5e50f1c3303e",
    "digits32-resnet": "adbff06173a91bada797f86ea1748fce66d2e1fbdaf4bdfdd0cab6fb1169cdc8",
    # scripts/train_segmentation_model.py
    "unet-tiny": "f8ad7ee787a1d95032e4a9252253b862a3cd68e77ad3875fc8348d0322097d39",
}

#: The DigitsCNN variants: name -> (defense, trained-for threat model, description).
_DIGITS_MODELS: dict[str, tuple[str, ThreatModel | None, str]] = {
    "digits-cnn": ("standard", None, "DigitsCNN, standard training on sklearn digits"),
    "digits-cnn-pgdat": ("pgd-at", ThreatModel("linf", 0.2),
                         "DigitsCNN, PGD adversarial training (Madry et al.) at Linf eps=0.2 on sklearn digits"),
    "digits-cnn-trades": ("trades", ThreatModel("linf", 0.2),
                          "DigitsCNN, TRADES (Zhang et al., beta=6) at Linf eps=0.2 on sklearn digits"),
    "digits-cnn-ls": ("label-smoothing", None,
                      "DigitsCNN, label smoothing 0.1 (a regularizer, not adversarial training) on sklearn digits"),
}


def _manifest(stem: str) -> dict:
    """The training record written next to shipped weights (sha256 and measured accuracies)."""
    path = _WEIGHTS / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _entry(name: str, **card: Any) -> dict[str, Any]:
    """A card's keyword arguments: ``card`` plus the pinned sha256, the weights file when one is pinned
    and the numbers its training manifest reports."""
    sha256 = _SHA256[name]
    reported = {k: float(v) for k, v in _manifest(name).get("reported", {}).items()}
    return {"name": name, **card, "weights": f"{name}.pt" if sha256 else None, "sha256": sha256,
            "reported": reported}


def builtin_entries() -> list[dict[str, Any]]:
    """The catalog entries of the shipped models, as ``ModelCard`` keyword arguments, in registration
    order: the DigitsCNN variants, the digits32 networks, the segmentation U-Net."""
    entries = [
        _entry(name, builder=DigitsCNN, dataset="digits", input_shape=(1, 8, 8), num_classes=10,
               description=text, defense=defense, trained_for=trained_for)
        for name, (defense, trained_for, text) in _DIGITS_MODELS.items()
    ]
    entries += [
        _entry(name, builder=builder, dataset="digits32", input_shape=(1, 32, 32), num_classes=10,
               description=text, defense=defense, trained_for=trained_for)
        for name, (builder, defense, trained_for, text) in DIGITS32_MODELS.items()
    ]
    entries.append(_entry("unet-tiny", builder=unet_tiny, dataset="digit-scenes", input_shape=(1, 64, 64),
                          num_classes=11, description="tiny U-Net (segmentation), standard training on digit-scenes",
                          task="segmentation"))
    return entries
