"""The shared machinery of the learned attacks (:class:`LearnedAttack`): common settings, the seeded
training loop, ``load=`` and the card of the fitted generator (see :mod:`robustaudit.attacks.learned`).

Training is deterministic on CPU for a seed: weights are initialised from a generator keyed by (seed,
attack, norm, eps), each epoch's shuffle from (seed, attack, norm, eps, epoch), the global RNG is left
untouched, and the target model's parameters never receive a gradient (generator gradients come from
``torch.autograd.grad`` over the generator's own parameters).
"""

from __future__ import annotations

import math
import time
import warnings
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from robustaudit.attacks.base import FitProgress, TrainingData, UniversalAttack
from robustaudit.attacks.learned_fitted import GeneratorAttack, _shape, generator_net, read_generator
from robustaudit.attacks.learned_nets import PerturbationNet, _seeded, bound, downsamplings, state_sha256
from robustaudit.attacks.settings import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_SAMPLES,
    MAX_WIDTH,
    ClassIndex,
    FilePath,
    Float,
    Int,
    Settings,
)
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import clip_to_bounds
from robustaudit.core.rng import stream_key
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel

# ---------------------------------------------------------------------------------------------- training
#: The settings ATN and AdvGAN share (each declares its own order around them).
_COMMON = Settings(
    Int("epochs", 10, "passes over the training samples", 1, MAX_EPOCHS),
    Float("lr", 1e-3, "Adam's learning rate", 0, open_low=True),
    Int("batch", 64, "training samples per step", 1, MAX_BATCH),
    ClassIndex("target", None, "the class to reach (none: untargeted)", optional=True),
    Int("width", 32, "generator channels", 1, MAX_WIDTH),
    Int("samples", None, "fit on a seeded random subset of this many training samples (none: all)", 1,
        MAX_SAMPLES, optional=True),
    FilePath("load", "a saved generator file: no training").but(noun="the path of a saved generator"),
)


class LearnedAttack(UniversalAttack):
    """Shared machinery of ATN and AdvGAN: settings, the training loop, ``load=``, the fitted attack.

    Subclasses implement :meth:`_losses`, the generator objective of one minibatch (and any extra
    network's own step, like AdvGAN's discriminator).
    """

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    randomized = True  # the fit draws its initial weights and shuffles from the seed

    # the objective of one minibatch: subclasses
    @abstractmethod
    def _losses(self, model: nn.Module, g: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(generator loss, per-sample success (B,) bool)`` for one minibatch; ``state`` holds
        the subclass's extra networks and optimizers (from :meth:`_extra`)."""

    def _extra(self, channels: int, down: int, key: int, device: torch.device) -> dict[str, Any]:
        """Extra networks and optimizers for training (AdvGAN's discriminator); none by default."""
        return {}

    def _weights(self) -> dict[str, float]:
        """The loss weights, recorded on the card."""
        return {}

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
    ) -> GeneratorAttack:
        """Train the generator against ``model`` on ``train`` (or read it from ``load``) for ``threat``.

        ``train.load(ids)`` gives ``(B, C, H, W)`` in [0, 1] and labels ``(B,)``. Returns the fitted
        :class:`GeneratorAttack`.
        """
        if threat.norm not in self.norms:
            raise UserError(f"attack '{self.name}' supports norms {', '.join(self.norms)}, not '{threat.norm}'")
        if task.name != "classification":
            raise UserError(f"attack '{self.name}' is for classifiers; it cannot attack a {task.name} model")
        n = len(train)
        if n < 1:
            raise UserError(f"attack '{self.name}': the training data is empty")
        dev = torch.device(device)
        x0, _ = train.load([0])
        if x0.dim() != 4:
            raise UserError(f"attack '{self.name}' needs images (N, C, H, W), got training inputs of shape "
                            f"{tuple(x0.shape)}")
        shape = tuple(int(s) for s in x0.shape[1:])
        with eval_mode(model), torch.no_grad():
            num_classes = int(model(x0.to(dev)).shape[1])
        if self.target is not None and self.target >= num_classes:
            raise UserError(f"attack '{self.name}': target {self.target} is not a class of a model with "
                            f"{num_classes} outputs")
        if self.load is not None:
            fitted = self._loaded(shape, num_classes, threat)
            made_for = fitted.meta.get("model", {}).get("state_sha256")
            if made_for and made_for != state_sha256(model):
                # a legitimate use (transfer), but the numbers then measure transfer, not a white-box fit
                warnings.warn(f"attack '{self.name}': generator '{self.load}' was fit against other weights "
                              f"({fitted.meta['model'].get('class')}); its results here measure transfer",
                              stacklevel=2)
            return fitted
        if min(shape[1:]) < 4:
            raise UserError(f"attack '{self.name}' needs images of at least 4x4 pixels, got {_shape(shape)}")
        return self._train(model, train, threat, shape, num_classes, seed, dev, progress)

    def _train(self, model, train, threat, shape, num_classes, seed, dev, progress) -> GeneratorAttack:
        t0 = time.perf_counter()
        down = downsamplings(shape[1], shape[2])
        key = stream_key(seed, self.name, threat.norm, threat.eps, "init")
        g = _seeded(lambda: PerturbationNet(shape[0], width=self.width, down=down), key).to(dev)
        state = self._extra(shape[0], down, key + 1, dev)
        opt = torch.optim.Adam(g.parameters(), lr=self.lr)
        pool = torch.arange(len(train))
        if self.samples is not None and self.samples < len(train):  # a keyed random subset, in index order
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(
                stream_key(seed, self.name, threat.norm, threat.eps, "subset")))[: self.samples]
            pool = pick.sort().values
        n = len(pool)
        batch = min(self.batch, n)
        if progress is not None:
            progress.start(f"fit {self.name} ({self.epochs} epochs × {n} images: about {self.epochs * n:,} "
                           "forward+backward passes through the model and the generator)", self.epochs * n)
        last = {"success": 0.0, "loss": float("nan")}
        with eval_mode(model):
            for epoch in range(self.epochs):
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(
                    stream_key(seed, self.name, threat.norm, threat.eps, "epoch", epoch)))
                hits, total, loss_sum = 0, 0, 0.0
                for i in range(0, n, batch):
                    x, y = train.load(pool[perm[i:i + batch]].tolist())
                    x, y = x.to(dev), y.to(dev)
                    g.train()
                    loss, ok = self._losses(model, g, x, y, threat, state)
                    grads = torch.autograd.grad(loss, list(g.parameters()))
                    for p, gr in zip(g.parameters(), grads):
                        p.grad = gr
                    opt.step()
                    hits += int(ok.sum())
                    total += len(x)
                    loss_sum += float(loss.detach()) * len(x)
                    if progress is not None:
                        progress.advance(len(x))
                last = {"success": hits / total, "loss": loss_sum / total}
        g.eval()
        meta = {
            "attack": self.name,
            "input_shape": list(shape),
            "num_classes": num_classes,
            "norm": threat.norm,
            "eps": float(threat.eps),
            "bounds": list(threat.bounds),
            "target": self.target,
            "arch": {"class": "PerturbationNet", "width": self.width, "down": down},
            "settings": {k: v for k, v in self.settings().items() if k != "load"},
            "weights": self._weights(),
            "model": {"class": type(_innermost(model)).__name__, "state_sha256": state_sha256(model)},
            "seed": seed,
            "train": {"samples": n, "epochs": self.epochs, "last_epoch_success": round(last["success"], 4),
                      "last_epoch_loss": round(last["loss"], 6)},
            "fit_seconds": round(time.perf_counter() - t0, 3),
            "torch": torch.__version__,
        }
        return GeneratorAttack(generator=g, meta=meta)

    def _loaded(self, shape: tuple[int, ...], num_classes: int, threat: ThreatModel) -> GeneratorAttack:
        what = f"attack '{self.name}'"
        meta, state = read_generator(self.load, what)
        try:
            made_by, made_shape = meta["attack"], tuple(int(s) for s in meta["input_shape"])
            made_classes, made_norm, made_eps = int(meta["num_classes"]), str(meta["norm"]), float(meta["eps"])
            arch = meta["arch"]
            width, down = int(arch["width"]), int(arch["down"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{what}: generator file '{self.load}' has an incomplete card") from None
        if made_by != self.name:
            raise UserError(f"{what}: generator file '{self.load}' was made by '{made_by}', not '{self.name}'")
        if made_shape != shape:
            raise UserError(f"{what}: generator file '{self.load}' was fit for inputs {_shape(made_shape)}, "
                            f"the data has {_shape(shape)}")
        if made_classes != num_classes:
            raise UserError(f"{what}: generator file '{self.load}' was fit against a {made_classes}-class model, "
                            f"this model has {num_classes} outputs")
        if made_norm != threat.norm or not math.isclose(made_eps, threat.eps, rel_tol=1e-9, abs_tol=1e-12):
            raise UserError(f"{what}: generator file '{self.load}' was fit for {made_norm} eps {made_eps:g}, "
                            f"the audit asks for {threat.norm} eps {threat.eps:g}")
        if self.target is not None and meta.get("target") != self.target:
            raise UserError(f"{what}: generator file '{self.load}' was fit for target {meta.get('target')}, "
                            f"not {self.target}")
        g = generator_net(state, shape[0], width, down, what, self.load)
        return GeneratorAttack(generator=g, meta={**meta, "loaded_from": str(self.load)})


def _innermost(model: nn.Module) -> nn.Module:
    """The user's module under robustaudit's wrappers (pass counter, logits extraction), which keep it as ``.model``."""
    while isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def _apply(g: nn.Module, x: torch.Tensor, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x', delta)``: the generator's bounded perturbation added to ``x`` and clipped to the bounds."""
    delta = bound(g(x), threat.norm, threat.eps)
    return clip_to_bounds(x + delta, threat.bounds), delta
