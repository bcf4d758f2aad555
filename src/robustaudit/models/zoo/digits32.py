"""Two small, architecturally different networks for ``digits32`` (the digits upsampled to 1×32×32).

``Digits32CNN`` is a plain VGG-style stack (no normalization); ``Digits32ResNet`` a tiny pre-activation-free
ResNet with batch norm, residual connections and global average pooling. They differ in the features
they rely on, which is what measuring transfer (an attack fitted on one, evaluated on the other) needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.core.threat import ThreatModel


class Digits32CNN(nn.Module):
    """Three conv + pool stages and two dense layers: ``(N, 1, 32, 32)`` in [0, 1] -> ``(N, 10)`` logits.

    About 0.16 M parameters (0.6 MB of float32 weights).
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32 -> 16
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * w * 16, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 32, 32) -> (N, num_classes)``."""
        return self.classifier(self.features(x))


class _Block(nn.Module):
    """Two 3×3 conv + batch-norm layers with an identity (or 1×1 strided) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Digits32ResNet(nn.Module):
    """A stem and three residual stages (16, 32, 64 channels; strides 1, 2, 2), global average pooling and
    one linear layer: ``(N, 1, 32, 32)`` in [0, 1] -> ``(N, 10)`` logits. About 0.08 M parameters."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(_Block(w, w, 1), _Block(w, 2 * w, 2), _Block(2 * w, 4 * w, 2))
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 32, 32) -> (N, num_classes)``."""
        h = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


#: name -> (builder, defense, trained-for threat model, description)
DIGITS32_MODELS: dict[str, tuple[Callable[[], nn.Module], str, ThreatModel | None, str]] = {
    "digits32-cnn": (Digits32CNN, "standard", None,
                     "Digits32CNN (3 conv + 2 dense), standard training on digits32 (digits upsampled to 32x32)"),
    "digits32-resnet": (Digits32ResNet, "standard", None,
                        "Digits32ResNet (3 residual stages, batch norm), standard training on digits32"),
}
