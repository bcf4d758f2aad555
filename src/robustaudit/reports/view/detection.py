"""The detector section: plain vs adaptive attack per model + detector × attack × eps, from
``provenance['detection']`` (figures and intervals as the detection stage stored them)."""

from __future__ import annotations

import math
from typing import Any

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Section, Table
from robustaudit.reports.view.numbers import DASH, as_float, format_eps, format_number, format_percent, format_percent_ci

#: Headers of the detection table: one line per model × detector × attack × eps.
DETECTION_HEADERS = ("model + detector", "attack", "ε", "clean FPR", "AUROC plain / adaptive",
                     "TPR plain / adaptive", "defended plain", "defended adaptive", "gap")
DETECTION_NOTE = ("defended: an adversarial input counts when rejected or still correctly classified, over all n; "
                  "AUROC/TPR: clean test inputs vs the adversarial ones that fool the classifier; adaptive: PGD on "
                  "classifier margin + detector score together (BPDA through squeezers), success = misclassified "
                  "AND accepted, per sample the worse of it and the plain attack")


def detection_block(result: ResultMatrix) -> dict[str, Any]:
    """``provenance['detection']`` (empty when the audit ran no detector)."""
    block = result.provenance.get("detection")
    return block if isinstance(block, dict) else {}


def _defended(r: dict[str, Any]) -> str:
    return format_percent_ci(r["defended_accuracy"], r["ci_low"], r["ci_high"]) if r else DASH


def detection_rows(result: ResultMatrix) -> list[tuple[str, ...]]:
    """Plain and adaptive side by side (the gap between them is the headline); defended accuracies in %
    with 95% intervals."""
    rows = detection_block(result).get("rows", [])
    plain = {(r["row"], r["attack"], float(r["eps"])): r for r in rows if not r.get("adaptive")}
    adaptive = {(r["row"], r["attack"], float(r["eps"])): r for r in rows if r.get("adaptive")}
    out = []
    for key, p in plain.items():
        a = adaptive.get(key, {})
        gap = as_float(p["defended_accuracy"]) - as_float(a["defended_accuracy"]) if a else math.nan
        out.append((key[0], key[1], format_eps(key[2]),
                    f"{format_percent(p.get('fpr_clean'))}% (target {format_percent(p.get('fpr_target'))}%)",
                    f"{format_number(p.get('auroc'), '.3f')} / {format_number(a.get('auroc'), '.3f')}",
                    f"{format_number(p.get('tpr'), '.3f')} / {format_number(a.get('tpr'), '.3f')}",
                    _defended(p), _defended(a), f"{100 * gap:.1f} pts" if math.isfinite(gap) else DASH))
    return out


def _added_latency(latency: Any) -> str:
    if not isinstance(latency, dict) or latency.get("added_seconds_per_batch") is None:
        return ""
    return (f"; adds {1000 * float(latency['added_seconds_per_batch']):.1f} ms per batch of {latency.get('batch_size')} "
            f"to the bare model's {1000 * float(latency['bare_seconds_per_batch']):.1f} ms")


def detection_notes(result: ResultMatrix) -> list[str]:
    """One line per fitted detector (what it looks at, its threshold), then how the figures are read."""
    block = detection_block(result)
    lines = [f"{d.get('row')}: {d.get('description')}; threshold {float(d.get('threshold')):.4g} at "
             f"{format_percent(d.get('fpr_target'))}% FPR on clean data held out of the fitting data ({d.get('fit_data')})"
             + _added_latency(d.get("latency")) for d in block.get("detectors", []) if isinstance(d, dict)]
    if block.get("rows"):
        lines.append(DETECTION_NOTE)
    if block.get("note"):  # attacks left out of the detector rows (universal ones, say), by name
        lines.append(str(block["note"]))
    return lines


def detection_section(result: ResultMatrix) -> Section | None:
    """``## Detectors``: the notes as bullets, then the table (only the notes when there is no detection row,
    None without detectors)."""
    rows = detection_rows(result)
    notes = tuple(detection_notes(result))
    if not rows:  # no per-sample attack: the section is only the note naming the attacks left out
        return Section("Detectors", notes=notes) if notes else None
    table = Table(DETECTION_HEADERS, tuple(rows), title="Detectors: plain vs adaptive attack", caption=notes)
    return Section("Detectors", notes=notes, table=table)
