"""Dense attacks on semantic segmentation: pixel-wise PGD, SegPGD, CosPGD, DAG and universal perturbations.

Every attack here keeps the one Attack contract with ``task=SEGMENTATION``: logits ``(N, K, H, W)``,
labels ``(N, H, W)`` int64 with :data:`~robustaudit.core.task.IGNORE_INDEX` (255) marking pixels that
count nowhere, targets ``(N, H, W)`` for targeted runs. Shared rules:

* ignored pixels carry no loss weight, take no part in any step rule or stopping test, and count in no
  score (changing the logits or labels there leaves the adversarial point unchanged, bit for bit);
* there is no per-image early exit for the gradient attacks: a partly fooled image still has pixels to
  flip, so every image takes every step; the iterate returned per image is the best one seen (lowest
  valid-pixel accuracy, or for targeted runs the largest share of valid pixels at their target);
* every random draw is keyed by (seed, sample id, attack, eps, restart), as for classification.

Target maps (the ``target`` setting of targeted runs, or ``targets=`` at call time): ``"shift"`` sends
every valid pixel of label ``c`` to ``(c + 1) mod K`` (a fixed permutation of the labels, as DAG's paper
permutes them); an integer ``C`` (or ``"class:C"``) sends every valid pixel to class ``C``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from robustaudit.attacks.base import Attack
from robustaudit.attacks.dense import (
    DenseAttack,
    dense_score,
    parse_target,
    require_segmentation,
    target_map,
)
from robustaudit.attacks.engine import Active, IterativeSearch, Problem, Query, view
from robustaudit.attacks.gradient import STEP_SETTINGS, start_in_ball
from robustaudit.attacks.settings import MAX_RESTARTS, MAX_STEPS, Bool, Choice, Float, Int, Setting, Settings
from robustaudit.attacks.seg_uap import FittedUAP, SegUAP, hide_class_target
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.task import SEGMENTATION, SegmentationTask


class SegPGD(DenseAttack, IterativeSearch):
    """SegPGD (Gu et al. 2022): PGD on a per-pixel CE that shifts weight from correct to flipped pixels.

    One engine serves three per-pixel weightings of the cross-entropy: pixel-wise PGD
    (``weighting="mean"``), SegPGD (``"segpgd"``) and CosPGD (``"cospgd"``).

    Each step ``x <- clip(proj(x + alpha * dir(grad)))`` (``dir``: sign for Linf, ``g / ||g||_2`` for L2)
    with the gradient of ``sum_p w_p * CE_p / |valid|`` over an image's valid pixels (untargeted: ascend
    the CE to the label; targeted: descend the CE to the target). Weights ``w_p``:

    * ``mean`` — 1: the mean cross-entropy over valid pixels (pixel-wise PGD);
    * ``segpgd`` — Gu et al. 2022, Eq. 4 and the reference schedule ``lambda_t = t / (2T)`` for steps
      ``t = 0 .. T-1`` (the paper's ``(t-1)/(2T)`` with ``t`` from 1): correctly classified pixels weigh
      ``1 - lambda_t``, misclassified ones ``lambda_t``, so early steps push pixels across the boundary
      and later ones keep the flipped ones flipped. ``T`` is the attack's true step count (``steps``).
      Targeted (as in the CosPGD authors' reimplementation of SegPGD): pixels already at their target
      weigh ``lambda_t``, the others ``1 - lambda_t``;
    * ``cospgd`` — Agnihotri et al. (ICML 2024; reference code ``cospgd/attack_implementations.py``,
      ``cospgd_scale``): ``w_p = cos(softmax(z_p), onehot(y_p))``, detached, so pixels still confidently
      right weigh most; targeted: ``w_p = 1 - cos(softmax(z_p), onehot(t_p))``.

    The weights are recomputed from the current iterate's logits at every step and carry no gradient
    (as in both references). The reference codes divide the loss by H·W; we divide by the image's valid
    pixels, which changes nothing for sign steps and keeps images with ignored regions comparable in L2.

    Settings (keyword-only): ``steps`` (10: SegPGD's point is reaching in few steps what PGD needs many
    for, and the default audit must fit a CPU), ``step_size`` (absolute) or ``rel_step_size`` (fraction of
    eps; default ``2.5 / steps``, as our classification PGD), ``random_start`` (uniform in the ball, keyed
    per sample id), ``restarts``, ``target`` (``None`` untargeted, ``"shift"``, a class ``C``).

    Example:
        >>> adv = SegPGD(steps=10)(model, x, y, ThreatModel("linf", 8 / 255), task=SEGMENTATION)
        >>> # x: (N, C, H, W) in [0, 1]; y: (N, H, W) int64, 255 = ignore; adv: (N, C, H, W)
    """

    name = "segpgd"
    randomized = True
    weighting: ClassVar[str] = "segpgd"
    #: no per-image early exit on the engine: a partly fooled image still has pixels to flip
    early_stop = False
    SETTINGS = Settings(
        Int("steps", 10, "iterations per restart", 1, MAX_STEPS),
        Int("restarts", 1, "random restarts", 1, MAX_RESTARTS),
        *STEP_SETTINGS,
        Setting("target", None, None, "a target map: shift (c -> c + 1) or a class (C or class:C); none: untargeted",
                optional=True, parse=parse_target, kind="shift | class"),
        exclusive=(("step_size", "rel_step_size"),),
    )

    def __init__(
        self,
        *,
        steps: int = 10,
        restarts: int = 1,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        target: str | int | None = None,
    ) -> None:
        SegPGD.SETTINGS.apply(self, locals())

    def alpha(self, eps: float) -> float:
        """The absolute step size at radius ``eps``."""
        if self.step_size is not None:
            return float(self.step_size)
        return (self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps) * eps

    def pixel_weights(self, task: SegmentationTask, logits: torch.Tensor, labels: torch.Tensor, step: int,
                      targeted: bool) -> torch.Tensor:
        """Weights ``w_p`` ``(N, H, W)`` of the per-pixel CE at step ``step`` (0-based), detached; 0 at
        ignored pixels. ``labels`` are the labels (untargeted) or the targets (targeted)."""
        valid = task.valid(labels)
        logits = logits.detach()
        if self.weighting == "mean":
            w = torch.ones(labels.shape, dtype=logits.dtype, device=logits.device)
        elif self.weighting == "segpgd":
            lam = step / (2 * self.steps)
            hit = logits.argmax(1) == labels
            # untargeted: a correct pixel still needs pushing (1 - lam); targeted: one at its target is done (lam)
            w = torch.where(hit, 1 - lam, lam) if not targeted else torch.where(hit, lam, 1 - lam)
            w = w.to(logits.dtype)
        else:  # cospgd
            k = logits.shape[1]
            onehot = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), k).permute(0, 3, 1, 2)
            cos = F.cosine_similarity(logits.softmax(1), onehot.to(logits.dtype), dim=1)
            w = cos if not targeted else 1 - cos
        return torch.where(valid, w, torch.zeros_like(w))

    def _objective(self, task: SegmentationTask, logits: torch.Tensor, y: torch.Tensor,
                   targets: torch.Tensor | None, step: int) -> torch.Tensor:
        """Per-image objective to ascend. ``-> (N,)``."""
        labels = y if targets is None else targets
        w = self.pixel_weights(task, logits, labels, step, targets is not None)
        ce = task.pixel_loss(logits, labels)  # 0 and no gradient at ignored pixels
        n_valid = task.valid(labels).flatten(1).sum(1).clamp_min(1)
        obj = (w * ce).flatten(1).sum(1) / n_valid
        return obj if targets is None else -obj

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        task = require_segmentation(task, self.name)
        if y.dim() != 3:
            raise UserError(f"attack '{self.name}' needs label maps (N, H, W), got labels of shape {tuple(y.shape)}")
        targets = self._resolve_targets(model, x, y, targets, task)
        return self.search(Problem(model, x, y, threat, targets, ids, task, seed), range(self.restarts)).x

    # ------------------------------------------------------------------ the engine's hooks
    _start = start_in_ball

    def _last(self, p: Problem) -> int:
        return self.steps  # the last iterate is scored, not moved

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        xg = a["xa"].detach().requires_grad_(t < self.steps)
        with torch.set_grad_enabled(t < self.steps):
            logits = p.model(xg)
        a["xg"] = xg
        return Query(a["xa"].detach(), logits)

    def _judge(self, p: Problem, a: Active, q: Query) -> tuple[torch.Tensor, torch.Tensor, None]:
        score = dense_score(p.task, q.logits.detach(), a.y, a.targets).float()
        return torch.zeros_like(score, dtype=torch.bool), score, None

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        threat, x = p.threat, a.x
        obj = self._objective(p.task, q.logits, a.y, a.targets, t)
        (grad,) = torch.autograd.grad(obj.sum(), a["xg"])
        moved = q.point + self.alpha(threat.eps) * ascent_direction(grad, threat.norm)
        a["xa"] = clip_to_bounds(x + project(moved - x, threat.norm, threat.eps), threat.bounds)


class PixelPGD(SegPGD):
    """Pixel-wise PGD: the mean cross-entropy over each image's valid pixels (no weighting schedule).

    Same engine, settings and defaults as :class:`SegPGD` (which see); what ``pgd`` means under the
    segmentation task.

    Example:
        >>> adv = PixelPGD(steps=20)(model, x, y, ThreatModel("linf", 8 / 255), task=SEGMENTATION)
    """

    name = "pgd"
    weighting = "mean"


class CosPGD(SegPGD):
    """CosPGD (Agnihotri et al. 2024): per-pixel CE weighted by ``cos(softmax(z_p), onehot(y_p))``.

    Same engine, settings and defaults as :class:`SegPGD` (which see for the weighting and its targeted
    form ``1 - cos`` towards the target map).

    Example:
        >>> adv = CosPGD(steps=20)(model, x, y, ThreatModel("linf", 8 / 255), task=SEGMENTATION)
    """

    name = "cospgd"
    weighting = "cospgd"


class DAG(DenseAttack):
    """Dense Adversary Generation (Xie et al. 2017, Algorithm 1): a targeted dense attack.

    Per iteration ``m``: the active pixels ``T_m`` are the pixels to change (valid, labelled other than
    their target) not yet predicted as their target
    (``active="not-target"``, default) or, as Algorithm 1 writes it, those still predicted as their
    original label (``active="original"``); ``r_m = grad_x sum_{p in T_m} (z_{t_p}(x_m, p) - z_{l_p}(x_m, p))``;
    the step is ``r'_m = gamma * r_m / ||r_m||_inf`` and ``x_{m+1} = clip(x_m + r'_m)``. An image stops
    once it has no active pixel; all stop after ``max_iter`` iterations. The paper works on 0..255 pixels
    with ``gamma = 0.5`` and ``max_iter = 200``; on our [0, 1] scale the same step is ``gamma = 0.5 / 255``.

    ``clip=False`` (default): unbounded, run under ``ThreatModel("unbounded", inf)``; the evaluator runs it
    once and reports its perturbation norms (median L2 and Linf per image) beside mIoU and the targeted
    success. ``clip=True``: every iterate is projected into the threat model's ball (linf or l2), so the
    attack fits the eps matrix like the others. The iterate kept per image is the one with the most
    pixels to change reached. Targets: a class ``C`` (default 0: every pixel background, hiding every object)
    or ``target="shift"`` (the paper's permutation of the labels, ``c -> c + 1``); ``targets=`` at call
    time overrides the setting. Measured on unet-tiny / digit-scenes (48 scenes): class 0 is reached on
    ~19% of the digit pixels (median Linf 0.15, L2 1.3); ``shift`` asks to paint the textured background
    as a digit everywhere and reaches ~5% in 200 iterations. Deterministic.

    Example:
        >>> adv = DAG()(model, x, y, ThreatModel("unbounded", math.inf), task=SEGMENTATION)
        >>> adv = DAG(clip=True)(model, x, y, ThreatModel("linf", 0.03), task=SEGMENTATION)
    """

    name = "dag"
    norms = ("linf", "l2", "unbounded")
    SETTINGS = Settings(
        SegPGD.SETTINGS["target"].but(default=0, optional=False, doc="shift (c -> c + 1) or a class (C or class:C)"),
        Float("gamma", 0.5 / 255, "step size: gamma * r / ||r||_inf", 0, open_low=True),
        Int("max_iter", 200, "the maximum number of iterations", 1, MAX_STEPS),
        Bool("clip", False, "project every iterate into the eps-ball (else unbounded)"),
        Choice("active", "not-target", "pixels still pushed: those not yet at their target, or still original",
               ("not-target", "original")),
    )

    def __init__(
        self,
        *,
        target: str | int = 0,
        gamma: float = 0.5 / 255,
        max_iter: int = 200,
        clip: bool = False,
        active: str = "not-target",
    ) -> None:
        DAG.SETTINGS.apply(self, locals())
        if self.target is None:
            raise UserError("dag is a targeted attack: target must be 'shift' or a class index")

    @property
    def unbounded(self) -> bool:
        """Whether this instance runs outside any eps-ball (reported by its norms, not in the eps matrix)."""
        return not self.clip

    def __call__(self, model, x, y, threat, *, targets=None, ids=None, seed=0, task=SEGMENTATION):
        if threat.norm == "unbounded" and self.clip:
            raise UserError("dag:clip=true projects into an eps-ball: give it a linf or l2 threat model")
        if threat.norm != "unbounded" and not self.clip:
            raise UserError("dag is unbounded (run once, its norms reported); use dag:clip=true inside an eps-ball")
        if threat.norm != "unbounded":
            return super().__call__(model, x, y, threat, targets=targets, ids=ids, seed=seed, task=task)
        if x.shape[0] == 0:
            return x.clone()
        x0 = x.detach()
        with eval_mode(model), torch.enable_grad():
            adv = self._run(model, x0, y, threat, targets, torch.arange(x.shape[0]), seed, task)
        return clip_to_bounds(adv.detach(), threat.bounds).to(dtype=x.dtype)

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        task = require_segmentation(task, self.name)
        targets = self._resolve_targets(model, x, y, targets, task)
        valid = task.valid(targets) & task.valid(y)
        # the pixels to change: scored, and the stop test; a pixel labelled as its target adds nothing to
        # the gradient (z_t - z_l = 0) and must not keep the image moving
        counted = valid & (y != targets)
        xa = x.clone()
        best = x.clone()
        best_score = torch.full((x.shape[0],), -1.0, device=x.device)
        bounded = threat.norm != "unbounded"
        safe_t = torch.where(valid, targets, torch.zeros_like(targets))[:, None]
        safe_y = torch.where(valid, y, torch.zeros_like(y))[:, None]
        for it in range(self.max_iter + 1):
            xg = xa.detach().requires_grad_(True)
            logits = model(xg)
            pred = logits.detach().argmax(1)
            hits = ((pred == targets) & counted).flatten(1).sum(1)
            score = hits / counted.flatten(1).sum(1).clamp_min(1)
            take = score > best_score
            best = torch.where(view(take, x), xa.detach(), best)
            best_score = torch.where(take, score, best_score)
            if self.active == "not-target":
                active = counted & (pred != targets)
            else:
                active = counted & (pred == y)
            moving = active.flatten(1).any(1)
            if it == self.max_iter or not bool(moving.any()):  # one sync per iteration: the paper's stop test
                break
            diff = logits.gather(1, safe_t).squeeze(1) - logits.gather(1, safe_y).squeeze(1)
            obj = (diff * active).flatten(1).sum(1)
            (grad,) = torch.autograd.grad(obj.sum(), xg)
            linf = grad.flatten(1).abs().amax(1).clamp_min(1e-12)
            step = self.gamma * grad / view(linf, grad)
            moved = xa + torch.where(view(moving, x), step, torch.zeros_like(step))
            if bounded:
                moved = x + project(moved - x, threat.norm, threat.eps)
            xa = clip_to_bounds(moved, threat.bounds).detach()
        return best


SEGMENTATION_ATTACKS: dict[str, type[Attack]] = {
    "pgd": PixelPGD, "segpgd": SegPGD, "cospgd": CosPGD, "dag": DAG, "seg-uap": SegUAP,
}


def is_unbounded(attack: Attack) -> bool:
    """Whether ``attack`` runs outside the eps grid (DAG without ``clip``)."""
    return bool(getattr(attack, "unbounded", False))


def is_targeted(attack: Attack) -> bool:
    """Whether ``attack`` aims at a target map (its success is measured as target pixels reached)."""
    return isinstance(attack, (SegUAP, FittedUAP)) or getattr(attack, "target", None) is not None


# parse_target, target_map, dense_score, hide_class_target, SegUAP and FittedUAP are re-exported: callers
# import every segmentation attack from here
__all__ = ["CosPGD", "DAG", "DenseAttack", "FittedUAP", "PixelPGD", "SEGMENTATION_ATTACKS", "SegPGD", "SegUAP",
           "dense_score", "hide_class_target", "is_targeted", "is_unbounded", "parse_target", "target_map"]
