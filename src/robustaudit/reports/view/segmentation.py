"""The sections of a segmentation result (``task="segmentation"``): mIoU (with its stored 95% per-image
bootstrap interval) and pixel accuracy per eps, per-class IoU at the summary eps, targeted success and
norms, the unbounded (DAG) rows, and the curves and panels as figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.matrix import FIT_NOTE, Cell, format_cell
from robustaudit.reports.view.numbers import DASH, as_float, format_eps, format_number, format_percent
from robustaudit.reports.view.overview import (attacks_table, config_json, data_items, models_table,
                                                provenance_items, training_label)
from robustaudit.reports.view.verdict import VerdictView, access_text, reliability_of, verdict_row

TITLE = "Robustness audit: segmentation"
#: The ensemble row's label and meaning.
ENSEMBLE = "worst-case (per image)"
ENSEMBLE_MEANING = ("worst-case (per image): for each image the attack that left the lowest pixel accuracy; "
                    "mIoU of those images together")
CI_NOTE = "mIoU [95% interval: per-image bootstrap, 1000 resamples] / pixel accuracy"
SKIPPED_CHECKS = "sanity checks: not run (they are classification-specific)"
PANELS_NOTE = "Palette fixed per class; ignored pixels (255) in grey; the perturbation is scaled to its own peak."


@dataclass(frozen=True)
class SegmentationView:
    """Everything a segmentation report shows, formatted."""

    title: str
    headline: str
    overview: tuple[Section, ...]  # threat model, data (Markdown)
    matrix: Section
    curves: Image | None
    per_class: tuple[Section, ...]
    extra: tuple[Section, ...]  # targeted success, unbounded attacks
    panels: Image | None
    checks: Section
    verdict: VerdictView  # the first screen: per model the worst-case mIoU at the summary eps
    summary: Section  # clean vs adversarial mIoU per model at the summary eps
    # the same setup and provenance blocks as the classification report's
    data: list[tuple[str, str]]
    models: Table
    attacks: Table
    provenance: list[tuple[str, str]]
    config: str | None


def summary_eps(result: ResultMatrix) -> float | None:
    """The eps of the per-class table and the panels: the examples' eps when in the grid, else the median."""
    grid = result.eps_values
    if not grid:
        return None
    ex = result.provenance.get("example_eps")
    if ex is not None and any(math.isclose(ex, e) for e in grid):
        return float(ex)
    return grid[len(grid) // 2]


def _label(attack: str) -> str:
    return ENSEMBLE if attack == WORST_CASE else attack


def _cell(c: Any) -> str:
    return f"{format_percent(c['miou'])} [{format_percent(c['miou_ci_low'])}–{format_percent(c['miou_ci_high'])}] / " \
           f"{format_percent(c['pixel_accuracy'])}"


def matrix_table(result: ResultMatrix) -> Table:
    """Model, attack, clean mIoU / pixel accuracy, then per eps mIoU [lo–hi] / pixel accuracy, seconds."""
    r, grid = result.records, result.eps_values
    rows, strong, fitted = [], [], False
    for model in result.models:
        mine = r[r["model"] == model]
        for attack in [*(a for a in dict.fromkeys(mine["attack"]) if a != WORST_CASE), WORST_CASE]:
            cells = mine[mine["attack"] == attack]
            if cells.empty:
                continue
            first = cells.iloc[0]
            row = [model, _label(attack),
                   f"{format_percent(first['clean_miou'])} / {format_percent(first['clean_pixel_accuracy'])}"]
            for e in grid:
                c = cells[np.isclose(cells["eps"], e)]
                row.append(DASH if c.empty else _cell(c.iloc[0]))
            fit = float(pd.to_numeric(cells["fit_seconds"], errors="coerce").fillna(0.0).sum()) \
                if "fit_seconds" in cells else 0.0
            row.append(f"{float(cells['seconds'].sum()):.1f}" + (f" + {fit:.1f} fit" if fit > 0 else ""))
            fitted = fitted or fit > 0
            strong += [len(rows)] if attack == WORST_CASE else []
            rows.append(tuple(row))
    headers = ("model", "attack", "clean", *(f"eps {format_eps(e)}" for e in grid), "seconds")
    return Table(headers, tuple(rows), title="Segmentation: mIoU % / pixel accuracy % under attack",
                 caption=(CI_NOTE, ENSEMBLE_MEANING, *((FIT_NOTE,) if fitted else ())), strong_rows=tuple(strong))


def class_names(result: ResultMatrix) -> list[str]:
    names = (result.provenance.get("data") or {}).get("class_names")
    k = max((len(v) for v in result.class_iou.values()), default=0)
    if names and len(names) >= k:
        return [str(n) for n in names[:k]]
    return [str(i) for i in range(k)]


def class_iou_section(result: ResultMatrix, model: str, eps: float) -> Section:
    """Per-class IoU (%) of ``model`` clean and under each attack at ``eps``: one row per class."""
    cols = [("clean", result.class_iou.get((model, "clean", 0.0)))]
    cols += [(_label(a), iou) for (m, a, e), iou in result.class_iou.items()
             if m == model and a != "clean" and math.isclose(e, eps)]
    rows = tuple((name, *(format_percent(iou[k]) if iou is not None and k < len(iou) else DASH for _, iou in cols))
                 for k, name in enumerate(class_names(result)))
    title = f"{model}: IoU % per class at eps {format_eps(eps)}"
    return Section(title, table=Table(("class", *(c for c, _ in cols)), rows, text_columns=1, title=title))


def _targeted_section(result: ResultMatrix) -> Section:
    r = result.records
    rows = tuple((c["model"], c["attack"], format_eps(float(c["eps"])), format_percent(c["targeted_success"]) + "%",
                  format_number(c["median_l2"], ".3f"), format_number(c["median_linf"], ".4f"))
                 for _, c in r[r["attack"] != WORST_CASE].iterrows() if not math.isnan(as_float(c["targeted_success"])))
    title = "Targeted success and perturbation norms"
    table = Table(("model", "attack", "eps", "targeted success", "median L2", "median Linf"), rows, title=title)
    return Section(title, table=table,
                   after="Targeted success: the share of the pixels to change (valid, labelled other than their "
                         "target) predicted as their target; a no-op scores 0%.")


def _spread(u: dict[str, Any], norm: str, digits: str) -> str:
    return (f"{format_number(u[f'median_{norm}'], digits)} [{format_number(u[f'q25_{norm}'], digits)}–"
            f"{format_number(u[f'q75_{norm}'], digits)}]")


def _unbounded_section(result: ResultMatrix) -> Section:
    rows = tuple((str(u["model"]), str(u["attack"]), f"{format_percent(u['clean_miou'])} → {format_percent(u['miou'])}",
                  f"{format_percent(u['clean_pixel_accuracy'])} → {format_percent(u['pixel_accuracy'])}",
                  format_percent(u.get("targeted_success")) + "%", _spread(u, "l2", ".3f"), _spread(u, "linf", ".4f"),
                  f"{float(u.get('seconds') or 0):.1f}") for u in result.unbounded)
    headers = ("model", "attack", "mIoU", "pixel acc.", "pixels to change reached", "L2 median [q25–q75]",
               "Linf median [q25–q75]", "seconds")
    table = Table(headers, rows, title="Unbounded attacks (run once, outside the eps grid)")
    return Section("Unbounded attacks (DAG)", table=table,
                   after="Run once per model without an eps-ball; norms are per image, over [0, 1] pixels. "
                         "Pixels to change: valid pixels labelled other than their target (a no-op scores 0%).")


def headline(result: ResultMatrix) -> str:
    """One sentence: the worst mIoU at the largest eps per model, against clean."""
    r = result.records
    parts = []
    for model in result.models:
        rows = r[(r["model"] == model) & (r["attack"] == WORST_CASE)]
        if rows.empty:
            continue
        last = rows.sort_values("eps").iloc[-1]
        parts.append(f"{model}: mIoU {format_percent(last['clean_miou'])}% clean → {format_percent(last['miou'])}% "
                     f"under the per-image worst case at {result.provenance.get('threat', {}).get('norm', 'linf')} "
                     f"eps {format_eps(last['eps'])}")
    return "; ".join(parts) + "." if parts else "no results."


def _overview(result: ResultMatrix) -> tuple[Section, ...]:
    threat = result.provenance.get("threat") or {}
    data = result.provenance.get("data") or {}
    return (
        Section("Threat model", notes=(f"norm: {threat.get('norm', DASH)}",
                                       "eps: " + ", ".join(format_eps(e) for e in threat.get("eps", [])),
                                       "bounds: [0, 1]",
                                       *([f"attacks: {access}"] if (access := access_text(result)) else []))),
        Section("Data", notes=(f"{data.get('name', DASH)}: {data.get('n', DASH)} images, "
                               f"{data.get('num_classes', DASH)} classes, ignore index {data.get('ignore_index', 255)} "
                               "(counts nowhere)",)),
    )


def _worst_cells(result: ResultMatrix, eps: float | None) -> dict[str, Cell | None]:
    """Per model the per-image worst-case mIoU at ``eps`` with its bootstrap interval (None when absent)."""
    r, out = result.records, {}
    for model in result.models:
        rows = r[(r["model"] == model) & (r["attack"] == WORST_CASE)]
        rows = rows[np.isclose(rows["eps"].astype(float), eps)] if eps is not None else rows.iloc[0:0]
        out[model] = (None if rows.empty else
                      Cell(as_float(rows["miou"].iloc[0]), as_float(rows["miou_ci_low"].iloc[0]),
                           as_float(rows["miou_ci_high"].iloc[0])))
    return out


def _verdict_and_summary(result: ResultMatrix, eps: float | None) -> tuple[VerdictView, Section]:
    """The first screen's verdict (never "reliable": no sanity check covers segmentation) and the
    clean-vs-adversarial mIoU table."""
    worst, reliability, r = _worst_cells(result, eps), reliability_of(result), result.records
    rows = tuple(verdict_row(m, c, reliability.get(m), checked=False) for m, c in worst.items())
    eps_text = format_eps(eps) if eps is not None else DASH
    lead = (f"mIoU in % under the {ENSEMBLE} at eps={eps_text}, with its 95% per-image bootstrap interval; "
            f"{SKIPPED_CHECKS}.")
    clean = {m: format_percent(r.loc[r["model"] == m, "clean_miou"].iloc[0]) for m in worst}
    table = Table(("model", "training", "clean mIoU", "adversarial mIoU"),
                  tuple((m, training_label(result, m), clean[m], format_cell(c)) for m, c in worst.items()))
    return VerdictView(lead, rows), Section(f"Clean vs adversarial mIoU (eps={eps_text})", table=table,
                                            paragraph=f"Adversarial: the {ENSEMBLE} over all attacks.")


def segmentation_view(result: ResultMatrix) -> SegmentationView:
    """The segmentation report's sections, formatted."""
    eps = summary_eps(result)
    verdict, summary = _verdict_and_summary(result, eps)
    matrix = Section("mIoU and pixel accuracy under attack", table=matrix_table(result),
                     after=f"{CI_NOTE}. {ENSEMBLE_MEANING}. Each cell is an independent run over every image.")
    return SegmentationView(
        title=TITLE, headline=headline(result), overview=_overview(result), matrix=matrix,
        curves=None if result.records.empty else Image("miou_curves", "mIoU against eps"),
        per_class=tuple(class_iou_section(result, m, eps) for m in result.models) if eps is not None else (),
        extra=tuple(s for s in (_targeted_section(result), _unbounded_section(result)) if s.table),
        panels=Image("seg_panels", "segmentation panels", note=PANELS_NOTE) if result.seg_examples else None,
        checks=Section("Sanity checks", paragraph=SKIPPED_CHECKS + "."),
        verdict=verdict, summary=summary, data=data_items(result), models=models_table(result),
        attacks=attacks_table(result), provenance=provenance_items(result), config=config_json(result),
    )
