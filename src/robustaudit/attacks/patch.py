"""Adversarial patch (Brown et al. 2017, "Adversarial Patch"), trained with expectation over transformation.

A patch is one small image, the same for every input, pasted onto a region of the input; the threat
model is ``ThreatModel("patch", eps)`` with ``eps`` the patch's share of the image area. Inside the
region the patch replaces the pixels entirely (no norm bound there); outside it nothing changes. The
attack itself guarantees the region: at most ``floor(eps * H * W)`` pixels, the pixels whose centres
fall inside the placed (scaled, rotated) square or circle, trimmed from the outside in should
rasterisation ever add one more. ``core.norms.project`` is the identity for ``"patch"`` (there is no
ball to project onto), so the base class's final step only clips to the pixel bounds.

Placement is an affine map of the patch onto the image (``grid_sample``, bilinear, differentiable in
the patch pixels): a centre where the whole shape fits, a rotation angle, a scale, then brightness and
contrast jitter of the patch's pixels (lighting on a printed patch). Every draw is keyed
(``core.rng``): in fitting by (seed, eps, step, training sample id), in evaluation by (seed, sample id)
only, so a sample gets the same placement whatever its batch, at every eps, and for the trained patch
and the random-noise control alike.

Fitting (on the training split, never the audited images) climbs, with Adam on the patch pixels
clamped to the bounds: targeted, the mean log-probability of the target over training images not of
the target class; untargeted, ``mean(-log(1 - p_y))`` (bounded: images already fooled stop pulling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.attacks.base import (
    Attack,
    AttackKind,
    FitProgress,
    TrainingData,
    UniversalAttack,
)
# placement (the affine map, the patch's resolution, the size check) lives in patch_placement; its public
# names are re-exported here so ``robustaudit.attacks.patch`` keeps them
from robustaudit.attacks.patch_placement import (
    _DRAWS,
    MAX_AREA,
    MIN_SIDE,
    SHAPES,
    Placement,
    check_image_size,
    patch_resolution,
)
from robustaudit.attacks.settings import MAX_BATCH, MAX_STEPS, Choice, ClassIndex, FilePath, Float, Int, Settings
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.rng import keyed_uniform, stream_key
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel

__all__ = [
    "FORMAT",
    "MAX_AREA",
    "MIN_SIDE",
    "SHAPES",
    "AdversarialPatch",
    "FittedPatch",
    "Placement",
    "check_image_size",
    "load_patch",
    "patch_resolution",
    "save_png",
]

FORMAT = "robustaudit-patch/1"


class AdversarialPatch(UniversalAttack):
    """Adversarial patch (Brown et al. 2017): one universal patch trained with EOT; eps = area share."""

    name: ClassVar[str] = "patch"
    kind: ClassVar[AttackKind] = AttackKind.UNIVERSAL
    norms: ClassVar[tuple[str, ...]] = ("patch",)
    randomized: ClassVar[bool] = True
    SETTINGS = Settings(
        ClassIndex("target", None, "the class the patch makes the model predict (none: untargeted)", optional=True),
        Choice("shape", None, "the patch's shape (none: square)", SHAPES, optional=True),
        Int("steps", 500, "Adam steps of the fit, one minibatch each", 1, MAX_STEPS),
        Int("batch_size", 64, "training images per step", 1, MAX_BATCH),
        Float("lr", 0.05, "Adam's learning rate on the patch pixels", 0, open_low=True),
        Float("rotation", 20.0, "placements rotate the patch by up to +- this many degrees", 0, 180),
        Float("scale_min", 0.8, "placements scale the patch's side by a factor in [scale_min, 1]", 0, 1,
              open_low=True),
        Float("brightness", 0.1, "+- shift of the patch's pixels, as a share of the pixel range", 0),
        Float("contrast", 0.1, "contrast factor in [1 - contrast, 1 + contrast]", 0, 1, open_high=True),
        FilePath("load", "a saved patch (.pt) or an image file: no fitting"),
    )

    def __init__(
        self,
        *,
        target: int | None = None,
        shape: str | None = None,
        steps: int = 500,
        batch_size: int = 64,
        lr: float = 0.05,
        rotation: float = 20.0,
        scale_min: float = 0.8,
        brightness: float = 0.1,
        contrast: float = 0.1,
        load: str | None = None,
    ) -> None:
        """
        Args:
            target: the class the patch makes the model predict; ``None``: untargeted (any wrong class).
            shape: ``square`` (default) or ``circle``.
            steps: Adam steps of the fit, one minibatch of ``batch_size`` training images each.
            lr: Adam's learning rate on the patch pixels (in units of the pixel range).
            rotation: placements rotate the patch by up to ± this many degrees.
            scale_min: placements scale the patch's side by a factor in ``[scale_min, 1]`` (1: area eps).
            brightness: ± shift of the patch's pixels, as a share of the pixel range.
            contrast: the patch's contrast is multiplied by a factor in ``[1 - contrast, 1 + contrast]``.
            load: a patch saved by a previous run (``.pt``, from ``OUT/artifacts/``) or an image file (PNG,
                JPEG): no fitting; the patch is resampled to each eps's area.
        """
        AdversarialPatch.SETTINGS.apply(self, locals())

    def eot(self) -> dict[str, float]:
        """The transformation ranges of fitting and evaluation."""
        return {"rotation": self.rotation, "scale_min": self.scale_min, "brightness": self.brightness,
                "contrast": self.contrast}

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        model: nn.Module,
        train: TrainingData,
        threat: ThreatModel,
        *,
        seed: int = 0,
        task: Task = CLASSIFICATION,
        device: torch.device | str = "cpu",
        progress: FitProgress | None = None,
    ) -> FittedPatch:
        """Train the patch for area share ``threat.eps`` on ``train`` (or read it from ``load``)."""
        if threat.norm not in self.norms:
            raise UserError(f"attack 'patch' needs --norm patch (eps = the patch's share of the image area), "
                            f"not '{threat.norm}'")
        if len(train) == 0:
            raise UserError("patch: the training data is empty")
        x0, _ = train.load([0])
        c, h, w = x0.shape[1:]
        check_image_size((h, w), threat.eps)
        dev = torch.device(device)
        with eval_mode(model), torch.no_grad():
            classes = model(x0.to(dev)).shape[-1]
        if self.target is not None and self.target >= classes:
            raise UserError(f"patch: target class {self.target} does not exist: the model has {classes} classes "
                            f"(0..{classes - 1})")
        if self.load is not None:
            return self._loaded(c, classes)
        shape = self.shape or "square"
        r = patch_resolution(threat.eps, (h, w), shape)
        lo, hi = threat.bounds
        gen = torch.Generator().manual_seed(stream_key(seed, self.name, "init", threat.eps))
        patch = (lo + (hi - lo) * torch.rand(c, r, r, generator=gen)).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr * (hi - lo))
        order = torch.Generator().manual_seed(stream_key(seed, self.name, "batches", threat.eps))
        n = len(train)
        b = min(self.batch_size, n)
        if progress is not None:  # the cost up front: a fit takes minutes on a CPU
            progress.start(f"fit patch (eps={threat.eps:g}; {self.steps} steps × {b} images: about "
                           f"{self.steps * b:,} forward+backward passes)", self.steps)
        with eval_mode(model), torch.enable_grad():
            for step in range(self.steps):
                idx = torch.randint(0, n, (b,), generator=order).tolist()
                x, y = train.load(idx)
                x, y = x.to(dev), y.to(dev)
                u = keyed_uniform(idx, (_DRAWS,), stream_key(seed, self.name, "fit", threat.eps, step), device=dev)
                place = Placement(u, (h, w), threat.eps, shape=shape, **self.eot())
                logits = model(place.apply(x, patch, threat.bounds))
                loss = self._loss(logits, y)
                if loss is not None:
                    # the gradient of the patch only: the model's parameters' .grad stay untouched
                    (patch.grad,) = torch.autograd.grad(loss, [patch])
                    opt.step()
                with torch.no_grad():
                    patch.clamp_(lo, hi)
                if progress is not None:
                    progress.advance(1)
        return FittedPatch(patch.detach().cpu(), shape=shape, target=self.target, eot=self.eot(),
                           trained_eps=threat.eps, record={"steps": self.steps, "batch_size": self.batch_size,
                                                           "lr": self.lr, "seed": seed, "image_shape": [c, h, w]})

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """What Adam minimises on one minibatch; ``None`` when no image of it counts."""
        logp = F.log_softmax(logits.float(), dim=1)
        if self.target is not None:
            use = y != self.target  # images of the target class teach the patch nothing
            if not bool(use.any()):
                return None
            return -logp[use, self.target].mean()
        p_true = logp.gather(1, y[:, None]).squeeze(1).exp()
        return -torch.log1p(-p_true.clamp(max=1 - 1e-6)).mean()

    def _loaded(self, channels: int, classes: int) -> FittedPatch:
        fitted = load_patch(self.load)
        if fitted.patch.shape[0] != channels:
            raise UserError(f"patch file '{self.load}' has {fitted.patch.shape[0]} channel(s) but the images have "
                            f"{channels}")
        for key, given, stored in (("target", self.target, fitted.target), ("shape", self.shape, fitted.shape)):
            if given is not None and stored is not None and given != stored:
                raise UserError(f"patch file '{self.load}' was made with {key}={stored}, not {given}: leave {key} "
                                "out to use the file's")
        target = fitted.target if fitted.target is not None else self.target
        if target is not None and target >= classes:
            raise UserError(f"patch file '{self.load}' targets class {target}, but the model has {classes} classes")
        return FittedPatch(fitted.patch, shape=fitted.shape or self.shape or "square", target=target, eot=self.eot(),
                           trained_eps=fitted.trained_eps, record={**fitted.record, "loaded_from": str(self.load)})


class FittedPatch(Attack):
    """A trained patch, applied at keyed placements: ``(N, C, H, W) -> (N, C, H, W)``, at most
    ``floor(eps H W)`` pixels changed per image. Made by :meth:`AdversarialPatch.fit` or :func:`load_patch`."""

    name: ClassVar[str] = "patch"
    kind: ClassVar[AttackKind] = AttackKind.FIXED_EPS
    norms: ClassVar[tuple[str, ...]] = ("patch",)
    randomized: ClassVar[bool] = True

    def __init__(self, patch: torch.Tensor, *, shape: str, target: int | None, eot: dict[str, float],
                 trained_eps: float | None, record: dict[str, Any] | None = None) -> None:
        self.patch = patch  # (C, R, R)
        self.shape, self.target, self.eot, self.trained_eps = shape, target, dict(eot), trained_eps
        self.record = dict(record or {})

    def settings(self) -> dict[str, Any]:
        return {"shape": self.shape, "target": self.target, "trained_eps": self.trained_eps, **self.eot}

    def placement(self, ids: torch.Tensor, size: tuple[int, int], eps: float, seed: int,
                  device: torch.device | str = "cpu") -> Placement:
        """The evaluation placements of samples ``ids``: keyed by (seed, sample id) only, so every eps, batch
        and the noise control see the same centre, angle, scale and jitter draws."""
        u = keyed_uniform(ids, (_DRAWS,), stream_key(seed, "patch", "place"), device=device)
        return Placement(u, size, eps, shape=self.shape, **self.eot)

    def apply(self, x: torch.Tensor, ids: torch.Tensor, eps: float, seed: int,
              bounds: tuple[float, float] = (0.0, 1.0), patch: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` with the patch (or ``patch``: ``(C, R, R)`` or ``(N, C, R, R)``) pasted at the keyed placements."""
        place = self.placement(ids, tuple(x.shape[-2:]), eps, seed, device=x.device)
        return place.apply(x, (self.patch if patch is None else patch).to(x.device), bounds)

    def control(self, x: torch.Tensor, ids: torch.Tensor, eps: float, seed: int,
                bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """The control: uniform random noise of the patch's size and shape at the SAME placements (one noise
        patch per sample, keyed by its id). Occlusion alone changes predictions; the patch's effect is the gap."""
        lo, hi = bounds
        noise = lo + (hi - lo) * keyed_uniform(ids, tuple(self.patch.shape), stream_key(seed, "patch", "control"),
                                               device=x.device, dtype=x.dtype)
        return self.apply(x, ids, eps, seed, bounds, patch=noise)

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        check_image_size(tuple(x.shape[-2:]), threat.eps)
        if self.patch.shape[0] != x.shape[1]:
            raise UserError(f"patch has {self.patch.shape[0]} channel(s) but the images have {x.shape[1]}")
        return self.apply(x, ids, threat.eps, seed, threat.bounds)

    def save(self, path: str | Path) -> None:
        """Write the patch to ``path`` (``.pt``: the tensor and how it was made, reusable with
        ``--attack patch:load=PATH``) and a viewable ``.png`` beside it."""
        path = Path(path)
        torch.save({"format": FORMAT, "patch": self.patch.contiguous(), "shape": self.shape, "target": self.target,
                    "trained_eps": self.trained_eps, "eot": self.eot, "record": self.record}, path)
        save_png(self.patch, self.shape, path.with_suffix(".png"))


def save_png(patch: torch.Tensor, shape: str, path: Path, zoom: int = 8) -> None:
    """The patch ``(C, R, R)`` as a PNG (gray + alpha for one channel, RGBA for three), each pixel
    ``zoom``×``zoom`` (nearest), transparent outside a circle."""
    import numpy as np
    from PIL import Image

    c, r, _ = patch.shape
    img = (patch.clamp(0, 1) * 255).round().to(torch.uint8)
    img = img.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2).permute(1, 2, 0).numpy()
    alpha = np.full(img.shape[:2], 255, dtype=np.uint8)
    if shape == "circle":
        k = (np.arange(r * zoom) + 0.5) / (r * zoom) * 2 - 1
        alpha = (((k[:, None] ** 2 + k[None, :] ** 2) <= 1) * 255).astype(np.uint8)
    pixels = np.concatenate([img, alpha[..., None]], axis=2)
    Image.fromarray(pixels, mode="LA" if c == 1 else "RGBA").save(path)


def load_patch(path: str | Path) -> FittedPatch:
    """Read a patch saved by :meth:`FittedPatch.save` (``.pt``) or an image file (PNG/JPEG, square, no target).

    Refuses, with one line, a missing file, a file that is not a patch, and patch values outside [0, 1].
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"patch file '{path}' not found" + (" (it is a directory)" if p.is_dir() else ""))
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        return _load_image(p)
    try:
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        raise UserError(f"patch file '{path}' is not a patch saved by robustaudit (.pt) or an image: "
                        f"{type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("patch"), torch.Tensor):
        raise UserError(f"patch file '{path}' is not a patch saved by robustaudit (expected format {FORMAT})")
    patch = doc["patch"]
    _check_patch_tensor(patch, path)
    shape = doc.get("shape")
    target = doc.get("target")
    if shape not in SHAPES or not (target is None or (isinstance(target, int) and target >= 0)):
        raise UserError(f"patch file '{path}' has a bad shape or target ({shape!r}, {target!r})")
    eps = doc.get("trained_eps")
    record = doc.get("record") if isinstance(doc.get("record"), dict) else {}
    eot = doc.get("eot") if isinstance(doc.get("eot"), dict) else {}
    return FittedPatch(patch.float(), shape=shape, target=target, eot=eot,
                       trained_eps=float(eps) if isinstance(eps, (int, float)) else None, record=record)


def _load_image(p: Path) -> FittedPatch:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            arr = torch.from_numpy(np.asarray(im.convert(mode), dtype=np.float32).copy())
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"patch file '{p}' is not a readable image: {exc}") from None
    patch = (arr[None] if arr.dim() == 2 else arr.permute(2, 0, 1)) / 255.0
    _check_patch_tensor(patch, p)
    return FittedPatch(patch, shape="square", target=None, eot={}, trained_eps=None, record={})


def _check_patch_tensor(patch: torch.Tensor, path: str | Path) -> None:
    if patch.dim() != 3 or patch.shape[0] not in (1, 3) or min(patch.shape[1:]) < 1:
        raise UserError(f"patch file '{path}' holds a tensor of shape {tuple(patch.shape)}; expected (C, R, R) "
                        "with C = 1 or 3")
    if not patch.is_floating_point() or not bool(torch.isfinite(patch).all()) or patch.min() < 0 or patch.max() > 1:
        raise UserError(f"patch file '{path}' holds values outside [0, 1] (or not finite)")
