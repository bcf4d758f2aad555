"""Universal adversarial perturbations for classifiers (Moosavi-Dezfooli et al. 2017): ``uap``.

One perturbation ``v`` (``(C, H, W)``, in the Linf or L2 ball of radius eps) is fitted on the TRAIN split
against one model at one eps and then added to every input: ``adv = clip(x + v)``. Two fits (``method``):

* ``deepfool`` — the paper's Algorithm 1: pass over the fit images in a keyed order; for each image whose
  prediction ``x + v`` has not changed yet, DeepFool's minimal perturbation ``r`` from ``clip(x + v)`` away
  from the clean prediction (:class:`~robustaudit.attacks.minimal.DeepFool`), then ``v <- P(v + r)``, the
  projection onto the eps-ball. One image at a time, as the paper: ``v`` changes after every image.
* ``sgd`` (default) — the stochastic-gradient fit of Shafahi et al. 2020 ("Universal adversarial
  training", Alg. 1): minibatches of fit images, ascent on the mean of ``min(CE(f(clip(x + v)), k(x)), beta)``
  (the clipped loss: images already far across the boundary stop pulling), a signed step for Linf and a
  normalised gradient step for L2, then the projection. Batched, so it runs at the speed of PGD on a GPU.

Both stop early once the share of fit images whose prediction ``x + v`` changes (the paper's fooling rate,
``1 - delta`` its target) reaches ``fooling_target``, measured after each pass; the pass with the highest
fit fooling rate is kept. "Prediction changed" is against the model's clean prediction ``k(x)``, not the
label, as in the paper. Deterministic given the seed (a keyed order of a keyed subset of ``fit_n`` images).

A fitted perturbation is saved as ``{"format": "robustaudit-uap/1", "v", "norm", "eps", "record"}`` and read
back with ``load=PATH`` (no fitting; refused in one line when the shape, the norm or the size disagree).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.attacks.base import Attack, AttackKind, FitProgress, TrainingData, UniversalAttack
from robustaudit.attacks.settings import (MAX_BATCH, MAX_EPOCHS, MAX_SAMPLES, MAX_STEPS, Choice, FilePath, Float, Int,
                                          Settings)
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import ascent_direction, clip_to_bounds, lp_norm, project
from robustaudit.core.rng import keyed_normal, keyed_uniform, stream_key
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel

__all__ = ["FORMAT", "UAP", "UniversalPerturbation", "load_uap", "noise_control", "save_png"]

FORMAT = "robustaudit-uap/1"
#: Relative slack of the norm checks (float32 round-off of a projected tensor).
_SLACK = 1e-5


class UAP(UniversalAttack):
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017): one perturbation v per model and eps,
    fitted on the train split, added to every input. Linf or L2; the fits are described in the module doc."""

    name: ClassVar[str] = "uap"
    kind: ClassVar[AttackKind] = AttackKind.UNIVERSAL
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    SETTINGS = Settings(
        Choice("method", "sgd", "sgd (Shafahi et al. 2020, minibatch ascent on the clipped loss) or deepfool "
               "(Moosavi-Dezfooli et al. 2017, DeepFool per image)", ("sgd", "deepfool")),
        Int("fit_n", 1000, "training images the fit uses (a keyed random subset)", 1, MAX_SAMPLES),
        Int("passes", 5, "passes over the fit images at most", 1, MAX_EPOCHS),
        Float("fooling_target", 0.8, "stop after the pass whose fit fooling rate reaches this (1 - delta)", 0, 1,
              open_low=True),
        Int("batch_size", 32, "sgd: fit images per step", 1, MAX_BATCH),
        Float("rel_step_size", 0.1, "sgd: step as a fraction of eps", 0, open_low=True),
        Float("beta", 9.0, "sgd: the per-image cross-entropy is clipped at beta", 0, open_low=True),
        Int("deepfool_steps", 10, "deepfool: linearisations per image", 1, MAX_STEPS),
        Float("overshoot", 0.02, "deepfool: relative overshoot past the boundary", 0),
        FilePath("load", "a saved perturbation (.pt, from OUT/artifacts): no fitting"),
    )

    def __init__(
        self,
        *,
        method: str = "sgd",
        fit_n: int = 1000,
        passes: int = 5,
        fooling_target: float = 0.8,
        batch_size: int = 32,
        rel_step_size: float = 0.1,
        beta: float = 9.0,
        deepfool_steps: int = 10,
        overshoot: float = 0.02,
        load: str | None = None,
    ) -> None:
        UAP.SETTINGS.apply(self, locals())

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
    ) -> UniversalPerturbation:
        """Fit ``v`` for ``threat`` on ``train`` (or read it from ``load``); return the applier."""
        if threat.norm not in self.norms:
            raise UserError(f"attack '{self.name}' supports norms linf, l2, not '{threat.norm}'")
        if task.name != "classification":
            raise UserError("attack 'uap' attacks classifiers; for segmentation use seg-uap")
        if len(train) == 0:
            raise UserError("uap: the training data is empty")
        dev = torch.device(device)
        shape = tuple(train.load([0])[0].shape[1:])
        if self.load is not None:
            return self._loaded(shape, threat)
        n = min(self.fit_n, len(train))
        g = torch.Generator().manual_seed(stream_key(seed, self.name, "subset") & 0x7FFFFFFF)
        chosen = torch.randperm(len(train), generator=g)[:n].tolist()
        x, _ = train.load(chosen)
        x = x.to(dev)
        v = torch.zeros(shape, device=dev, dtype=x.dtype)
        record: dict[str, Any] = {"method": self.method, "fit_n": n, "seed": seed, "fit_fooling": []}
        if threat.eps == 0:
            return UniversalPerturbation(v.cpu(), threat.norm, threat.eps, record)
        with eval_mode(model):
            k = _predict(model, x, self.batch_size)
            if progress is not None:
                progress.start(f"fit uap ({self.method}, eps={threat.eps:g}; {self.passes} passes over {n} images, "
                               "a search per image the perturbation does not yet fool)", self.passes * n)
            best, best_rate = v.clone(), -1.0
            for p in range(self.passes):
                order = torch.randperm(n, generator=torch.Generator().manual_seed(
                    stream_key(seed, self.name, "order", threat.eps, p) & 0x7FFFFFFF)).tolist()
                with torch.enable_grad():
                    step = self._sgd_pass if self.method == "sgd" else self._deepfool_pass
                    v = step(model, x, k, v, order, threat, progress)
                rate = float((_predict(model, clip_to_bounds(x + v, threat.bounds), self.batch_size) != k)
                             .float().mean())
                record["fit_fooling"].append(round(rate, 6))
                if rate > best_rate:
                    best, best_rate = v.clone(), rate
                if rate >= self.fooling_target:
                    break
        record["passes_run"] = len(record["fit_fooling"])
        return UniversalPerturbation(best.detach().cpu(), threat.norm, threat.eps, record)

    def _sgd_pass(self, model: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: list[int],
                  threat: ThreatModel, progress: FitProgress | None) -> torch.Tensor:
        """One pass of Shafahi et al.'s minibatch ascent; ``x (n, C, H, W)``, ``k (n,)`` clean predictions."""
        alpha = self.rel_step_size * threat.eps
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            vg = v.detach().requires_grad_(True)
            logits = model(clip_to_bounds(x[idx] + vg, threat.bounds))
            loss = F.cross_entropy(logits.float(), k[idx], reduction="none").clamp(max=self.beta).mean()
            (grad,) = torch.autograd.grad(loss, vg)  # the model's parameters' .grad stay untouched
            v = project((v + alpha * ascent_direction(grad[None], threat.norm)), threat.norm, threat.eps)[0]
            v = v.detach()
            if progress is not None:
                progress.advance(len(idx))
        return v

    def _deepfool_pass(self, model: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: list[int],
                       threat: ThreatModel, progress: FitProgress | None) -> torch.Tensor:
        """One pass of the paper's Algorithm 1: per image still not fooled, DeepFool from ``clip(x + v)``."""
        from robustaudit.attacks.minimal import DeepFool

        deepfool = DeepFool(steps=self.deepfool_steps, overshoot=self.overshoot)
        unbounded = ThreatModel(threat.norm, math.inf, threat.bounds)
        for i in order:
            xv = clip_to_bounds(x[i:i + 1] + v, threat.bounds)
            # DeepFool returns xv itself when k(x + v) already differs from k(x): r = 0, v unchanged
            r = deepfool(model, xv, k[i:i + 1], unbounded) - xv
            v = project(v[None] + r, threat.norm, threat.eps)[0].detach()
            if progress is not None:
                progress.advance(1)
        return v

    def _loaded(self, shape: tuple[int, ...], threat: ThreatModel) -> UniversalPerturbation:
        fitted = load_uap(self.load)
        if tuple(fitted.v.shape) != shape:
            raise UserError(f"uap file '{self.load}' holds a perturbation of shape {tuple(fitted.v.shape)}, but the "
                            f"images have shape {shape}")
        if fitted.norm != threat.norm:
            raise UserError(f"uap file '{self.load}' is an {fitted.norm} perturbation; the audit's norm is "
                            f"{threat.norm}")
        return UniversalPerturbation(fitted.v, fitted.norm, fitted.eps,
                                     {**fitted.record, "loaded_from": str(self.load)})


def _predict(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``model``'s predictions ``(n,)`` on ``x (n, C, H, W)``, in chunks of ``batch``."""
    with torch.no_grad():
        return torch.cat([model(x[s:s + batch]).argmax(1) for s in range(0, len(x), batch)])


class UniversalPerturbation(Attack):
    """A fitted universal perturbation ``v`` (``(C, H, W)``): ``adv = clip(x + P_eps(v))`` for every input.

    ``eps`` is the radius it was fitted (or saved) at; applied at a smaller eps it is projected onto that
    ball (still a point of the ball, not the perturbation a fit at that eps would give: the section says so).
    """

    name: ClassVar[str] = "uap"
    kind: ClassVar[AttackKind] = AttackKind.FIXED_EPS
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    def __init__(self, v: torch.Tensor, norm: str, eps: float, record: dict[str, Any] | None = None) -> None:
        self.v, self.norm, self.eps = v, norm, float(eps)
        self.record = dict(record or {})

    def settings(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, **{k: v for k, v in self.record.items() if k != "fit_fooling"}}

    def delta(self, threat: ThreatModel, like: torch.Tensor) -> torch.Tensor:
        """``v`` on ``like``'s device and dtype, projected onto ``threat``'s ball: ``(1, C, H, W)``."""
        if threat.norm != self.norm:
            raise UserError(f"the universal perturbation was fitted for {self.norm}, not {threat.norm}")
        if tuple(self.v.shape) != tuple(like.shape[1:]):
            raise UserError(f"the universal perturbation has shape {tuple(self.v.shape)}, the images "
                            f"{tuple(like.shape[1:])}")
        return project(self.v.to(like)[None], threat.norm, threat.eps)

    def apply(self, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """``clip(x + P_eps(v))``: ``(N, C, H, W) -> (N, C, H, W)``."""
        return clip_to_bounds(x + self.delta(threat, x), threat.bounds)

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        return self.apply(x, threat)

    def save(self, path: str | Path) -> None:
        """Write ``v`` and how it was made to ``path`` (reusable with ``--attack uap:load=PATH``) and a viewable
        ``.png`` beside it (grey is zero, the largest coordinate black or white)."""
        path = Path(path)
        torch.save({"format": FORMAT, "v": self.v.detach().cpu().contiguous(), "norm": self.norm, "eps": self.eps,
                    "record": self.record}, path)
        save_png(self.v, path.with_suffix(".png"))


def save_png(v: torch.Tensor, path: Path, zoom: int = 8) -> None:
    """``v`` ``(C, H, W)`` (C = 1 or 3) magnified to ``[0, 1]`` around grey, each pixel ``zoom``×``zoom``, as a PNG."""
    import numpy as np
    from PIL import Image

    scale = float(v.abs().max()) or 1.0
    img = ((0.5 + 0.5 * v.detach().cpu().float() / scale).clamp(0, 1) * 255).round().to(torch.uint8)
    img = img.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2).permute(1, 2, 0).numpy()
    if img.shape[2] == 1:
        Image.fromarray(np.ascontiguousarray(img[..., 0]), mode="L").save(path)
    elif img.shape[2] == 3:
        Image.fromarray(np.ascontiguousarray(img), mode="RGB").save(path)


def noise_control(ids: torch.Tensor, shape: tuple[int, ...], norm: str, eps: float, seed: int,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The random-noise control of the same norm, one draw per sample keyed by (seed, sample id):
    Linf, a uniformly random sign times eps per coordinate; L2, a Gaussian direction scaled to eps.
    ``(N,) -> (N, *shape)``; the same direction at every eps (paired along the eps grid)."""
    key = stream_key(seed, "uap", "control", norm)
    if norm == "linf":
        return eps * (2 * (keyed_uniform(ids, shape, key, device=device, dtype=dtype) < 0.5).to(dtype) - 1)
    d = keyed_normal(ids, shape, key, device=device, dtype=dtype)
    return eps * d / lp_norm(d, "l2").clamp_min(1e-12).view(-1, *([1] * len(shape)))


def load_uap(path: str | Path) -> UniversalPerturbation:
    """Read a perturbation saved by :meth:`UniversalPerturbation.save`.

    Refuses, with one line, a missing file, a file that is not one, a tensor that is not ``(C, H, W)`` finite
    floats, an unknown norm, and a perturbation larger than the eps it claims.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"uap file '{path}' not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        raise UserError(f"uap file '{path}' is not a perturbation saved by robustaudit: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("v"), torch.Tensor):
        raise UserError(f"uap file '{path}' is not a perturbation saved by robustaudit (expected format {FORMAT})")
    v, norm, eps = doc["v"], doc.get("norm"), doc.get("eps")
    if v.dim() != 3 or min(v.shape) < 1 or not v.is_floating_point() or not bool(torch.isfinite(v).all()):
        raise UserError(f"uap file '{path}' holds a tensor of shape {tuple(v.shape)} ({v.dtype}); expected finite "
                        "floats of shape (C, H, W)")
    if norm not in UAP.norms or isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 \
            or not math.isfinite(eps):
        raise UserError(f"uap file '{path}' has a bad norm or eps ({norm!r}, {eps!r})")
    size = float(lp_norm(v[None].double(), norm)[0])
    if size > eps * (1 + _SLACK) + 1e-12:
        raise UserError(f"uap file '{path}' holds a perturbation of {norm} norm {size:.6g}, larger than its eps "
                        f"{eps:g}")
    record = doc.get("record") if isinstance(doc.get("record"), dict) else {}
    return UniversalPerturbation(v.float(), norm, float(eps), record)
