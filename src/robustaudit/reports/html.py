"""The report as one self-contained HTML page: inline CSS, plots as ``data:image/png`` URIs, no
external CSS, JavaScript or fonts, so it can be attached to a CI run or mailed and still render.

This module prepares plain data; ``templates/report.html.j2`` lays it out, with autoescaping on so
that names and messages from the audit can never inject markup.
"""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.learned import html_section as learned_html
from robustaudit.reports.markdown import (
    ATTACK_COST_NOTE,
    MODEL_COST_HEADERS,
    NORM_NOTE,
    STATUS_MARK,
    TITLE,
    attack_cost_headers,
    attack_cost_rows,
    attack_infos,
    config_json,
    has_cost,
    data_items,
    headline,
    model_cost_note,
    model_cost_rows,
    model_infos,
    norm_rows,
    provenance_items,
    threat_items,
)
from robustaudit.reports.physical import html_sections
from robustaudit.reports.terminal import (
    TIE_ALPHA,
    ties,
    checks_tally,
    CI_LABEL,
    DASH,
    DETECTION_HEADERS,
    WORST_CASE_MEANING,
    Cell,
    detection_notes,
    detection_rows,
    format_cell,
    format_eps,
    format_percent,
    format_seconds,
    has_passes,
    matrix_rows,
    norm_label,
    sample_count,
    summary_eps,
    summary_rows,
)

TEMPLATE = "report.html.j2"


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("robustaudit.reports", "templates"),
        # The template is named *.html.j2, which select_autoescape would not recognise: force it on.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def cell_style(accuracy: float) -> str:
    """A background from red (0%) through yellow to green (100%); none when undefined."""
    if not (isinstance(accuracy, float) and math.isfinite(accuracy)):
        return ""
    hue = 120.0 * min(1.0, max(0.0, accuracy))
    return f"background-color: hsl({hue:.0f}, 70%, 86%)"


def doc_href(doc: Any) -> str | None:
    """A check's doc as a link target: web and relative addresses only.

    Autoescaping stops markup, not ``javascript:`` URLs, so other schemes are shown as text.
    """
    if not doc:
        return None
    scheme = urlsplit(str(doc)).scheme.lower()
    return str(doc) if scheme in ("", "http", "https") else None


def _cell(cell: Cell | None) -> dict[str, str]:
    return {
        "text": format_cell(cell),
        "style": cell_style(cell.accuracy) if cell is not None else "",
    }


def _context(result: ResultMatrix, *, images: bool) -> dict[str, Any]:
    grid = result.eps_values
    matrix: list[dict[str, Any]] = []
    for row in matrix_rows(result):
        # One <tbody> per model, so the groups read apart without repeating the name.
        if not matrix or matrix[-1]["model"] != row.model:
            matrix.append({"model": row.model, "rows": []})
        matrix[-1]["rows"].append(
            {
                "attack": row.attack,
                "worst_case": row.worst_case,
                "clean": format_percent(row.clean),
                "cells": [_cell(c) for c in row.cells],
                "seconds": format_seconds(row.seconds),
            }
        )
    eps = summary_eps(result)
    summary = [
        {
            "model": r.model,
            "training": r.training,
            "clean": _cell(r.clean),
            "adversarial": _cell(r.adversarial),
        }
        for r in summary_rows(result, eps)
    ]
    checks = [
        {
            "status": str(c.get("status", DASH)),
            "mark": STATUS_MARK.get(str(c.get("status")), ""),
            "id": str(c.get("id", DASH)),
            "model": str(c.get("model") or DASH),
            "message": str(c.get("message", "")),
            "doc": str(c["doc"]) if c.get("doc") else None,
            "doc_href": doc_href(c.get("doc")),
        }
        for c in result.checks
    ]
    curves = examples = scatter = None
    if images:
        # matplotlib costs about half a second to import; only a page with results pays for it,
        # and `import robustaudit.reports` stays cheap for the CLI and the pytest plugin.
        from robustaudit.reports.plots import accuracy_curves_png, cost_scatter_png, examples_png

        curves = _data_uri(accuracy_curves_png(result)) if not result.records.empty else None
        grid_png = examples_png(result)
        examples = _data_uri(grid_png) if grid_png is not None else None
        scatter_png = cost_scatter_png(result)
        scatter = _data_uri(scatter_png) if scatter_png is not None else None
    model_costs = model_cost_rows(result)
    n = sample_count(result)
    return {
        "title": TITLE,
        "headline": headline(result),
        "threat": threat_items(result),
        "data": data_items(result),
        "models": model_infos(result),
        "attacks": attack_infos(result),
        "norm": norm_label(result),
        "eps_headers": [f"ε={format_eps(e)}" for e in grid],
        "matrix": matrix,
        "ci_label": CI_LABEL,
        "worst_case": WORST_CASE,
        "worst_case_meaning": WORST_CASE_MEANING,
        "n": n,
        "summary_eps": format_eps(eps),
        "summary": summary,
        "ties": [t.sentence() for t in ties(result)],
        "tie_alpha": TIE_ALPHA,
        "norm_rows": norm_rows(result),
        "norm_note": NORM_NOTE,
        "checks": checks,
        "checks_tally": checks_tally(result.checks),
        "provenance": provenance_items(result),
        "config": config_json(result),
        "curves": curves,
        "examples": examples,
        "has_cost": has_cost(result),
        "model_cost_headers": MODEL_COST_HEADERS,
        "model_costs": model_costs,
        "model_cost_note": model_cost_note(result) if model_costs else "",
        "attack_cost_headers": attack_cost_headers(result),
        "attack_costs": attack_cost_rows(result) if has_passes(result) else [],
        "attack_cost_note": ATTACK_COST_NOTE,
        "cost_scatter": scatter,
        "dash": DASH,
        "detection_headers": list(DETECTION_HEADERS),
        "detection_rows": detection_rows(result),
        "detection_notes": detection_notes(result),
        # adversarial patch and physical-world proxies: an HTML fragment escaped by reports.physical
        "physical_html": Markup(html_sections(result, images=images)),
        # learned attack generators (ATN, AdvGAN): an HTML fragment escaped by reports.learned
        "learned_html": Markup(learned_html(result)),
    }


def render_html(result: ResultMatrix, *, images: bool = True) -> str:
    """The full report as a self-contained HTML page.

    Same sections as the Markdown report (threat model, data, models, attacks, matrix,
    clean-vs-adversarial table, cost, checks, provenance), plus the accuracy curves, the grid of
    example images and the robustness-vs-cost scatter inline as base64 PNGs. ``images=False`` leaves
    them out (no matplotlib).
    """
    if result.is_segmentation:  # mIoU and pixel accuracy, curves, per-class IoU, panels
        from robustaudit.reports.segmentation import render_html as render_segmentation

        return render_segmentation(result, images=images)
    return _environment().get_template(TEMPLATE).render(**_context(result, images=images))
