"""Figures of a segmentation result, as PNG bytes: mIoU against eps (with the stored 95% bootstrap bands)
and panels image | ground truth | clean prediction | adversarial prediction | magnified perturbation, with a
fixed class palette (ignored pixels, 255, in grey)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix, SegExample
from robustaudit.reports.plots.canvas import label, png
from robustaudit.reports.view.segmentation import ENSEMBLE

#: A fixed palette: class k gets _PALETTE[k % 20]; class 0 (background on digit-scenes) is near black.
_PALETTE = np.array([
    (20, 20, 20), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128)], dtype=np.uint8)
_IGNORED = np.array((150, 150, 150), dtype=np.uint8)


def _label(attack: str) -> str:
    return ENSEMBLE if attack == WORST_CASE else attack


def miou_curves_png(result: ResultMatrix) -> bytes:
    """mIoU against eps, one subplot per model, one line per attack (worst case dashed), 95% bands; each
    curve starts at eps 0 with the clean mIoU."""
    models = result.models
    fig = Figure(figsize=(4.2 * max(1, len(models)), 3.2))
    r = result.records
    for i, model in enumerate(models or [""]):
        ax = fig.add_subplot(1, max(1, len(models)), i + 1)
        mine = r[r["model"] == model]
        for attack in dict.fromkeys(mine["attack"]):
            rows = mine[mine["attack"] == attack].sort_values("eps")
            xs = [0.0, *rows["eps"].astype(float)]
            ys = [float(rows["clean_miou"].iloc[0]), *rows["miou"].astype(float)]
            lo = [ys[0], *rows["miou_ci_low"].astype(float)]
            hi = [ys[0], *rows["miou_ci_high"].astype(float)]
            style = "--" if attack == WORST_CASE else "-"
            line, = ax.plot(xs, ys, style, marker="o", ms=3, label=label(_label(attack)))
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(label(model), fontsize=9)
        ax.set_xlabel("eps")
        ax.set_ylabel("mIoU")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def colorize(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` class map -> ``(H, W, 3)`` uint8: the fixed palette, ignored pixels (255) grey."""
    out = _PALETTE[np.clip(mask, 0, None) % len(_PALETTE)]
    out[mask == 255] = _IGNORED
    return out


def panels_png(examples: list[SegExample], limit: int = 6) -> bytes:
    """Rows image | ground truth | clean prediction | adversarial prediction | magnified perturbation."""
    shown = examples[:limit]
    fig = Figure(figsize=(9.0, 1.9 * max(1, len(shown))))
    titles = ("image", "ground truth", "clean prediction", "adversarial prediction", "perturbation (magnified)")
    for i, ex in enumerate(shown):
        delta = ex.adversarial - ex.clean
        peak = float(np.abs(delta).max()) or 1.0
        img = ex.clean.transpose(1, 2, 0)
        pert = (0.5 + 0.5 * delta / peak).transpose(1, 2, 0)
        for j, panel in enumerate((img, colorize(ex.label), colorize(ex.clean_pred), colorize(ex.adv_pred), pert)):
            ax = fig.add_subplot(len(shown), 5, 5 * i + j + 1)
            if panel.ndim == 3 and panel.shape[2] == 1:
                ax.imshow(panel[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(panel, 0, 255) if panel.dtype == np.uint8 else np.clip(panel, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(label(f"{ex.model}\n{ex.attack}\neps {ex.eps:g}"), fontsize=6)
            if j == 4:
                ax.set_xlabel(f"x{1 / peak:.0f} (Linf {peak:.3g})" if peak else "", fontsize=6)
    fig.tight_layout()
    return png(fig)
