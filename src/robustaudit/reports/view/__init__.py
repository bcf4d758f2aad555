"""The view layer of the reports: each section's content (titles, tables of already-formatted cells,
notes, figures named by kind) built once from a :class:`~robustaudit.evaluate.result.ResultMatrix`.

Renderers (terminal, Markdown, HTML) import from here and only lay the views out; nothing here imports
a renderer. Every number goes through :mod:`robustaudit.reports.view.numbers`.
"""

from __future__ import annotations

from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.comparisons import Tie, ties
from robustaudit.reports.view.matrix import Cell, MatrixRow, SummaryRow, format_cell, matrix_rows, summary_eps
from robustaudit.reports.view.numbers import DASH, format_count, format_eps, format_percent
from robustaudit.reports.view.report import ReportView, report_view
from robustaudit.reports.view.segmentation import SegmentationView, segmentation_view

__all__ = [
    "DASH", "Cell", "Image", "MatrixRow", "ReportView", "Section", "SegmentationView", "SummaryRow", "Table", "Tie",
    "format_cell", "format_count", "format_eps", "format_percent", "matrix_rows", "report_view", "segmentation_view",
    "summary_eps", "ties",
]
