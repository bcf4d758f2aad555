"""APGD's loss: the Difference of Logits Ratio (Croce & Hein 2020, Sec. 4, Eq. 6 and 7).

Shift- and scale-invariant in the logits, unlike the margin or the cross-entropy.
"""

from __future__ import annotations

import torch

from robustaudit.core.errors import UserError

_DLR_TINY = 1e-12


def check_logits(logits: torch.Tensor, need: int, what: str) -> None:
    if logits.dim() != 2:
        raise UserError(f"{what} needs class logits of shape (N, K), got shape {tuple(logits.shape)}")
    if logits.shape[1] < need:
        raise UserError(f"{what} needs at least {need} classes, the model has {logits.shape[1]}")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, to maximise (Sec. 4, Eq. 6). ``(N, K), (N,) -> (N,)``.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...`` the sorted
    logits: shift- and scale-invariant in the logits, unlike the margin or cross-entropy.
    """
    check_logits(logits, 3, "the DLR loss")
    top = logits.topk(3, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(true - other) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, to maximise (Sec. 4, Eq. 7). ``(N, K), (N,), (N,) -> (N,)``.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.
    """
    check_logits(logits, 4, "the targeted DLR loss")
    top = logits.topk(4, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)
