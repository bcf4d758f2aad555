"""Figures for the HTML report, as PNG bytes, drawn from the views' data (matplotlib, never pyplot).

:func:`draw` turns a view's :class:`~robustaudit.reports.view.blocks.Image` kind into PNG bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.plots.accuracy import accuracy_curves_png, cost_scatter_png, examples_png
from robustaudit.reports.plots.patch import patch_curve_png, patch_images_png
from robustaudit.reports.plots.segmentation import miou_curves_png, panels_png
from robustaudit.reports.plots.transferability import transfer_heatmap_png
from robustaudit.reports.plots.uap import uap_curve_png

__all__ = ["accuracy_curves_png", "cost_scatter_png", "draw", "examples_png", "miou_curves_png", "panels_png",
           "patch_curve_png", "patch_images_png", "transfer_heatmap_png", "uap_curve_png"]

_DRAWERS: dict[str, Callable[[ResultMatrix], bytes | None]] = {
    "accuracy_curves": accuracy_curves_png,
    "examples": examples_png,
    "cost_scatter": cost_scatter_png,
    "patch_curve": patch_curve_png,
    "patch_images": patch_images_png,
    "uap_curve": uap_curve_png,
    "miou_curves": miou_curves_png,
    "seg_panels": lambda result: panels_png(result.seg_examples),
    "transfer_heatmap": transfer_heatmap_png,
}


def draw(kind: str, result: ResultMatrix) -> bytes | None:
    """The figure ``kind`` of ``result`` as PNG bytes, or None when there is nothing to draw."""
    return _DRAWERS[kind](result)
