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


#: The label of pixels that count nowhere: not in the loss, not in any metric (VOC's border value).
IGNORE_INDEX = 255


def valid_share(hits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``hits / valid`` as float64, elementwise (any equal shapes): the share of valid pixels that are right.

    The one definition of pixel accuracy: NaN where there is no valid pixel. An image with no valid
    pixel has no pixel accuracy (nothing was there to get right or wrong), so it is left out of per-image
    statistics (as torchmetrics and the VOC/Cityscapes evaluators leave it out), and it adds nothing to
    a dataset-level confusion matrix.
    """
    hits, valid = hits.to(torch.float64), valid.to(torch.float64)
    return torch.where(valid > 0, hits / valid.clamp_min(1), torch.full_like(valid, float("nan")))


@dataclass(frozen=True)
class SegmentationTask(Task):
    """Dense prediction: logits ``(N, K, H, W)``, labels ``(N, H, W)`` int64 with ``ignore_index``
    marking pixels that count nowhere.

    Per-sample reductions average over an image's *valid* pixels, so an image's weight in a loss does
    not depend on how much of it is ignored. Segmentation attacks do not stop early per image (a
    partly fooled image still has pixels to flip); ``correct`` exists so generic code has a per-sample
    notion: an image is correct when every valid pixel is.
    """

    name: str = "segmentation"
    ignore_index: int = IGNORE_INDEX

    def valid(self, y: torch.Tensor) -> torch.Tensor:
        """Pixels that count. ``(N, H, W) -> (N, H, W)`` bool."""
        return y != self.ignore_index

    def pixel_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per pixel, 0 at ignored pixels. ``(N, K, H, W), (N, H, W) -> (N, H, W)``."""
        return F.cross_entropy(logits, y, ignore_index=self.ignore_index, reduction="none")

    def _mean_valid(self, per_pixel: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        valid = self.valid(y)
        total = (per_pixel * valid).flatten(1).sum(1)
        return total / valid.flatten(1).sum(1).clamp_min(1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over each image's valid pixels. ``-> (N,)``."""
        return self._mean_valid(self.pixel_loss(logits, y), y)

    def pixel_correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Correct valid pixels (False at ignored ones). ``-> (N, H, W)`` bool."""
        return (logits.argmax(dim=1) == y) & self.valid(y)

    def pixel_accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Share of each image's valid pixels predicted correctly, float32; NaN for an image with none
        (:func:`valid_share`). ``-> (N,)``."""
        valid = self.valid(y).flatten(1).sum(1)
        hits = self.pixel_correct(logits, y).flatten(1).sum(1)
        return valid_share(hits, valid).float()

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every valid pixel correct. ``-> (N,)`` bool."""
        return (self.pixel_correct(logits, y) | ~self.valid(y)).flatten(1).all(1)

    def pixel_margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``z_y - max_{k != y} z_k`` per pixel, 0 at ignored pixels. ``-> (N, H, W)``."""
        valid = self.valid(y)
        safe = torch.where(valid, y, torch.zeros_like(y))[:, None]  # a class index gather can take
        true = logits.gather(1, safe).squeeze(1)
        other = logits.clone()
        other.scatter_(1, safe, float("-inf"))
        return torch.where(valid, true - other.max(dim=1).values, torch.zeros_like(true))

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean pixel margin over each image's valid pixels. ``-> (N,)``."""
        return self._mean_valid(self.pixel_margin(logits, y), y)


SEGMENTATION = SegmentationTask()
