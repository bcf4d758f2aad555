"""The threat model: which perturbations an adversary may add."""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustaudit.core.errors import UserError

NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0", "patch", "unbounded")


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each input, intersected with the pixel ``bounds``.

    ``eps`` lives in pixel space: inputs are floats in ``bounds`` (``[0, 1]`` by default), and a model
    that expects normalized inputs is wrapped (``models.wrappers.Normalize``) rather than rescaling eps.
    """

    norm: str = "linf"
    eps: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm '{self.norm}'; known: {', '.join(NORMS)}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)):
            raise UserError(f"eps must be a number, got {self.eps!r}")
        # eps = inf is the budget of a minimal-norm attack run once for a whole curve
        if math.isnan(self.eps) or self.eps < 0:
            raise UserError(f"eps must be a number >= 0, got {self.eps!r}")
        lo, hi = self.bounds
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UserError(f"bounds must be finite with low < high, got {self.bounds!r}")
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "bounds", (float(lo), float(hi)))

    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model at another radius."""
        return ThreatModel(self.norm, eps, self.bounds)

    def __str__(self) -> str:
        return f"{self.norm} eps={self.eps:g}"
