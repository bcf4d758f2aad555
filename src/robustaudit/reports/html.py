"""The report as one self-contained HTML page: inline CSS, figures as ``data:image/png`` URIs, no
external CSS, JavaScript or fonts, so it can be attached to a CI run or mailed and still render.

The views of :mod:`robustaudit.reports.view` are laid out by ``templates/report.html.j2`` (a
segmentation result by ``templates/segmentation.html.j2``), with autoescaping on so that names and
messages from the audit can never inject markup. Here: the heat-map colours and the figures.
"""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from typing import Any

import jinja2

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view import ReportView, SegmentationView, report_view, segmentation_view
from robustaudit.reports.view.blocks import Image, Section
from robustaudit.reports.view.checkdocs import UPPER_BOUNDS, carried_docs
from robustaudit.reports.view.checks import STATUS_MARK
from robustaudit.reports.view.matrix import WORST_CASE_MEANING, Cell, format_cell
from robustaudit.reports.view.numbers import DASH, format_upper_bound
from robustaudit.reports.view.reliability import UPPER_BOUND_MEANING
from robustaudit.reports.view.verdict import Reliability, bounded_text, reliability_of

TEMPLATE = "report.html.j2"
SEGMENTATION_TEMPLATE = "segmentation.html.j2"
#: Headings of the figures that stand as sections of their own.
IMAGE_TITLES = {"accuracy_curves": "Accuracy curves", "examples": "Examples"}
#: Status glyphs: the checks' marks, and the verdict's (reliable, upper bound, not checked).
MARKS = {**STATUS_MARK, "reliable": STATUS_MARK["pass"], "upper": STATUS_MARK["fail"], "unchecked": "!"}


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("robustaudit.reports", "templates"),
        # The template is named *.html.j2, which select_autoescape would not recognise: force it on.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # the verdict macro's sentence on upper bounds, in both templates
    env.globals.update(upper_bound_meaning=UPPER_BOUND_MEANING, upper_bounds=UPPER_BOUNDS)
    return env


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI the page embeds."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def cell_style(accuracy: float) -> str:
    """A background from red (0%) through yellow to green (100%); none when undefined."""
    if not (isinstance(accuracy, float) and math.isfinite(accuracy)):
        return ""
    hue = 120.0 * min(1.0, max(0.0, accuracy))
    return f"background-color: hsl({hue:.0f}, 70%, 86%)"


def _cell(cell: Cell | None, reliability: Reliability | None = None) -> dict[str, Any]:
    """A coloured accuracy cell; an upper bound is written ``≤ ...`` and never coloured (never a pass)."""
    if reliability is not None and not reliability.reliable:
        return {"text": bounded_text(cell, reliability), "style": "", "upper": True}
    return {"text": format_cell(cell), "style": cell_style(cell.accuracy) if cell is not None else "", "upper": False}


def _images(view: ReportView | SegmentationView) -> list[Image]:
    """Every figure the view places, in page order."""
    if isinstance(view, SegmentationView):
        return [i for i in (view.curves, view.panels) if i is not None]
    sections: list[Section] = [s for s in (view.norms, view.cost, view.detection, view.transfer, view.patch,
                                           view.physical, view.learned, view.uap, view.published) if s is not None]
    found = [i for i in (view.curves, view.examples) if i is not None]
    while sections:
        s = sections.pop(0)
        found += s.images
        sections[:0] = s.subsections
    return found


def _figures(result: ResultMatrix, view: ReportView | SegmentationView) -> dict[str, str]:
    """``kind -> data URI`` of every figure the view places (drawn figures only)."""
    # matplotlib costs about half a second to import; only a page with figures pays for it,
    # and `import robustaudit.reports` stays cheap for the CLI and the pytest plugin.
    from robustaudit.reports.plots import draw

    out = {}
    for image in _images(view):
        png = draw(image.kind, result)
        if png is not None:
            out[image.kind] = data_uri(png)
    return out


def _bound(cell: Cell | None) -> dict[str, Any]:
    """A matrix cell of an upper-bound row: ``≤ ...``, never coloured (the reasons stand in the verdict)."""
    return {"text": format_upper_bound(format_cell(cell)), "style": "", "upper": True}


def _matrix_groups(view: ReportView) -> list[dict[str, Any]]:
    """The matrix rows grouped per model: one ``<tbody>`` each, so the groups read apart."""
    groups: list[dict[str, Any]] = []
    for row in view.matrix.rows:
        if not groups or groups[-1]["model"] != row.model:
            groups.append({"model": row.model, "rows": []})
        groups[-1]["rows"].append({"attack": row.attack, "worst_case": row.worst_case, "clean": row.clean_text,
                                   "cells": [_bound(c) if row.upper_bound else _cell(c) for c in row.cells],
                                   "seconds": row.seconds_text})
    return groups


def render_html(result: ResultMatrix, *, images: bool = True) -> str:
    """The full report as a self-contained HTML page.

    Same sections as the Markdown report (threat model, data, models, attacks, matrix,
    clean-vs-adversarial table, cost, checks, provenance), plus the accuracy curves, the grid of
    example images, the robustness-vs-cost scatter and the patch figures inline as base64 PNGs.
    ``images=False`` leaves them out (no matplotlib). A segmentation result gets mIoU and pixel
    accuracy, the mIoU curves, per-class IoU and the panels.
    """
    if result.is_segmentation:
        seg = segmentation_view(result)
        figures = _figures(result, seg) if images else {}
        return _environment().get_template(SEGMENTATION_TEMPLATE).render(
            view=seg, figures=figures, dash=DASH, marks=MARKS, doc_ids=set())
    view = report_view(result)
    reliability = reliability_of(result)
    docs = list(carried_docs([c.id for c in view.checks], bool(view.reliability.unreliable)).items())
    return _environment().get_template(TEMPLATE).render(
        view=view, figures=_figures(result, view) if images else {}, image_titles=IMAGE_TITLES,
        matrix=_matrix_groups(view), summary=[{"model": r.model, "training": r.training, "clean": _cell(r.clean),
                                               "adversarial": _cell(r.adversarial, reliability.get(r.model))}
                                              for r in view.summary.rows],
        attention=[c for c in view.checks if c.status != "pass"], docs=docs, doc_ids={i for i, _ in docs},
        dash=DASH, marks=MARKS, worst_case=WORST_CASE, worst_case_meaning=WORST_CASE_MEANING,
    )
