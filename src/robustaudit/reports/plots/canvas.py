"""What every figure shares: PNG rendering without pyplot, and text safe for matplotlib.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by ``FigureCanvasAgg``
directly, never through ``pyplot``: pyplot keeps global figure state and picks a backend for the
whole process, which would reach into a caller's own plotting (a notebook, a GUI).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

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
