"""What every figure shares: PNG rendering without pyplot, and text safe for matplotlib.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by ``FigureCanvasAgg``
directly, never through ``pyplot``: pyplot keeps global figure state and picks a backend for the
whole process, which would reach into a caller's own plotting (a notebook, a GUI).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Resolution of every figure: enough for a screen, small enough to keep reports light.
DPI = 100


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes."""
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no global backend switch
    buf = io.BytesIO()
    # No "Software" stamp: the same result then gives the same bytes across matplotlib versions.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def label(text: object) -> str:
    """Text for matplotlib: a ``$`` in a name would otherwise start mathtext (and may not parse)."""
    return str(text).replace("$", r"\$")


def nan_array(values: Sequence[float | None]) -> np.ndarray:
    """Values as a float array, ``None`` as NaN (a gap in a line)."""
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def versus_control_png(rows: list[dict[str, Any]], series: tuple[tuple[str, str, str], tuple[str, str, str]], *,
                       x_scale: float, xlabel: str, ylabel: str) -> bytes:
    """One panel per (model, attack) of ``rows``: an attack's rate and its same-budget noise control against
    eps, each with its 95% band. ``series``: ``(key, ci key, legend)`` for the attack, then the control;
    ``x_scale`` multiplies eps on the x axis (100: a share shown as %)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    fig = Figure(figsize=(4.2 * len(groups), 3.2))
    for k, ((model, attack), rs) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        rs = sorted(rs, key=lambda r: r["eps"])
        x = [x_scale * r["eps"] for r in rs]
        for (key, ci, name), color in zip(series, ("#c0392b", "#7f8c8d")):
            ax.plot(x, [100 * r[key] for r in rs], marker="o", color=color, label=name)
            ax.fill_between(x, [100 * r[ci][0] for r in rs], [100 * r[ci][1] for r in rs], color=color, alpha=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.set_title(label(f"{model} / {attack}"), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
