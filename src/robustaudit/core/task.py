"""What a task changes: the loss an attack climbs, what counts as success, how outputs are read.

Classification and segmentation differ only here, so attacks and the runner stay task-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Task:
    """Classification: logits of shape ``(N, K)``, integer labels of shape ``(N,)``."""

    name: str = "classification"

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to *maximise* for an untargeted attack. ``(N, K), (N,) -> (N,)``."""
        return F.cross_entropy(logits, y, reduction="none")

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample correctness, a bool tensor of shape ``(N,)``."""
        return logits.argmax(dim=1) == y

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logit margin ``z_y - max_{k != y} z_k``; negative means misclassified. ``(N, K) -> (N,)``."""
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.clone()
        other.scatter_(1, y[:, None], float("-inf"))
        return true - other.max(dim=1).values


CLASSIFICATION = Task()
