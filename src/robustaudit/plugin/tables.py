"""Plain-text and record helpers shared by the gate messages, the compare messages and the summary.

Everything here works on plain JSON-able data (record dicts as in ``ResultMatrix.to_dict()``), so the
xdist controller can render what the workers measured without pandas or torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from robustaudit.reports.view.numbers import format_percent, is_finite  # light: no pandas, no torch

WORST_CASE = "worst-case"  # the same string as robustaudit.evaluate.result.WORST_CASE (not imported: pandas)


def useful_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records worth showing: a model's worst-case rows are dropped when it ran a single attack
    (they repeat that attack's rows)."""
    attacks: dict[str, set[str]] = {}
    for r in records:
        if r.get("attack") != WORST_CASE:
            attacks.setdefault(str(r.get("model")), set()).add(str(r.get("attack")))
    return [
        r for r in records
        if r.get("attack") != WORST_CASE or len(attacks.get(str(r.get("model")), ())) != 1
    ]


def row_key(record: Mapping[str, Any]) -> tuple[str, str, float]:
    """``(model, attack, eps)`` with eps rounded, so 0.1 read back from JSON matches 0.1 computed."""
    return str(record.get("model")), str(record.get("attack")), round(float(record.get("eps", math.nan)), 12)


def pct(value: Any) -> str:
    """``0.756 -> '75.6%'`` (the reports' percent formatter); missing or non-finite values as ``'-'``."""
    return f"{format_percent(value)}%" if is_finite(value) else "-"


def ci(low: Any, high: Any) -> str:
    """``'[63.2–84.0]'`` in percent."""
    return f"[{format_percent(low)}–{format_percent(high)}]" if is_finite(low) and is_finite(high) else "-"


def eps_text(eps: Any) -> str:
    """Eps as people write it: ``0.1``, ``0.0314`` (4 significant digits)."""
    try:
        return f"{float(eps):.4g}"
    except (TypeError, ValueError):
        return str(eps)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, indent: str = "  ",
               right: Sequence[int] = ()) -> str:
    """A fixed-width table (no colours, no box characters): safe in logs, JUnit XML and CI consoles."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def matrix_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Rows ``model, attack, eps, n, clean, robust, 95% CI`` of the given records."""
    return [
        [str(r.get("model")), str(r.get("attack")), eps_text(r.get("eps")), str(r.get("n")),
         pct(r.get("clean_accuracy")), pct(r.get("robust_accuracy")), ci(r.get("ci_low"), r.get("ci_high"))]
        for r in records
    ]


MATRIX_HEADERS: tuple[str, ...] = ("model", "attack", "eps", "n", "clean", "robust", "95% CI")


# --------------------------------------------------------------------------- sanity-check verdicts
#: Verdict statuses, mildest first (robustaudit.checks.verdict.STATUSES, not imported: torch).
CHECK_STATUSES: tuple[str, ...] = ("pass", "warn", "fail")


def checks_tally(checks: Sequence[Mapping[str, Any]]) -> str:
    """``'11 pass, 1 warn, 0 fail'`` over verdict dicts (``ResultMatrix.checks``)."""
    counts = dict.fromkeys(CHECK_STATUSES, 0)
    for check in checks:
        status = str(check.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def attention(checks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The verdicts a reader must see: every one that did not pass, failures first."""
    order = {s: i for i, s in enumerate(reversed(CHECK_STATUSES))}
    return sorted((c for c in checks if c.get("status") != "pass"), key=lambda c: order.get(str(c.get("status")), -1))


def check_line(check: Mapping[str, Any]) -> str:
    """``'fail  logits-output  [Net]  outputs are probabilities ... (docs/checks.md#logits-output)'``."""
    model = check.get("model")
    doc = check.get("doc")
    return (f"{check.get('status')}  {check.get('id')}  [{model if model is not None else 'audit'}]  "
            f"{check.get('message')}" + (f" ({doc})" if doc else ""))
