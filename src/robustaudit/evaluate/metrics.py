"""Accuracy and its confidence interval."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); ``(0, 1)`` when ``n == 0``.

    Preferred over the normal approximation because it stays inside [0, 1] and behaves at 0% and 100%,
    which robust accuracies often reach.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, no rounding residue
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi
