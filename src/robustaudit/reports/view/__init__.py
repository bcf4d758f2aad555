"""The view layer of the reports: each section's content (titles, tables of already-formatted cells,
notes, figures named by kind) built once from a :class:`~robustaudit.evaluate.result.ResultMatrix`.

Renderers (terminal, Markdown, HTML) import from here and only lay the views out; nothing here imports
a renderer. Every number goes through :mod:`robustaudit.reports.view.numbers`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public names and the modules that define them, imported on first use (PEP 562): the number
#: formatter (``view.numbers``) stays importable without pandas, for the pytest plugin's controller.
_NAMES = {
    "Image": "blocks", "Section": "blocks", "Table": "blocks",
    "Tie": "comparisons", "ties": "comparisons",
    "Cell": "matrix", "MatrixRow": "matrix", "SummaryRow": "matrix", "format_cell": "matrix",
    "matrix_rows": "matrix", "summary_eps": "matrix",
    "DASH": "numbers", "format_count": "numbers", "format_eps": "numbers", "format_percent": "numbers",
    "ReportView": "report", "report_view": "report",
    "ModelReliability": "reliability", "ReliabilityView": "reliability", "reliability_view": "reliability",
    "SegmentationView": "segmentation", "segmentation_view": "segmentation",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
