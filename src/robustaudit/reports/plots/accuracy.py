"""Figures of a classification result, as PNG bytes: accuracy-vs-eps curves, example images and robustness
against model cost. The figures come from the view's rows (accuracies and their stored intervals)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from robustaudit.core.task import NO_PREDICTION
from robustaudit.evaluate.result import WORST_CASE, Example, ResultMatrix
from robustaudit.reports.plots.canvas import DPI
from robustaudit.reports.plots.canvas import label as _label
from robustaudit.reports.plots.canvas import nan_array as _nan_array
from robustaudit.reports.plots.canvas import png as _png
from robustaudit.reports.view.cost import cost_rows
from robustaudit.reports.view.matrix import clean_cell, matrix_rows, summary_eps, summary_rows
from robustaudit.reports.view.numbers import format_eps
from robustaudit.reports.view.overview import norm_label

_MAX_COLS = 3
_WRONG = "#c0392b"


def accuracy_curves_png(result: ResultMatrix) -> bytes:
    """Robust accuracy against eps, one subplot per model, as PNG bytes.

    One line per attack and the worst case dashed, each with its 95% Wilson interval as a shaded
    band; every curve starts at eps = 0 with the model's clean accuracy. The y axis spans [0, 1].
    An empty result gives a small figure that says so.
    """
    models = result.models
    if not models:
        fig = Figure(figsize=(4, 1), dpi=DPI)
        fig.text(0.5, 0.5, "no results", ha="center", va="center")
        return _png(fig)

    grid = result.eps_values
    ncols = min(len(models), _MAX_COLS)
    nrows = math.ceil(len(models) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    rows = matrix_rows(result)
    # One colour per attack across all subplots, so a legend entry means the same everywhere.
    palette = [f"C{i}" for i in range(10)]
    colour = {a: palette[i % len(palette)] for i, a in enumerate(result.attacks)}
    # The eps = 0 point is the clean accuracy, unless the grid already holds eps = 0 itself.
    has_zero = any(e == 0 for e in grid)
    xs = np.array(grid if has_zero else [0.0, *grid], dtype=float)

    for ax, model in zip(axes.flat, models, strict=False):  # spare axes are hidden below
        _model_panel(ax, result, model, [r for r in rows if r.model == model], xs, colour, has_zero)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy", fontsize=9)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Robust accuracy vs ε (bands: 95% Wilson interval; {WORST_CASE} dashed)", fontsize=10
    )
    return _png(fig)


def _model_panel(ax, result: ResultMatrix, model: str, rows: list, xs: np.ndarray, colour: dict[str, str],
                 has_zero: bool) -> None:
    """One model's curves: a line per attack (worst case dashed), each with its interval as a band."""
    clean = clean_cell(result, model)
    for row in rows:
        acc = [c.accuracy if c else None for c in row.cells]
        low = [c.low if c else None for c in row.cells]
        high = [c.high if c else None for c in row.cells]
        if not has_zero:
            acc, low, high = [clean.accuracy, *acc], [clean.low, *low], [clean.high, *high]
        style = (
            {"color": "black", "linestyle": "--", "linewidth": 1.6}
            if row.worst_case
            else {"color": colour.get(row.attack, "grey"), "linewidth": 1.2}
        )
        ax.plot(
            xs, _nan_array(acc), marker="o", markersize=3, label=_label(row.attack), **style
        )
        ax.fill_between(
            xs, _nan_array(low), _nan_array(high), color=style["color"], alpha=0.12, linewidth=0
        )
    ax.set_title(_label(model), fontsize=10)
    ax.set_xlabel(f"ε ({_label(norm_label(result))})", fontsize=9)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    if len(xs) <= 8:
        ax.set_xticks(xs, [format_eps(float(x)) if x else "0" for x in xs], fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="best", frameon=False)


def _as_image(chw: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` -> an array ``imshow`` reads, and the colour map (grey for one channel).

    Other channel counts than 1 and 3 show their first channel in grey: there is no honest colour
    mapping for them, and the report should still render.
    """
    img = np.nan_to_num(np.asarray(chw, dtype=float))
    if img.ndim == 2:
        return np.clip(img, 0, 1), "gray"
    if img.ndim == 3 and img.shape[0] == 3:
        return np.clip(np.transpose(img, (1, 2, 0)), 0, 1), None
    return np.clip(img[0] if img.ndim == 3 else img.reshape(-1, img.shape[-1]), 0, 1), "gray"


def _peak(delta: np.ndarray) -> float:
    return float(np.abs(delta).max()) if delta.size else 0.0


def examples_png(result: ResultMatrix, max_rows: int = 8) -> bytes | None:
    """A grid of attacked samples as PNG bytes, or None when the result holds no examples.

    Rows are examples (the first ``max_rows``); columns are the clean image, the adversarial image
    and the perturbation magnified: ``0.5 + k·δ`` with one factor ``k`` for the whole column, chosen
    so the largest ``|δ|`` shown reaches 0 or 1, and stated in the column title. Titles give the
    label and the predictions under each image; a wrong prediction is red.
    """
    examples: list[Example] = list(result.examples[: max(0, max_rows)])
    if not examples:
        return None
    deltas = [
        np.nan_to_num(np.asarray(e.adversarial, dtype=float) - np.asarray(e.clean, dtype=float))
        for e in examples
    ]
    peak = max(_peak(d) for d in deltas)
    factor = 0.5 / peak if peak > 0 else 1.0

    fig = Figure(figsize=(6.0, 2.0 * len(examples)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(examples), 3, squeeze=False)
    headers = ("clean", "adversarial", f"perturbation ×{factor:.3g}")
    for i, (example, delta) in enumerate(zip(examples, deltas, strict=True)):
        ax_clean, ax_adv, ax_delta = axes[i]
        panels = (
            (
                ax_clean,
                example.clean,
                f"label {example.label} · pred {example.clean_pred}",
                example.clean_pred != example.label,
            ),
            (
                ax_adv,
                example.adversarial,
                # a NaN output predicts no class (core.task.predictions)
                f"pred {'NaN' if example.adv_pred == NO_PREDICTION else example.adv_pred}",
                example.adv_pred != example.label,
            ),
            (ax_delta, 0.5 + factor * delta, f"max |δ| {_peak(delta):.3g}", False),
        )
        for col, (ax, image, title, wrong) in enumerate(panels):
            data, cmap = _as_image(image)
            ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(headers[col], fontsize=9)
            # The caption goes below the image, so a red (wrong) prediction never tints the header.
            ax.set_xlabel(_label(title), fontsize=8, color=_WRONG if wrong else "black")
        # The row's identity sits left of the clean image (ticks are off, the label still shows).
        ax_clean.set_ylabel(
            _label(f"{example.model}\n{example.attack} ε={format_eps(float(example.eps))}"),
            fontsize=7,
        )
    return _png(fig)


def cost_scatter_png(result: ResultMatrix) -> bytes | None:
    """Robust accuracy against model cost, as PNG bytes; None when no model has a cost figure.

    Two panels, one point per model: the worst-case robust accuracy at the summary eps (the
    clean-vs-adversarial table's, with its 95% Wilson interval as an error bar) against FLOPs per input,
    and against the median latency per batch. A model missing a figure is left out of that panel; the
    x axis is logarithmic when the models span more than a factor of ten.
    """
    rows = {r.model: r for r in cost_rows(result)}
    eps = summary_eps(result)
    points = [(s, rows[s.model]) for s in summary_rows(result, eps) if s.model in rows and s.adversarial is not None]
    panels = (
        ("FLOPs per input", lambda r: r.flops),
        (f"latency per batch of {_batch_of(rows.values())} (ms)", lambda r: 1000.0 * r.latency),
    )
    if not any(math.isfinite(get(r)) for _, r in points for _, get in panels):
        return None
    fig = Figure(figsize=(8.0, 3.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True, squeeze=False)[0]
    colour = {m: f"C{i % 10}" for i, m in enumerate(result.models)}
    for ax, (label, get) in zip(axes, panels, strict=True):
        xs = []
        for summary, row in points:
            x, cell = get(row), summary.adversarial
            if not (math.isfinite(x) and math.isfinite(cell.accuracy)):
                continue
            xs.append(x)
            err = None
            if math.isfinite(cell.low) and math.isfinite(cell.high):
                err = [[max(0.0, cell.accuracy - cell.low)], [max(0.0, cell.high - cell.accuracy)]]
            ax.errorbar([x], [cell.accuracy], yerr=err, fmt="o", color=colour.get(row.model, "grey"),
                        capsize=3, label=_label(row.model))
            ax.annotate(_label(row.model), (x, cell.accuracy), textcoords="offset points", xytext=(5, 4),
                        fontsize=7)
        if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 2, max(xs) * 3)  # room for the labels right of the points
        elif xs:
            # a cost is a ratio scale: from zero, so 5.2 vs 5.3 ms does not look like a factor of ten
            ax.set_xlim(0.0, 1.35 * max(xs) if max(xs) > 0 else 1.0)
        if get is panels[0][1]:  # FLOPs: 4.9 M rather than an offset "1e6" in the corner
            ax.xaxis.set_major_formatter(EngFormatter(sep=" "))
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylim(0.0, 1.0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel(f"{WORST_CASE} robust accuracy", fontsize=9)
    fig.suptitle(f"Robustness vs cost at ε={format_eps(eps)} ({_label(norm_label(result))}); "
                 "bars: 95% Wilson interval", fontsize=10)
    return _png(fig)


def _batch_of(rows) -> str:
    batches = sorted({r.latency_batch for r in rows if r.latency_batch is not None})
    return ", ".join(str(b) for b in batches) or "?"
