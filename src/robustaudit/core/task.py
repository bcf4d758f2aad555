"""What a task changes: the loss an attack climbs, what counts as success, the per-sample statistics the
figures are aggregated from, whether the survivor cascade applies, and which audit options it supports.

Classification and segmentation differ only here (and in the store records and aggregation that
:mod:`robustaudit.evaluate.scoring` keeps per task), so attacks and the runner stay task-agnostic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from robustaudit.core.errors import UserError

#: The audit options a task may lack, each with the one line that refuses it (``Task.unsupported``):
#: ``precision``/``compile`` (the attack's fast path), ``channels_last``, ``distributed`` (torchrun/srun),
#: ``detectors`` (--defense), ``physical`` (the physical-world proxies), ``checks`` (sanity checks: skipped,
#: not refused, because they are on by default), ``black_box_fallback`` (Square in place of a gradient
#: attack on a model without input gradients).
OPTIONS = ("precision", "compile", "channels_last", "distributed", "detectors", "physical", "checks",
           "black_box_fallback")

#: The prediction of a row of logits that holds a NaN: no class (every label differs from it).
NO_PREDICTION = -1


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class of each row: ``(N, K) -> (N,)`` int64, :data:`NO_PREDICTION` where the row holds
    a NaN. torch's argmax returns a NaN's own index, so a model that answers an adversarial input with NaN
    would be counted correct whenever the NaN sits at the label; a model that outputs NaN has classified
    nothing, and an attack that drives it there has succeeded. (An infinite logit is an answer: ``-inf``
    for a class a model rules out is common.)"""
    pred = logits.argmax(dim=1)
    return pred.masked_fill(torch.isnan(logits).any(dim=1), NO_PREDICTION)


@dataclass(frozen=True)
class Task:
    """Classification: logits of shape ``(N, K)``, integer labels of shape ``(N,)``.

    ``cascade``: a sample broken at eps_k is broken at every larger eps, so larger eps attack only the
    survivors (a per-sample yes/no); without it every eps is an independent run over every sample.
    ``unsupported``: ``(option, reason)`` pairs, the one place that says what the task cannot do.
    """

    name: str = "classification"
    cascade: bool = True
    unsupported: tuple[tuple[str, str], ...] = ()

    def supports(self, option: str) -> bool:
        """Whether the audit option ``option`` (one of :data:`OPTIONS`) works for this task."""
        if option not in OPTIONS:
            raise ValueError(f"unknown task option '{option}'")
        return all(o != option for o, _ in self.unsupported)

    def why_not(self, option: str) -> str:
        """The one line saying why ``option`` does not work for this task (``""`` when it does)."""
        return next((why for o, why in self.unsupported if o == option), "")

    def refuse(self, options: Iterable[str]) -> None:
        """Raise :class:`UserError` with the reason of the first option in use (``options``) this task lacks."""
        for option in options:
            if not self.supports(option):
                raise UserError(self.why_not(option))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to *maximise* for an untargeted attack. ``(N, K), (N,) -> (N,)``."""
        return F.cross_entropy(logits, y, reduction="none")

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample correctness, a bool tensor of shape ``(N,)`` (a row holding a NaN is wrong)."""
        return predictions(logits) == y

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logit margin ``z_y - max_{k != y} z_k``; negative means misclassified. ``(N, K) -> (N,)``."""
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.clone()
        other.scatter_(1, y[:, None], float("-inf"))
        return true - other.max(dim=1).values


CLASSIFICATION = Task()


def task_of(data: Any) -> Task:
    """The task of a data set: ``data.task`` (default classification); a segmentation set's
    ``ignore_index`` (default :data:`IGNORE_INDEX`) goes into its task."""
    if getattr(data, "task", "classification") != "segmentation":
        return CLASSIFICATION
    ignore = getattr(data, "ignore_index", None)
    return SegmentationTask(ignore_index=IGNORE_INDEX if ignore is None else int(ignore))


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


_FP32 = "segmentation audits run in one process at fp32: drop torchrun/srun, --precision and --compile"


def image_confusion(pred: torch.Tensor, y: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """One confusion matrix per image: ``pred, y (N, H, W) -> (N, K, K)`` int64 on the CPU, rows the true
    class. Pixels labelled ``ignore_index`` count nowhere (an image with none valid: all zeros)."""
    n = y.shape[0]
    valid = y != ignore_index
    img = torch.arange(n, device=y.device).view(-1, 1, 1).expand_as(y)
    k = num_classes
    flat = (img * k * k + y.clamp(0, k - 1) * k + pred.clamp(0, k - 1))[valid]
    return torch.bincount(flat, minlength=n * k * k).view(n, k, k).cpu()


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
    # mIoU is a dataset-level figure (no per-image yes/no): every eps is an independent run over all images
    cascade: bool = False
    unsupported: tuple[tuple[str, str], ...] = (
        ("detectors", "detectors (--defense) wrap classifiers; a segmentation audit takes none"),
        ("physical", "--physical (physical-world proxies) measures classifiers' adversarial examples; a "
                     "segmentation audit takes none"),
        *((o, _FP32) for o in ("precision", "compile", "distributed")),
        ("channels_last", "segmentation models run in their own memory layout"),
        ("checks", "the sanity checks are classification-specific (per-sample verdicts); not run for "
                   "segmentation"),
        ("black_box_fallback", "no black-box segmentation attack stands in for a gradient attack"),
    )
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
        return (predictions(logits) == y) & self.valid(y)

    def pixel_accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Share of each image's valid pixels predicted correctly, float32; NaN for an image with none
        (:func:`valid_share`). ``-> (N,)``."""
        valid = self.valid(y).flatten(1).sum(1)
        hits = self.pixel_correct(logits, y).flatten(1).sum(1)
        return valid_share(hits, valid).float()

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every valid pixel correct. ``-> (N,)`` bool."""
        return (self.pixel_correct(logits, y) | ~self.valid(y)).flatten(1).all(1)

    def statistics(self, pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The per-image statistics every figure is aggregated from (mIoU, pixel accuracy, intervals):
        each image's confusion matrix. ``pred, y (N, H, W) -> (N, K, K)`` int64 on the CPU."""
        return image_confusion(pred, y, num_classes, self.ignore_index)

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


def task_named(name: str) -> Task:
    """The task called ``name`` (``classification``, ``segmentation``), as an audit spec names it."""
    return SEGMENTATION if name == "segmentation" else CLASSIFICATION
