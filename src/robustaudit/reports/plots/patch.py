"""Figures of the adversarial patch section, as PNG bytes: success against patch size (patch and noise
control with their stored 95% intervals) and the fitted patches themselves."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.plots.canvas import label, png
from robustaudit.reports.view.physical import patch_block, patch_images


def patch_curve_png(result: ResultMatrix) -> bytes | None:
    """Success vs area share, patch and noise control with their 95% bands; one panel per model × patch."""
    rows = patch_block(result).get("rows", [])
    if not rows:
        return None
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    fig = Figure(figsize=(4.2 * len(groups), 3.2))
    for k, ((model, attack), rs) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        rs = sorted(rs, key=lambda r: r["eps"])
        x = [100 * r["eps"] for r in rs]
        for key, ci, name, color in (("success", "success_ci", "patch", "#c0392b"),
                                     ("control_success", "control_ci", "noise control", "#7f8c8d")):
            ax.plot(x, [100 * r[key] for r in rs], marker="o", color=color, label=name)
            ax.fill_between(x, [100 * r[ci][0] for r in rs], [100 * r[ci][1] for r in rs], color=color, alpha=0.15)
        ax.set_xlabel("patch area (% of the image)")
        ax.set_ylabel("success %")
        ax.set_ylim(0, 100)
        ax.set_title(label(f"{model} / {attack}"), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


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
