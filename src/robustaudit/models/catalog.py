"""The model catalog: ModelCard registry and ``create_model`` (timm-style, registration by explicit call).

Weights of catalog models ship inside the package (``models/weights/``), are produced by our own
training code (``scripts/train_default_models.py``) and are checked against the sha256 on their card
before they are loaded: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from robustaudit.core.errors import UserError, unknown
from robustaudit.core.hashing import file_sha256
from robustaudit.core.threat import ThreatModel
from robustaudit.models.zoo import builtin_entries

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelCard:
    """What the catalog knows about a model.

    ``input_shape`` is ``(C, H, W)`` of inputs in [0, 1]; ``trained_for`` is the threat model it was
    adversarially trained against (``None`` for standard training); ``reported`` holds the numbers
    measured when the weights were produced (floats, e.g. ``{"clean_accuracy": 0.98}``; a segmentation
    model reports ``{"clean_miou": ..., "clean_pixel_accuracy": ...}``). ``task`` is
    ``"classification"`` (logits ``(N, num_classes)``) or ``"segmentation"`` (logits
    ``(N, num_classes, H, W)``).
    """

    name: str
    builder: Callable[[], nn.Module]
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str
    defense: str = "standard"
    trained_for: ThreatModel | None = None
    weights: str | None = None
    sha256: str | None = None
    reported: dict[str, float] = field(default_factory=dict)
    task: str = "classification"

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.weights if self.weights else None


_REGISTRY: dict[str, ModelCard] = {}


def register_model(card: ModelCard) -> ModelCard:
    """Add ``card`` to the catalog; a second card with the same name is a programming error."""
    if card.name in _REGISTRY:
        raise ValueError(f"model '{card.name}' is already registered")
    _REGISTRY[card.name] = card
    return card


def model_names() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_card(name: str) -> ModelCard:
    _ensure_builtin()
    if name not in _REGISTRY:
        raise unknown("model", name, _REGISTRY)
    return _REGISTRY[name]


#: The sha256 of a weights file (one function for every weights file: :mod:`robustaudit.core.hashing`).
sha256_of = file_sha256


def create_model(name: str, *, pretrained: bool = True) -> nn.Module:
    """Build catalog model ``name`` on the CPU, in eval mode, with its shipped weights when ``pretrained``.

    Refuses weights whose sha256 differs from the card's (a corrupted or swapped file).
    """
    card = get_card(name)
    model = card.builder()
    if pretrained and card.weights_path is not None:
        path = card.weights_path
        if not path.is_file():
            script = "train_segmentation_model" if card.task == "segmentation" else "train_default_models"
            raise UserError(
                f"weights for '{name}' are missing ({path}); regenerate them with `python scripts/{script}.py`"
            )
        digest = sha256_of(path)
        if card.sha256 and digest != card.sha256:
            raise UserError(
                f"weights file {path} has sha256 {digest[:12]}…, but the card of '{name}' expects "
                f"{card.sha256[:12]}…: the file is corrupted or was replaced"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def _ensure_builtin() -> None:
    # explicit registration of our own zoo, done once on first use (no star-import side effects)
    if not _REGISTRY:
        for entry in builtin_entries():
            register_model(ModelCard(**entry))
