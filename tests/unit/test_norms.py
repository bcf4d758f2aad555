"""Norms and projections against independent numpy implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustaudit.core.norms import ascent_direction, clip_to_bounds, lp_norm, project


def _np_project_l1(v: np.ndarray, eps: float) -> np.ndarray:
    """Reference: bisection on the soft-threshold level (no sorting), to cross-check the sort-based code."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        theta = (lo + hi) / 2
        if np.maximum(np.abs(v) - theta, 0).sum() > eps:
            lo = theta
        else:
            hi = theta
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 5, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("norm,ord_", [("linf", np.inf), ("l2", 2), ("l1", 1)])
def test_lp_norm_matches_numpy(batch, norm, ord_):
    ref = np.linalg.norm(batch.numpy().reshape(16, -1), ord=ord_, axis=1)
    np.testing.assert_allclose(lp_norm(batch, norm).numpy(), ref, rtol=1e-12)


def test_l0_norm_counts_nonzeros(batch):
    d = batch.clone()
    d[d.abs() < 0.5] = 0
    ref = (d.numpy().reshape(16, -1) != 0).sum(1)
    np.testing.assert_array_equal(lp_norm(d, "l0").numpy(), ref)


@pytest.mark.parametrize("eps", [0.1, 1.0, 100.0])
def test_linf_projection_is_clipping(batch, eps):
    np.testing.assert_allclose(project(batch, "linf", eps).numpy(), np.clip(batch.numpy(), -eps, eps))


@pytest.mark.parametrize("eps", [0.5, 3.0, 100.0])
def test_l2_projection_matches_numpy(batch, eps):
    v = batch.numpy().reshape(16, -1)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    ref = np.where(n > eps, v * eps / n, v).reshape(batch.shape)
    np.testing.assert_allclose(project(batch, "l2", eps).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("eps", [0.5, 5.0, 1000.0])
def test_l1_projection_matches_bisection_reference(batch, eps):
    out = project(batch, "l1", eps).numpy().reshape(16, -1)
    for row, v in zip(out, batch.numpy().reshape(16, -1)):
        np.testing.assert_allclose(row, _np_project_l1(v, eps), atol=1e-9)
        assert np.abs(row).sum() <= eps + 1e-9


def test_per_sample_eps_tensor(batch):
    eps = torch.linspace(0.1, 2.0, 16, dtype=torch.float64)
    out = project(batch, "l2", eps)
    assert torch.all(lp_norm(out, "l2") <= eps + 1e-12)
    inside = lp_norm(batch, "l2") <= eps
    assert torch.equal(out[inside], batch[inside])


def test_l0_projection_keeps_largest(batch):
    out = project(batch, "l0", 7).reshape(16, -1)
    assert torch.all((out != 0).sum(1) == 7)
    top = batch.reshape(16, -1).abs().topk(7, dim=1).values
    torch.testing.assert_close(out.abs().sort(dim=1, descending=True).values[:, :7], top)


def test_ascent_directions_have_unit_norm(batch):
    assert torch.all(lp_norm(ascent_direction(batch, "linf"), "linf") == 1)
    torch.testing.assert_close(lp_norm(ascent_direction(batch, "l2"), "l2"), torch.ones(16, dtype=torch.float64))
    d1 = ascent_direction(batch, "l1")
    assert torch.all(lp_norm(d1, "l1") == 1)
    # the L1 steepest direction moves the coordinate of largest |gradient|, with its sign
    flat, dflat = batch.reshape(16, -1), d1.reshape(16, -1)
    top = flat.abs().argmax(1)
    assert torch.equal(dflat.abs().argmax(1), top)
    assert torch.equal(dflat.gather(1, top[:, None]), flat.gather(1, top[:, None]).sign())


def test_clip_to_bounds():
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    assert clip_to_bounds(x, (0.0, 1.0)).tolist() == [[0.0, 0.5, 1.0]]
