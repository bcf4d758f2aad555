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


def binomial_tail(b: int, c: int) -> float:
    """One-sided exact p-value ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``; 1.0 when ``b + c == 0``.

    Exact integer arithmetic (``math.comb`` for the first term, the ratio ``C(m, k+1) = C(m, k)(m-k)/(k+1)``
    for the next ones), divided once at the end: no loss of precision for any sample size an audit has.
    Only the shorter tail is summed (``P(X >= b) = 1 - P(X < b)``, still in exact integers), so 10,000
    discordant samples cost milliseconds.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0

    def tail(lo: int, hi: int) -> int:  # sum of C(m, k) for lo <= k <= hi
        term, total = math.comb(m, lo), 0
        for k in range(lo, hi + 1):
            total += term
            term = term * (m - k) // (k + 1)
        return total

    upper = tail(b, m) if b > m - b else (1 << m) - (tail(0, b - 1) if b > 0 else 0)
    return upper / (1 << m)


def paired_p_value(robust_a: set[int], robust_b: set[int]) -> float:
    """Two-sided exact McNemar test of two rows measured on the same samples.

    Only the discordant samples count (robust in one row, broken in the other); under "no difference"
    each is equally likely to fall either way. ``1.0`` when the rows agree on every sample.
    """
    only_a, only_b = len(robust_a - robust_b), len(robust_b - robust_a)
    return min(1.0, 2 * binomial_tail(max(only_a, only_b), min(only_a, only_b)))
