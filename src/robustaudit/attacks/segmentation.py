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

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.attacks.base import Attack, UniversalAttack
from robustaudit.attacks.gradient import random_start
from robustaudit.attacks.settings import (
    MAX_BATCH,
    MAX_CLASSES,
    MAX_RESTARTS,
    MAX_SAMPLES,
    MAX_STEPS,
    Bool,
    Choice,
    Float,
    Int,
    Setting,
    Settings,
)
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.rng import stream_key
from robustaudit.core.task import SEGMENTATION, SegmentationTask, Task
from robustaudit.core.threat import ThreatModel


def _seg(task: Task, name: str) -> SegmentationTask:
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


def _view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *[1] * (like.dim() - 1))


def dense_score(task: SegmentationTask, logits: torch.Tensor, y: torch.Tensor,
                targets: torch.Tensor | None) -> torch.Tensor:
    """Per-image attack score, higher is better for the attacker: ``1 - pixel accuracy`` (untargeted) or
    the share of valid target pixels reached (targeted). ``(N, K, H, W) -> (N,)``."""
    if targets is None:
        return 1.0 - task.pixel_accuracy(logits, y)
    valid = task.valid(targets)
    hits = ((logits.argmax(1) == targets) & valid).flatten(1).sum(1)
    return hits / valid.flatten(1).sum(1).clamp_min(1)


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


class SegPGD(DenseAttack):
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
    SETTINGS = Settings(
        Int("steps", 10, "iterations per restart", 1, MAX_STEPS),
        Int("restarts", 1, "random restarts", 1, MAX_RESTARTS),
        Float("step_size", None, "absolute step (default: rel_step_size * eps)", 0, open_low=True, optional=True),
        Float("rel_step_size", None, "step as a fraction of eps (default 2.5 / steps)", 0, open_low=True,
              optional=True),
        Bool("random_start", True, "start uniformly inside the ball rather than at x"),
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
        task = _seg(task, self.name)
        if y.dim() != 3:
            raise UserError(f"attack '{self.name}' needs label maps (N, H, W), got labels of shape {tuple(y.shape)}")
        targets = self._resolve_targets(model, x, y, targets, task)
        alpha = self.alpha(threat.eps)
        best = x.clone()
        best_score = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=torch.float32)
        for restart in range(self.restarts):
            if self.random_start:
                xa = random_start(x, ids, threat, self.stream(seed, threat, restart))
            else:
                xa = x.clone()
            for step in range(self.steps + 1):
                xg = xa.detach().requires_grad_(step < self.steps)
                with torch.set_grad_enabled(step < self.steps):
                    logits = model(xg)
                score = dense_score(task, logits.detach(), y, targets).float()
                take = score > best_score
                best = torch.where(_view(take, x), xa.detach(), best)
                best_score = torch.where(take, score, best_score)
                if step == self.steps:  # the last iterate is scored, not moved
                    break
                obj = self._objective(task, logits, y, targets, step)
                (grad,) = torch.autograd.grad(obj.sum(), xg)
                moved = xa.detach() + alpha * ascent_direction(grad, threat.norm)
                xa = clip_to_bounds(x + project(moved - x, threat.norm, threat.eps), threat.bounds)
        return best


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

    Per iteration ``m``: the active pixels ``T_m`` are the valid pixels not yet predicted as their target
    (``active="not-target"``, default) or, as Algorithm 1 writes it, those still predicted as their
    original label (``active="original"``); ``r_m = grad_x sum_{p in T_m} (z_{t_p}(x_m, p) - z_{l_p}(x_m, p))``;
    the step is ``r'_m = gamma * r_m / ||r_m||_inf`` and ``x_{m+1} = clip(x_m + r'_m)``. An image stops
    once it has no active pixel; all stop after ``max_iter`` iterations. The paper works on 0..255 pixels
    with ``gamma = 0.5`` and ``max_iter = 200``; on our [0, 1] scale the same step is ``gamma = 0.5 / 255``.

    ``clip=False`` (default): unbounded, run under ``ThreatModel("unbounded", inf)``; the evaluator runs it
    once and reports its perturbation norms (median L2 and Linf per image) beside mIoU and the targeted
    success. ``clip=True``: every iterate is projected into the threat model's ball (linf or l2), so the
    attack fits the eps matrix like the others. The iterate kept per image is the one with the most
    target pixels reached. Targets: a class ``C`` (default 0: every pixel background, hiding every object)
    or ``target="shift"`` (the paper's permutation of the labels, ``c -> c + 1``); ``targets=`` at call
    time overrides the setting. Measured on unet-tiny / digit-scenes: class 0 is reached on ~91% of the
    target pixels (median Linf 0.086, L2 0.75); ``shift`` asks to paint the textured background as a digit
    everywhere and reaches ~5% in 200 iterations. Deterministic.

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
        task = _seg(task, self.name)
        targets = self._resolve_targets(model, x, y, targets, task)
        valid = task.valid(targets) & task.valid(y)
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
            hits = ((pred == targets) & valid).flatten(1).sum(1)
            score = hits / valid.flatten(1).sum(1).clamp_min(1)
            take = score > best_score
            best = torch.where(_view(take, x), xa.detach(), best)
            best_score = torch.where(take, score, best_score)
            if self.active == "not-target":
                active = valid & (pred != targets)
            else:
                active = valid & (pred == y)
            moving = active.flatten(1).any(1)
            if it == self.max_iter or not bool(moving.any()):  # one sync per iteration: the paper's stop test
                break
            diff = logits.gather(1, safe_t).squeeze(1) - logits.gather(1, safe_y).squeeze(1)
            obj = (diff * active).flatten(1).sum(1)
            (grad,) = torch.autograd.grad(obj.sum(), xg)
            linf = grad.flatten(1).abs().amax(1).clamp_min(1e-12)
            step = self.gamma * grad / _view(linf, grad)
            moved = xa + torch.where(_view(moving, x), step, torch.zeros_like(step))
            if bounded:
                moved = x + project(moved - x, threat.norm, threat.eps)
            xa = clip_to_bounds(moved, threat.bounds).detach()
        return best


def hide_class_target(pred: torch.Tensor, hide: int) -> torch.Tensor:
    """Metzen et al.'s dynamic target: pixels predicted as ``hide`` take the label of the nearest pixel of
    another class (Euclidean distance transform); the others keep the prediction. ``(N, H, W) -> (N, H, W)``.

    An image predicted as ``hide`` everywhere keeps its prediction (no other class to borrow from).
    """
    from scipy.ndimage import distance_transform_edt

    out = pred.clone()
    p = pred.cpu().numpy()
    for i in range(p.shape[0]):
        mask = p[i] == hide
        if not mask.any() or mask.all():
            continue
        # indices of the nearest zero of the input: the nearest pixel NOT of the hidden class
        _, (rows, cols) = distance_transform_edt(mask, return_indices=True)
        out[i] = torch.from_numpy(p[i][rows, cols]).to(pred.device)
    return out


class SegUAP(UniversalAttack):
    """Universal adversarial perturbations against semantic segmentation (Metzen et al. 2017).

    One perturbation ``xi`` (``(C, H, W)``, Linf) is fitted on the TRAIN split against one model at one eps
    by the paper's iteration ``xi <- clip_eps(xi - alpha * sign(D(xi)))``, ``D(xi) = (1/m) sum_k grad_x
    J_w(f(x_k + xi), t_k)`` over a minibatch of ``m`` training images (the gradients of the minibatch are
    accumulated before the one signed step, then projected to the eps-ball). ``J_w`` is the paper's
    weighted loss: ``(1/|D|) [w sum_{p in I_o} CE_p + (1 - w) sum_{p not in I_o} CE_p]``, with ``I_o`` the
    pixels whose target differs from the clean prediction (the hidden class, dynamic) and ``w = omega``;
    the static target uses the plain mean (``I_o`` undefined).

    Targets (``target``):

    * ``"dynamic"`` (default): hide class ``hide`` (default 1, the digit 0 on digit-scenes): its predicted
      pixels get the label of the nearest pixel of another predicted class, the rest keep the clean
      prediction (:func:`hide_class_target`);
    * ``"static"``: one fixed target segmentation for every image: the clean prediction of training image
      ``target_image``.

    ``fit`` uses the first ``fit_n`` training images in a keyed permutation, ``iterations`` signed steps of
    ``alpha = rel_step_size * eps`` over minibatches of ``batch_size`` taken in turn; the fitted attack
    (:class:`FittedUAP`) adds ``xi`` to any input. Deterministic given the seed. Linf only, as the paper.

    Example:
        >>> fitted = SegUAP(hide=1).fit(model, train, ThreatModel("linf", 0.05), task=SEGMENTATION)
        >>> adv = fitted(model, x, y, ThreatModel("linf", 0.05), task=SEGMENTATION)
    """

    name = "seg-uap"
    norms = ("linf",)
    task_name: ClassVar[str] = "segmentation"
    SETTINGS = Settings(
        Choice("target", "dynamic", "dynamic (hide class `hide`) or static (one fixed target map)",
               ("dynamic", "static")),
        Int("hide", 1, "the class the dynamic target hides", 0, MAX_CLASSES),
        Int("target_image", 0, "the training image whose clean prediction is the static target", 0, MAX_SAMPLES),
        Int("iterations", 60, "signed steps of the fit", 1, MAX_STEPS),
        Float("rel_step_size", 0.1, "step as a fraction of eps", 0, open_low=True),
        Float("omega", 0.8, "weight of the hidden-class pixels in the loss", 0, 1, open_low=True),
        Int("fit_n", 256, "training images the fit uses", 1, MAX_SAMPLES),
        Int("batch_size", 32, "training images per step", 1, MAX_BATCH),
    )

    def __init__(
        self,
        *,
        target: str = "dynamic",
        hide: int = 1,
        target_image: int = 0,
        iterations: int = 60,
        rel_step_size: float = 0.1,
        omega: float = 0.8,
        fit_n: int = 256,
        batch_size: int = 32,
    ) -> None:
        SegUAP.SETTINGS.apply(self, locals())

    def fit(self, model: nn.Module, train: Any, threat: ThreatModel, *, seed: int = 0, task: Task = SEGMENTATION,
            device: torch.device | str = "cpu", progress: Any = None) -> FittedUAP:
        """Fit ``xi`` on ``train`` (an ``ImageData`` with masks ``(B, H, W)``); return the applier."""
        task = _seg(task, self.name)
        if threat.norm not in self.norms:
            raise UserError(f"attack '{self.name}' supports norms linf, not '{threat.norm}'")
        n = min(self.fit_n, len(train))
        if n == 0:
            raise UserError("seg-uap: the training data is empty")
        dev = torch.device(device)
        # a keyed permutation of the training set: which images the fit sees depends on the seed only
        g = torch.Generator().manual_seed(stream_key(seed, self.name, "fit") & 0x7FFFFFFF)
        order = torch.randperm(len(train), generator=g)[:n].tolist()
        if self.target_image >= len(train):
            raise UserError(f"seg-uap: target_image {self.target_image} is beyond the {len(train)} training images")
        static = None
        with eval_mode(model), torch.no_grad():
            if self.target == "static":
                x_t, _ = train.load([self.target_image])
                static = model(x_t.to(dev)).argmax(1)[0]
        shape = tuple(train.load(order[:1])[0].shape[1:])
        xi = torch.zeros(shape, device=dev)
        if threat.eps == 0:
            return FittedUAP(xi, self, static)
        alpha = self.rel_step_size * threat.eps
        batches = [order[i: i + self.batch_size] for i in range(0, n, self.batch_size)]
        cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if progress is not None:
            progress.start(f"fitting {self.name} at eps {threat.eps:g}", self.iterations)
        with eval_mode(model), torch.enable_grad():
            for it in range(self.iterations):
                b = it % len(batches)
                if b not in cache:  # inputs, their targets and the hidden-pixel mask, computed once
                    xb, yb = train.load(batches[b])
                    xb = xb.to(dev)
                    with torch.no_grad():
                        pred = model(xb).argmax(1)
                    tb = static.expand_as(pred).clone() if static is not None else hide_class_target(pred, self.hide)
                    # labels ignored in the training masks stay out of the loss
                    tb = torch.where(yb.to(dev) != task.ignore_index, tb, torch.full_like(tb, task.ignore_index))
                    cache[b] = (xb, tb, (tb != pred))
                xb, tb, changed = cache[b]
                xg = clip_to_bounds(xb + xi, threat.bounds).detach().requires_grad_(True)
                ce = task.pixel_loss(model(xg), tb)
                if static is None:
                    w = torch.where(changed, self.omega, 1 - self.omega)
                else:
                    w = torch.ones_like(ce)
                loss = (w * ce).flatten(1).sum(1) / task.valid(tb).flatten(1).sum(1).clamp_min(1)
                (grad,) = torch.autograd.grad(loss.mean(), xg)
                d = grad.sum(0)  # the minibatch's gradients accumulated into one direction
                xi = (xi - alpha * d.sign()).clamp(-threat.eps, threat.eps)
                if progress is not None:
                    progress.advance(1)
        return FittedUAP(xi.detach(), self, static)


class FittedUAP(DenseAttack):
    """A fitted universal perturbation: ``adv = clip(x + xi)`` for every input (``xi``: ``(C, H, W)``).

    ``targets_for_prediction(pred)`` gives the target map of a batch from its clean prediction (the
    static map, or the hidden-class map) for the targeted success rate.
    """

    name = "seg-uap"
    norms = ("linf",)

    def __init__(self, xi: torch.Tensor, source: SegUAP, static: torch.Tensor | None) -> None:
        self.xi = xi
        self.source = source
        self.static = static

    def settings(self) -> dict[str, Any]:
        return self.source.settings()

    def targets_for_prediction(self, pred: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` clean prediction -> ``(N, H, W)`` target map for the targeted success rate.

        Static: the fixed map everywhere. Dynamic: the relabelled hidden-class pixels only, the others set
        to 255 (ignored), so the rate is Metzen et al.'s share of the hidden class removed, not swamped by
        the pixels whose target is their own clean prediction.
        """
        if self.static is not None:
            return self.static.to(pred.device).expand_as(pred).clone()
        target = hide_class_target(pred, self.source.hide)
        return torch.where(target != pred, target, torch.full_like(target, 255))

    def save(self, path: str) -> None:
        """Write the perturbation (``(C, H, W)`` float32) to ``path`` (a ``.pt`` tensor file)."""
        torch.save(self.xi.detach().cpu(), path)

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        xi = project(self.xi.to(x)[None], threat.norm, threat.eps)
        return clip_to_bounds(x + xi, threat.bounds)


#: The segmentation attacks' names -> classes (the registry's segmentation table points here).
SEGMENTATION_ATTACKS: dict[str, type[Attack]] = {
    "pgd": PixelPGD, "segpgd": SegPGD, "cospgd": CosPGD, "dag": DAG, "seg-uap": SegUAP,
}


def is_unbounded(attack: Attack) -> bool:
    """Whether ``attack`` runs outside the eps grid (DAG without ``clip``)."""
    return bool(getattr(attack, "unbounded", False))


def is_targeted(attack: Attack) -> bool:
    """Whether ``attack`` aims at a target map (its success is measured as target pixels reached)."""
    return isinstance(attack, (SegUAP, FittedUAP)) or getattr(attack, "target", None) is not None
