"""The transferability heat map, as PNG bytes: rows the model the points were crafted on, columns the model they
are scored on, colour and text the success %, the white-box diagonal outlined."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.plots.canvas import label, png
from robustaudit.reports.view.numbers import format_eps
from robustaudit.reports.view.transferability import transfer_block, transfer_grid


def transfer_heatmap_png(result: ResultMatrix) -> bytes | None:
    """Success % per source × target (NaN, left blank, where no sample counts)."""
    sources, targets, cells = transfer_grid(result)
    if not sources or not targets:
        return None
    rates = np.array([[math.nan if (c := cells.get((s, t))) is None or c.get("rate") is None else 100 * c["rate"]
                       for t in targets] for s in sources], dtype=float)
    side = 0.9 + 0.55 * max(len(sources), len(targets))
    fig = Figure(figsize=(side + 1.6, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(rates), cmap="Reds", vmin=0, vmax=100)
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            if math.isfinite(rates[i, j]):
                ax.text(j, i, f"{rates[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 60 else "black")
            if s == t:  # the white-box figure
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    ax.set_xticks(range(len(targets)), [label(t) for t in targets], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(sources)), [label(s) for s in sources], fontsize=8)
    ax.set_xlabel("scored on")
    ax.set_ylabel("crafted on")
    block = transfer_block(result)
    ax.set_title(label(f"{block.get('attack')} at eps={format_eps(block.get('eps'))}: success %"), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return png(fig)
