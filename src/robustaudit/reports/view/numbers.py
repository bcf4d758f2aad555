"""The one number formatter of every report: percentages, intervals, eps, counts, sizes and times.

Every figure a report shows goes through here, so the terminal, Markdown and HTML cannot disagree on
how 0.581 or 8/255 or a missing value reads. Pure functions of plain values; no pandas, no torch.
"""

from __future__ import annotations

import math
from typing import Any

#: What a missing or undefined number is shown as.
DASH = "—"
#: What marks a figure that is only an upper bound (an unanswered failing sanity check).
UPPER_BOUND = "≤"


def as_float(value: Any) -> float:
    """``value`` as a float; ``None``, ``pd.NA``, booleans and non-numbers become NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (booleans are not numbers here)."""
    return math.isfinite(as_float(value))


def format_number(value: Any, spec: str) -> str:
    """``format(value, spec)`` for a finite number (``format_number(0.1234, ".3f") -> "0.123"``), else ``—``."""
    x = as_float(value)
    return format(x, spec) if math.isfinite(x) else DASH


def format_percent(share: Any) -> str:
    """A share in [0, 1] as a percentage, one decimal (``0.581 -> "58.1"``); undefined -> ``—``."""
    x = as_float(share)
    return f"{100.0 * x:.1f}" if math.isfinite(x) else DASH


def format_percent_ci(share: Any, low: Any = None, high: Any = None) -> str:
    """``"58.1 [53.0–63.0]"``: a share and its 95% interval in %; the interval is left out when
    undefined, and an undefined share is ``—``."""
    if not is_finite(share):
        return DASH
    text = format_percent(share)
    if is_finite(low) and is_finite(high):
        text += f" [{format_percent(low)}–{format_percent(high)}]"
    return text


def format_upper_bound(text: str, upper: bool = True) -> str:
    """``"89.0 [84.0–93.0]" -> "≤ 89.0 [84.0–93.0]"`` when ``upper``; a dash stays a dash."""
    return f"{UPPER_BOUND} {text}" if upper and text != DASH else text


def format_eps(eps: Any) -> str:
    """An eps as people write it: ``0.1``, ``0.3``, and ``8/255`` where the decimal is unwieldy."""
    x = as_float(eps) + 0.0  # -0.0 + 0.0 is 0.0: "--eps -0" reads "0", not "-0"
    if not math.isfinite(x):
        return DASH
    short = f"{x:.4g}"
    scaled = x * 255.0
    # Pixel-level budgets (k/255) are the convention for images; show them so only when the short
    # decimal would lose digits, so 0.2 (= 51/255) stays 0.2.
    if float(short) != x and x > 0 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return short


def format_seconds(seconds: Any) -> str:
    """Wall time with one decimal; undefined -> ``—``."""
    return format_number(seconds, ".1f")


def format_passes(forward: Any, backward: Any) -> str:
    """Forward / backward passes per sample: ``"48.7/47.7"`` (whole numbers from 100 on); ``—`` when
    unknown."""
    f, b = as_float(forward), as_float(backward)
    if not (math.isfinite(f) and math.isfinite(b)):
        return DASH
    spec = ".0f" if max(f, b) >= 100 else ".1f"
    return f"{f:{spec}}/{b:{spec}}"


def format_count(n: Any) -> str:
    """A large count with an SI prefix and three significant digits: ``2444544 -> "2.44 M"``; ``—``
    when unknown."""
    x = as_float(n)
    if not math.isfinite(x):
        return DASH
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.0f}"


def format_bytes(n: Any) -> str:
    """Bytes in binary units: ``15814656 -> "15.1 MiB"``; ``—`` when unknown."""
    x = as_float(n)
    if not math.isfinite(x):
        return DASH
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def format_latency(seconds: Any) -> str:
    """A latency in milliseconds, three significant digits: ``0.00519 -> "5.19 ms"``; ``—`` when unknown."""
    x = as_float(seconds)
    return f"{1000.0 * x:.3g} ms" if math.isfinite(x) else DASH


def format_text(value: Any) -> str:
    """A provenance value as text; ``None`` and ``""`` read ``—``."""
    return DASH if value is None or value == "" else str(value)
