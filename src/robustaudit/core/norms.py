"""Per-sample Lp norms, projections onto Lp balls and steepest-ascent directions.

All functions take batches of shape ``(N, ...)`` and treat each sample separately; ``eps`` is a float
or a tensor of shape ``(N,)``.
"""

from __future__ import annotations

import torch

_TINY = 1e-12


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _per_sample(eps: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``eps`` as a column of shape ``(N, 1)`` on ``ref``'s device and dtype."""
    e = torch.as_tensor(eps, dtype=ref.dtype, device=ref.device)
    return e.reshape(-1, 1).expand(ref.shape[0], 1) if e.numel() > 1 else e.reshape(1, 1)


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of ``delta``: ``(N, ...) -> (N,)``. ``norm`` in linf, l2, l1, l0."""
    d = _flat(delta)
    if norm == "linf":
        return d.abs().amax(dim=1)
    if norm == "l2":
        return d.norm(p=2, dim=1)
    if norm == "l1":
        return d.abs().sum(dim=1)
    if norm == "l0":
        return (d != 0).sum(dim=1).to(delta.dtype)
    raise ValueError(f"no per-sample norm for '{norm}'")


def project(delta: torch.Tensor, norm: str, eps: float | torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each sample of ``delta`` onto the ``norm`` ball of radius ``eps``.

    ``(N, ...) -> (N, ...)``. L0 keeps the ``eps`` largest-magnitude coordinates. ``patch`` and
    ``unbounded`` are the identity: a patch's budget is a region (at most ``eps * H * W`` pixels, any
    values inside), not a ball, and the patch attack itself guarantees it (``attacks.patch``).
    """
    d = _flat(delta)
    e = _per_sample(eps, d)
    if norm == "linf":
        out = torch.maximum(torch.minimum(d, e), -e)
    elif norm == "l2":
        n = d.norm(p=2, dim=1, keepdim=True)
        out = d * torch.clamp(e / (n + _TINY), max=1.0)
    elif norm == "l1":
        out = _project_l1(d, e)
    elif norm == "l0":
        k = int(torch.as_tensor(eps).max().item())
        if k >= d.shape[1]:
            out = d
        else:
            keep = d.abs().topk(k, dim=1).indices
            out = torch.zeros_like(d).scatter_(1, keep, d.gather(1, keep))
    elif norm in ("patch", "unbounded"):
        out = d
    else:
        raise ValueError(f"no projection for '{norm}'")
    return out.reshape(delta.shape)


def _project_l1(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Projection onto the L1 ball (Duchi et al. 2008, sort-based). ``(N, D), (N|1, 1) -> (N, D)``."""
    a = d.abs()
    inside = a.sum(dim=1, keepdim=True) <= e
    mu = a.sort(dim=1, descending=True).values
    cums = mu.cumsum(dim=1)
    ar = torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype)
    cond = mu - (cums - e) / ar > 0
    rho = cond.to(d.dtype).mul(ar).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = (cums.gather(1, rho) - e) / (rho + 1).to(d.dtype)
    proj = d.sign() * torch.clamp(a - theta, min=0)
    return torch.where(inside, d, proj)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` for a first-order step. ``(N, ...) -> (N, ...)``.

    linf: ``sign(grad)``; l2: ``grad / ||grad||_2``; l1: the sign of the largest-magnitude coordinate(s).
    """
    if norm == "linf":
        return grad.sign()
    g = _flat(grad)
    if norm == "l2":
        out = g / (g.norm(p=2, dim=1, keepdim=True) + _TINY)
    elif norm == "l1":
        top = g.abs().argmax(dim=1, keepdim=True)
        out = torch.zeros_like(g).scatter_(1, top, g.gather(1, top).sign())
    else:
        raise ValueError(f"no ascent direction for '{norm}'")
    return out.reshape(grad.shape)


def clip_to_bounds(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Clamp every pixel into ``bounds``. Shape preserved."""
    return x.clamp(bounds[0], bounds[1])
