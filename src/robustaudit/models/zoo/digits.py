"""Small CNN for scikit-learn's 8×8 digits, the architecture of the embedded default models."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    """Three conv layers and two dense layers for ``(N, 1, 8, 8)`` inputs in [0, 1] -> ``(N, 10)`` logits.

    About 0.16 M parameters: big enough to reach ~98% clean accuracy and to be adversarially trained
    at Linf eps = 0.2, small enough that the default audit runs in seconds on a CPU.

    ``dropout`` (default 0: off) drops units of the 128-wide hidden layer while training. It is
    applied functionally, not as a module, so the ``state_dict`` (and the shipped weights) are the
    same with or without it.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * w * 4, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 8, 8) -> (N, num_classes)``."""
        if not self.dropout:
            return self.classifier(self.features(x))
        hidden = self.classifier[:3](self.features(x))  # flatten, linear, relu: (N, 128)
        return self.classifier[3](F.dropout(hidden, self.dropout, self.training))
