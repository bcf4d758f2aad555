"""APGD's step-size schedule (Croce & Hein 2020, Sec. 3.2): the checkpoints and the per-sample rule
that halves the step size at them."""

from __future__ import annotations

import torch


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which APGD may halve its step size (Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``;
    ``w_0 = 0`` is left out. Computed in hundredths so that no float rounding moves a checkpoint
    (``0.41 * 100`` is ``41.000000000000004`` in floats, whose ceiling is 42).

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    out: list[int] = []
    prev, cur = 0, 22  # p_{j-1}, p_j in hundredths
    while cur <= 100:
        w = -(-cur * steps // 100)  # exact ceil(cur / 100 * steps)
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return out


class StepSizeControl:
    """APGD's per-sample step-size rule (Sec. 3.2), all state as ``(N,)`` tensors: no host sync.

    Call :meth:`observe` with the loss of every new iterate and :meth:`checkpoint` at each checkpoint
    ``w_j``. The step size of a sample halves at ``w_j`` when

    1. (condition 1) the loss increased in fewer than ``rho * (w_j - w_{j-1})`` of the steps since
       ``w_{j-1}`` — the paper's strict ``<``, or
    2. (condition 2) the step size was not halved at ``w_{j-1}`` and the best loss ``f_max`` did not
       improve since then.

    A sample whose step halves restarts from its best point ``x_max``, so its next step is measured
    against ``f_max``.

    Args:
        loss0: ``(N,)`` the loss at the starting point ``x^(0)``.
        eta0: the initial step size (APGD: ``2 * eps``).
        rho: the fraction of successful steps below which the step size halves.
    """

    def __init__(self, loss0: torch.Tensor, eta0: float, rho: float) -> None:
        self.rho = float(rho)
        self.eta = torch.full_like(loss0, float(eta0))
        self.prev = loss0.clone()  # the loss of the point the next step starts from
        self.best = loss0.clone()  # f_max
        self.best_last = loss0.clone()  # f_max at the last checkpoint (w_0 = 0: the start)
        # at w_0 no halving has happened, so condition 2 can already hold at w_1
        self.reduced_last = torch.zeros_like(loss0, dtype=torch.bool)
        self.increases = torch.zeros_like(loss0, dtype=torch.int32)

    def observe(self, loss: torch.Tensor) -> torch.Tensor:
        """Count the step that produced ``loss`` ``(N,)``; returns ``(N,)`` bool: a new ``f_max``."""
        self.increases = self.increases + (loss > self.prev).to(torch.int32)
        self.prev = loss
        improved = loss > self.best
        self.best = torch.where(improved, loss, self.best)
        return improved

    def checkpoint(self, window: int) -> torch.Tensor:
        """Apply the rule over the last ``window = w_j - w_{j-1}`` steps; returns ``(N,)`` bool: halved."""
        oscillating = self.increases.to(self.eta.dtype) < self.rho * window  # condition 1
        stalled = ~self.reduced_last & (self.best <= self.best_last)  # condition 2
        halve = oscillating | stalled
        self.eta = torch.where(halve, self.eta / 2, self.eta)
        self.reduced_last = halve
        self.best_last = self.best.clone()
        self.increases = torch.zeros_like(self.increases)
        self.prev = torch.where(halve, self.best, self.prev)
        return halve

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only samples ``rows`` (compaction of the active set)."""
        for name in ("eta", "prev", "best", "best_last", "reduced_last", "increases"):
            setattr(self, name, getattr(self, name)[rows])
