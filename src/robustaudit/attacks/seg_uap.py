"""Universal adversarial perturbations against semantic segmentation (Metzen et al. 2017): ``seg-uap``.

See :mod:`robustaudit.attacks.segmentation` for the rules every segmentation attack keeps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robustaudit.attacks.base import UniversalAttack
from robustaudit.attacks.dense import DenseAttack, require_segmentation
from robustaudit.attacks.settings import MAX_BATCH, MAX_CLASSES, MAX_SAMPLES, MAX_STEPS, Choice, Float, Int, Settings
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import clip_to_bounds, project
from robustaudit.core.rng import stream_key
from robustaudit.core.task import SEGMENTATION, Task
from robustaudit.core.threat import ThreatModel


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
        task = require_segmentation(task, self.name)
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
            progress.start(f"fit {self.name} (eps={threat.eps:g}; {self.iterations} iterations × up to "
                           f"{self.batch_size} images: about {self.iterations * min(self.batch_size, n):,} "
                           "forward+backward passes)", self.iterations)
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
