"""What the dense (segmentation) attacks share: the task check, target maps and the per-image score.

The rules every segmentation attack keeps are in :mod:`robustaudit.attacks.segmentation`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.core.errors import UserError
from robustaudit.core.task import SegmentationTask, Task


def require_segmentation(task: Task, name: str) -> SegmentationTask:
    """``task`` as a :class:`SegmentationTask`; a one-line refusal for any other task."""
    if not isinstance(task, SegmentationTask):
        raise UserError(f"attack '{name}' attacks segmentation models: run it with task=segmentation")
    return task


def parse_target(name: str, target: Any) -> str | int | None:
    """Validate a ``target`` setting: ``None``, ``"shift"``, a class index or ``"class:C"``."""
    if target is None or target == "shift":
        return target
    if isinstance(target, str) and target.startswith("class:"):
        target = target.partition(":")[2].strip()
        try:
            target = int(target)
        except ValueError:
            raise UserError(f"{name}: target 'class:C' needs an integer C, got {target!r}") from None
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise UserError(f"{name}: target must be 'shift', a class index >= 0 or 'class:C', got {target!r}")
    return target


def target_map(y: torch.Tensor, target: str | int, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """The target segmentation of labels ``y (N, H, W)``: ``"shift"`` -> ``(y + 1) mod K``, an int ``C`` ->
    ``C`` everywhere; ignored pixels stay ignored. ``-> (N, H, W)`` int64."""
    valid = y != ignore_index
    if target == "shift":
        out = (y.clamp_max(num_classes - 1) + 1) % num_classes
    else:
        if int(target) >= num_classes:
            raise UserError(f"target class {target} does not exist: the model has {num_classes} classes")
        out = torch.full_like(y, int(target))
    return torch.where(valid, out, torch.full_like(y, ignore_index))


def _targets(y: torch.Tensor, targets: torch.Tensor | None, ignore_index: int) -> torch.Tensor | None:
    """Targets restricted to the pixels that count: ignored in ``y`` -> ignored in the targets."""
    if targets is None:
        return None
    if targets.shape != y.shape:
        raise UserError(f"targets must have the labels' shape {tuple(y.shape)}, got {tuple(targets.shape)}")
    return torch.where(y != ignore_index, targets.to(y.device), torch.full_like(y, ignore_index))


def dense_score(task: SegmentationTask, logits: torch.Tensor, y: torch.Tensor,
                targets: torch.Tensor | None) -> torch.Tensor:
    """Per-image attack score, higher is better for the attacker: ``1 - pixel accuracy`` (untargeted) or
    the share of the pixels to change that reach their target (targeted: valid pixels whose label
    ``y`` differs from the target; an image with none scores 0). ``(N, K, H, W) -> (N,)``."""
    if targets is None:
        return 1.0 - task.pixel_accuracy(logits, y)
    counted = to_change(task, y, targets)
    hits = ((logits.argmax(1) == targets) & counted).flatten(1).sum(1)
    return hits / counted.flatten(1).sum(1).clamp_min(1)


def to_change(task: SegmentationTask, y: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool: the pixels a targeted attack must change, valid in labels and targets with a
    label other than the target. Pixels already labelled as their target count nowhere: counting them
    let a no-op attack with target background score ~90% on digit-scenes."""
    return task.valid(targets) & task.valid(y) & (y != targets)


class DenseAttack(Attack):
    """What the segmentation attacks share: the task check and target maps."""

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    #: the task this attack serves (the registry lists it under that task)
    task_name: ClassVar[str] = "segmentation"
    target: str | int | None = None

    def targets_for(self, y: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor | None:
        """The target map this attack aims at for labels ``y (N, H, W)`` (``None``: untargeted)."""
        if self.target is None:
            return None
        return target_map(y, self.target, num_classes, ignore_index)

    def _resolve_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                         task: SegmentationTask) -> torch.Tensor | None:
        if targets is None and self.target is not None:
            with torch.no_grad():
                k = model(x[:1]).shape[1]
            targets = self.targets_for(y, k, task.ignore_index)
        return _targets(y, targets, task.ignore_index)
