"""Figure of the universal-perturbation section, as PNG bytes: fooling rate against eps, the perturbation
and the noise control of the same norm with their stored 95% intervals."""

from __future__ import annotations

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.plots.canvas import versus_control_png
from robustaudit.reports.view.uap import uap_block


def uap_curve_png(result: ResultMatrix) -> bytes | None:
    """Fooling % vs eps, UAP and noise control with their 95% bands; one panel per model × perturbation."""
    block = uap_block(result)
    rows = [r for r in block.get("rows", []) if r.get("fooling") is not None]
    if not rows:
        return None
    return versus_control_png(rows, (("fooling", "fooling_ci", "universal perturbation"),
                                     ("control", "control_ci", "noise, same norm")),
                              x_scale=1.0, xlabel=f"ε ({block.get('norm', '')})", ylabel="fooling rate %")
