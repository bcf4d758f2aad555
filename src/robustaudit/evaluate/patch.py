"""The adversarial-patch section of an audit: targeted success vs patch size, beside a noise control.

The matrix reads a patch column as robust accuracy at each area share (``--norm patch``, eps = share of
the image area). What a patch paper reports, and what this section adds (``provenance["patch"]``), is
its *success rate*: for a targeted patch, the share of held-out images not already of the target class
(neither labelled nor predicted as it on clean inputs) that the patched image makes the model call the
target; for an untargeted one, the share of clean-correct images it makes wrong. Beside it, the same
rate for a control: uniform random noise of the same size and shape at the SAME placements (occlusion
alone changes predictions; the gap to the control is what the patch's content adds). Both with 95%
Wilson intervals and a paired one-sided exact test (McNemar) of "patch beats control".

Every audited sample is evaluated at every eps of the grid, independently (no survivor cascade), at its
keyed placement (``FittedPatch.placement``): a fresh draw, not one the patch was trained on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from robustaudit.attacks.patch import AdversarialPatch, FittedPatch
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.task import predictions
from robustaudit.data.base import ImageData
from robustaudit.evaluate.metrics import binomial_tail, wilson_interval
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, Progress

#: Decimal places of the patch pixels stored in results.json (for the report's image).
_PIXEL_DECIMALS = 3


def patch_columns(attacks: Sequence[AttackEntry]) -> list[AttackEntry]:
    """The audit's adversarial-patch columns."""
    return [a for a in attacks if isinstance(a.attack, AdversarialPatch)]


def evaluate_patches(
    entries: Sequence[ModelEntry],
    data: ImageData,
    ids: Sequence[int],
    attacks: Sequence[AttackEntry],
    grid: Sequence[float],
    fitted: dict[tuple[str, str, float], Any],
    *,
    seed: int,
    device: torch.device,
    batch_size: int,
    progress: Progress | None = None,
    artifacts: dict[tuple[str, str, float], str] | None = None,
) -> dict[str, Any]:
    """The ``provenance["patch"]`` block: one row per model × patch column × eps.

    ``fitted`` holds the fitted patches by (model, attack, eps) (the caller fits those the runner did not:
    :func:`~robustaudit.evaluate.physical.physical_sections`); a key without one has no row.
    """
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    columns = patch_columns(attacks)
    for entry in entries:
        model = entry.module
        with on_device(model, device), eval_mode(model):
            clean_pred, labels = _predict(model, data, ids, device, batch_size, lambda x, i: x)
            for a in columns:
                for eps in grid:
                    key = (entry.name, a.name, float(eps))
                    patch = fitted.get(key)
                    if patch is None:
                        continue
                    assert isinstance(patch, FittedPatch)
                    if progress is not None:
                        progress.start(f"{entry.name}: {a.name} vs noise control (eps={eps:g})", 2 * len(ids))
                    on_patch, _ = _predict(model, data, ids, device, batch_size,
                                           lambda x, i, p=patch, e=eps: p.apply(x, i, e, seed), progress)
                    on_noise, _ = _predict(model, data, ids, device, batch_size,
                                           lambda x, i, p=patch, e=eps: p.control(x, i, e, seed), progress)
                    rows.append(_row(entry.name, a.name, eps, patch, data, labels, clean_pred, on_patch, on_noise,
                                     (artifacts or {}).get(key)))
    return {"rows": rows, "seconds": round(time.perf_counter() - t0, 3),
            "placement": "keyed by (seed, sample id): the same centre, angle, scale and jitter at every eps and "
                         "for the noise control; fresh draws, not the fit's"}


def _predict(model, data: ImageData, ids: Sequence[int], device, batch_size, transform,
             progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions ``(n,)`` of ``model`` on ``transform(x, ids)`` over ``ids``, and the labels ``(n,)``."""
    preds, labels = [], []
    for start in range(0, len(ids), batch_size):
        batch = list(ids[start : start + batch_size])
        x, y = data.load(batch)
        with torch.no_grad():
            xt = transform(x.to(device), torch.tensor(batch))
            preds.append(predictions(model(xt)).cpu())
        labels.append(y)
        if progress is not None:
            progress.advance(len(batch))
    return torch.cat(preds), torch.cat(labels)


def _row(model: str, attack: str, eps: float, patch: FittedPatch, data: ImageData, y: torch.Tensor,
         clean: torch.Tensor, on_patch: torch.Tensor, on_noise: torch.Tensor, artifact: str | None) -> dict[str, Any]:
    target = patch.target
    if target is not None:
        eligible = (y != target) & (clean != target)
        hit_p, hit_n = on_patch == target, on_noise == target
    else:
        eligible = clean == y
        hit_p, hit_n = on_patch != y, on_noise != y
    n = int(eligible.sum())
    sp, sn = int((hit_p & eligible).sum()), int((hit_n & eligible).sum())
    b, c = int((hit_p & ~hit_n & eligible).sum()), int((~hit_p & hit_n & eligible).sum())
    h, w = data.sample_shape[1:]
    return {
        "model": model, "attack": attack, "eps": float(eps), "target": target, "shape": patch.shape,
        "area_pixels": int(eps * h * w + 1e-9), "n": n,
        "success": sp / n if n else float("nan"), "success_ci": list(wilson_interval(sp, n)),
        "control_success": sn / n if n else float("nan"), "control_ci": list(wilson_interval(sn, n)),
        "gap": (sp - sn) / n if n else float("nan"),
        # paired: patch succeeded where the control failed (b) vs the reverse (c); one-sided exact p
        "discordant": [b, c], "p_value": binomial_tail(b, c),
        "trained_eps": patch.trained_eps, "artifact": artifact,
        "image": [[[round(float(v), _PIXEL_DECIMALS) for v in row] for row in ch] for ch in patch.patch.tolist()],
    }
