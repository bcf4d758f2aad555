"""The detector contract: a classifier plus a reject decision, thresholded on clean validation data.

The detectors themselves are in :mod:`robustaudit.defenses.detectors`; fitting, caching and the
registry in :mod:`robustaudit.defenses.detection`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode

DEFAULT_FPR = 0.05


class Penultimate:
    """Captures the input of the model's last ``nn.Linear`` (the penultimate features) by a forward
    hook, flattened to ``(N, D)``, with its autograd graph (the adaptive attack differentiates it)."""

    def __init__(self, model: nn.Module) -> None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError("this detector reads the penultimate features, the input of the model's last "
                            "nn.Linear, and the model has no nn.Linear")
        self.layer = linears[-1]
        self.value: torch.Tensor | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W) -> (logits (N, K), features (N, D))``."""
        handle = self.layer.register_forward_hook(lambda mod, inp, out: setattr(self, "value", inp[0]))
        try:
            logits = model(x)
        finally:
            handle.remove()
        if self.value is None:  # the layer exists but the forward never ran it
            raise UserError("the model's last nn.Linear is not called by its forward; cannot read its features")
        feats, self.value = self.value.flatten(1), None
        return logits, feats


class Detector(ABC):
    """A classifier plus a reject decision. Fit with :meth:`fit` (or :func:`fit_detector`), then
    ``score(x)`` ``(N, C, H, W) -> (N,)`` and ``reject(x)`` ``-> (N,)`` bool.

    ``model`` is the classifier (logits ``(N, K)``); a detector never changes its weights or mode.
    """

    name: ClassVar[str] = "detector"
    #: One line for reports: what the detector looks at (formatted with the fitted detector's settings).
    summary: ClassVar[str] = ""
    #: One line for ``robustaudit list defenses``.
    headline: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.threshold: float = math.inf
        self.fpr: float = DEFAULT_FPR
        #: spread of the clean validation scores: the adaptive attack's unit for ``score - threshold``
        self.scale: float = 1.0

    # ----------------------------------------------------------------- what subclasses write
    @abstractmethod
    def _score(self, x: torch.Tensor, logits: torch.Tensor | None, differentiable: bool) -> torch.Tensor:
        """Scores ``(N,)`` of inputs ``x`` ``(N, C, H, W)``, in eval mode."""

    def _fit(self, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, seed: int,
             batch_size: int) -> None:
        """Fit the detector's own parameters on ``x (N, C, H, W)``, ``y (N,)`` (default: nothing)."""

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted parameters as tensors (what the cache stores)."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""

    def settings(self) -> dict[str, Any]:
        """Settings that change the fit (part of the cache key)."""
        return {}

    def describe(self) -> str:
        """The report's one line about the fitted detector."""
        return type(self).summary.format(**self.settings())

    # ----------------------------------------------------------------- shared
    def score(self, x: torch.Tensor, *, differentiable: bool = False, batch_size: int = 512,
              logits: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(N,)`` for ``x`` ``(N, C, H, W)``: higher means more likely adversarial.

        ``differentiable=True`` keeps the graph to ``x`` (non-differentiable steps through BPDA) and runs
        in one batch, reusing ``logits`` ``(N, K)`` of ``x`` when given (a detector that needs them then
        skips a forward pass); otherwise scores are computed without grad, ``batch_size`` at a time.
        """
        with eval_mode(self.model):
            if differentiable:
                return self._score(x, logits, True)
            with torch.no_grad():
                return torch.cat([self._score(x[i:i + batch_size], None, False)
                                  for i in range(0, len(x), batch_size)]) if len(x) else x.new_zeros(0)

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N,)`` bool: True where the input is refused."""
        return self.score(x) > self.threshold

    def calibrate(self, clean_scores: torch.Tensor, fpr: float) -> None:
        """Set the threshold from clean validation scores ``(M,)`` so that at most ``fpr`` of them are
        above it: the ``ceil((1 - fpr) M)``-th smallest score (rejection is ``score > threshold``)."""
        s = torch.sort(clean_scores.detach().double().cpu()).values
        if not len(s):
            raise UserError("no clean validation samples to set the detector's threshold on")
        k = min(len(s), max(1, math.ceil((1.0 - fpr) * len(s))))
        self.threshold = float(s[k - 1])
        self.fpr = float(fpr)
        # robust spread (IQR / 1.35 ~ one standard deviation for a normal), never 0
        q = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype))
        self.scale = float(max((q[1] - q[0]).item() / 1.35, 1e-6 * max(1.0, abs(self.threshold)), 1e-12))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({inner})"
