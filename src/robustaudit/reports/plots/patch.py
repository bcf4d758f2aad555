"""Figures of the adversarial patch section, as PNG bytes: success against patch size (patch and noise
control with their stored 95% intervals) and the fitted patches themselves."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.plots.canvas import label, png, versus_control_png
from robustaudit.reports.view.physical import patch_block, patch_images


def patch_curve_png(result: ResultMatrix) -> bytes | None:
    """Success vs area share, patch and noise control with their 95% bands; one panel per model × patch."""
    rows = patch_block(result).get("rows", [])
    if not rows:
        return None
    return versus_control_png(rows, (("success", "success_ci", "patch"), ("control_success", "control_ci",
                                                                          "noise control")),
                              x_scale=100.0, xlabel="patch area (% of the image)", ylabel="success %")


def patch_images_png(result: ResultMatrix) -> bytes | None:
    """The fitted patches, one panel each (grayscale or RGB)."""
    items = [p for p in patch_images(result) if p.get("image")]
    if not items:
        return None
    fig = Figure(figsize=(1.8 * len(items), 2.2))
    for k, p in enumerate(items):
        ax = fig.add_subplot(1, len(items), k + 1)
        img = np.asarray(p["image"], dtype=float)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), interpolation="nearest")
        ax.set_title(label(f"{p['model']}\n{p['attack']} {100 * p['eps']:g}%"), fontsize=6)
        ax.axis("off")
    fig.tight_layout()
    return png(fig)
