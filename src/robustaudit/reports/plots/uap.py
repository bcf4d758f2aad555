"""Figure of the universal-perturbation section, as PNG bytes: fooling rate against eps, the perturbation
and the noise control of the same norm with their stored 95% intervals."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.plots.canvas import label, png
from robustaudit.reports.view.uap import uap_block


def uap_curve_png(result: ResultMatrix) -> bytes | None:
    """Fooling % vs eps, UAP and noise control with their 95% bands; one panel per model × perturbation."""
    rows = [r for r in uap_block(result).get("rows", []) if r.get("fooling") is not None]
    if not rows:
        return None
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    fig = Figure(figsize=(4.2 * len(groups), 3.2))
    for k, ((model, attack), rs) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        rs = sorted(rs, key=lambda r: r["eps"])
        x = [r["eps"] for r in rs]
        for key, ci, name, color in (("fooling", "fooling_ci", "universal perturbation", "#c0392b"),
                                     ("control", "control_ci", "noise, same norm", "#7f8c8d")):
            ax.plot(x, [100 * r[key] for r in rs], marker="o", color=color, label=name)
            ax.fill_between(x, [100 * r[ci][0] for r in rs], [100 * r[ci][1] for r in rs], color=color, alpha=0.15)
        ax.set_xlabel(f"ε ({uap_block(result).get('norm', '')})")
        ax.set_ylabel("fooling rate %")
        ax.set_ylim(0, 100)
        ax.set_title(label(f"{model} / {attack}"), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
