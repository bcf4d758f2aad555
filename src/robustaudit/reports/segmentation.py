"""Renderings of a segmentation :class:`~robustaudit.evaluate.result.ResultMatrix` (``task="segmentation"``).

The terminal, Markdown and HTML renderers hand a segmentation result to this module: the matrix shows
mIoU (with its 95% per-image bootstrap interval) and pixel accuracy per eps; then the per-class IoU at the
summary eps, the targeted success rates and perturbation norms, the unbounded DAG rows, and (HTML) the
mIoU-vs-eps curves and panels image | ground truth | clean prediction | adversarial prediction |
magnified perturbation with a fixed class palette (ignored pixels, 255, in grey).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix, SegExample

DASH = "—"
#: The ensemble row's label and meaning.
ENSEMBLE = "worst-case (per image)"
ENSEMBLE_MEANING = ("worst-case (per image): for each image the attack that left the lowest pixel accuracy; "
                    "mIoU of those images together")
CI_NOTE = "mIoU [95% interval: per-image bootstrap, 1000 resamples] / pixel accuracy"
SKIPPED_CHECKS = "sanity checks: not run (they are classification-specific)"

#: A fixed palette: class k gets _PALETTE[k % 20]; class 0 (background on digit-scenes) is near black.
_PALETTE = np.array([
    (20, 20, 20), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128)], dtype=np.uint8)
_IGNORED = np.array((150, 150, 150), dtype=np.uint8)


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return DASH
    return DASH if math.isnan(f) else f"{100 * f:.1f}"


def _eps(e: float) -> str:
    return f"{e:g}"


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


def matrix_rows(result: ResultMatrix, *, intervals: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: model, attack, clean mIoU / pixel accuracy, then per eps mIoU [lo–hi] / pixel acc."""
    r = result.records
    grid = result.eps_values
    headers = ["model", "attack", "clean"] + [f"eps {_eps(e)}" for e in grid] + ["seconds"]
    rows = []
    for model in result.models:
        mine = r[r["model"] == model]
        for attack in [*(a for a in dict.fromkeys(mine["attack"]) if a != WORST_CASE), WORST_CASE]:
            cells = mine[mine["attack"] == attack]
            if cells.empty:
                continue
            first = cells.iloc[0]
            row = [model, _label(attack), f"{_pct(first['clean_miou'])} / {_pct(first['clean_pixel_accuracy'])}"]
            for e in grid:
                c = cells[np.isclose(cells["eps"], e)]
                if c.empty:
                    row.append(DASH)
                    continue
                c = c.iloc[0]
                ci = f" [{_pct(c['miou_ci_low'])}–{_pct(c['miou_ci_high'])}]" if intervals else ""
                row.append(f"{_pct(c['miou'])}{ci} / {_pct(c['pixel_accuracy'])}")
            row.append(f"{float(cells['seconds'].sum()):.1f}")
            rows.append(row)
    return headers, rows


def class_names(result: ResultMatrix) -> list[str]:
    data = result.provenance.get("data") or {}
    names = data.get("class_names")
    k = max((len(v) for v in result.class_iou.values()), default=0)
    if names and len(names) >= k:
        return [str(n) for n in names[:k]]
    return [str(i) for i in range(k)]


def class_iou_table(result: ResultMatrix, model: str, eps: float) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU (%) of ``model`` clean and under each attack at ``eps``: one row per class."""
    cols = [("clean", result.class_iou.get((model, "clean", 0.0)))]
    for (m, a, e), iou in result.class_iou.items():
        if m == model and a != "clean" and math.isclose(e, eps):
            cols.append((_label(a), iou))
    headers = ["class"] + [c for c, _ in cols]
    rows = []
    for k, name in enumerate(class_names(result)):
        rows.append([name] + [_pct(iou[k]) if iou is not None and k < len(iou) else DASH for _, iou in cols])
    return headers, rows


def extra_rows(result: ResultMatrix) -> tuple[list[str], list[list[str]]]:
    """Targeted success and perturbation norms per model × attack × eps (targeted attacks, or any with norms)."""
    r = result.records
    headers = ["model", "attack", "eps", "targeted success", "median L2", "median Linf"]
    rows = []
    for _, c in r[r["attack"] != WORST_CASE].iterrows():
        if math.isnan(float(c["targeted_success"])):
            continue
        rows.append([c["model"], c["attack"], _eps(float(c["eps"])), _pct(c["targeted_success"]) + "%",
                     f"{float(c['median_l2']):.3f}", f"{float(c['median_linf']):.4f}"])
    return headers, rows


def unbounded_rows(result: ResultMatrix) -> tuple[list[str], list[list[str]]]:
    """The attacks run once outside the eps grid (DAG): mIoU, pixel accuracy, targeted success and norms."""
    headers = ["model", "attack", "mIoU", "pixel acc.", "target pixels reached", "L2 median [q25–q75]",
               "Linf median [q25–q75]", "seconds"]
    rows = []
    for u in result.unbounded:
        rows.append([str(u["model"]), str(u["attack"]), f"{_pct(u['clean_miou'])} → {_pct(u['miou'])}",
                     f"{_pct(u['clean_pixel_accuracy'])} → {_pct(u['pixel_accuracy'])}",
                     _pct(u.get("targeted_success")) + "%",
                     f"{_num(u['median_l2'], 3)} [{_num(u['q25_l2'], 3)}–{_num(u['q75_l2'], 3)}]",
                     f"{_num(u['median_linf'], 4)} [{_num(u['q25_linf'], 4)}–{_num(u['q75_linf'], 4)}]",
                     f"{float(u.get('seconds') or 0):.1f}"])
    return headers, rows


def _num(v: Any, digits: int) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return DASH
    return DASH if math.isnan(f) else f"{f:.{digits}f}"


def headline(result: ResultMatrix) -> str:
    """One sentence: the worst mIoU at the largest eps per model, against clean."""
    r = result.records
    parts = []
    for model in result.models:
        rows = r[(r["model"] == model) & (r["attack"] == WORST_CASE)]
        if rows.empty:
            continue
        last = rows.sort_values("eps").iloc[-1]
        parts.append(f"{model}: mIoU {_pct(last['clean_miou'])}% clean → {_pct(last['miou'])}% under the per-image "
                     f"worst case at {result.provenance.get('threat', {}).get('norm', 'linf')} eps {_eps(last['eps'])}")
    return "; ".join(parts) + "." if parts else "no results."


# ---------------------------------------------------------------------------------------------- terminal
def render_terminal(result: ResultMatrix, console: Any) -> None:
    """Print the mIoU / pixel-accuracy matrix, per-class IoU, targeted success, DAG norms, checks note."""
    from rich.table import Table
    from rich.text import Text

    headers, rows = matrix_rows(result)
    table = Table(title="Segmentation: mIoU % / pixel accuracy % under attack", header_style="bold",
                  caption=f"{CI_NOTE}\n{ENSEMBLE_MEANING}")
    for h in headers:
        table.add_column(h, justify="left" if h in ("model", "attack") else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(c, style="bold" if row[1] == ENSEMBLE else "") for c in row))
    console.print(table)
    eps = summary_eps(result)
    if eps is not None:
        for model in result.models:
            h, rws = class_iou_table(result, model, eps)
            t = Table(title=f"{model}: IoU % per class at eps {_eps(eps)}", header_style="bold")
            for col in h:
                t.add_column(col, justify="left" if col == "class" else "right")
            for row in rws:
                t.add_row(*(Text(c) for c in row))
            console.print(t)
    for title, (h, rws) in (("Targeted success and perturbation norms", extra_rows(result)),
                            ("Unbounded attacks (run once, outside the eps grid)", unbounded_rows(result))):
        if not rws:
            continue
        t = Table(title=title, header_style="bold")
        for col in h:
            t.add_column(col, justify="left" if col in ("model", "attack") else "right")
        for row in rws:
            t.add_row(*(Text(c) for c in row))
        console.print(t)
    console.print(Text(SKIPPED_CHECKS, style="dim"))


# ---------------------------------------------------------------------------------------------- markdown
def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join(":---" if i < 2 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(result: ResultMatrix) -> str:
    """The segmentation report as GitHub-flavoured Markdown (curves and panels are in the HTML report)."""
    prov = result.provenance
    threat = prov.get("threat") or {}
    data = prov.get("data") or {}
    parts = ["# Robustness audit: segmentation", headline(result),
             "## Threat model\n\n" + f"- norm: {threat.get('norm', DASH)}\n- eps: "
             + ", ".join(_eps(e) for e in threat.get("eps", []))
             + "\n- bounds: [0, 1]",
             "## Data\n\n" + f"- {data.get('name', DASH)}: {data.get('n', DASH)} images, "
             f"{data.get('num_classes', DASH)} classes, ignore index {data.get('ignore_index', 255)} (counts nowhere)"]
    headers, rows = matrix_rows(result)
    parts.append("## mIoU and pixel accuracy under attack\n\n" + _md_table(headers, rows)
                 + f"\n\n{CI_NOTE}. {ENSEMBLE_MEANING}. Each cell is an independent run over every image.")
    eps = summary_eps(result)
    if eps is not None:
        for model in result.models:
            h, rws = class_iou_table(result, model, eps)
            parts.append(f"## {model}: IoU % per class at eps {_eps(eps)}\n\n" + _md_table(h, rws))
    h, rws = extra_rows(result)
    if rws:
        parts.append("## Targeted success and perturbation norms\n\n" + _md_table(h, rws)
                     + "\n\nTargeted success: the share of valid target pixels predicted as their target.")
    h, rws = unbounded_rows(result)
    if rws:
        parts.append("## Unbounded attacks (DAG)\n\n" + _md_table(h, rws)
                     + "\n\nRun once per model without an eps-ball; norms are per image, over [0, 1] pixels.")
    parts.append("## Sanity checks\n\n" + SKIPPED_CHECKS + ".")
    items = [("robustaudit", prov.get("robustaudit")), ("torch", prov.get("torch")), ("device", prov.get("device")),
             ("seed", prov.get("seed")), ("seconds", prov.get("seconds"))]
    parts.append("## Provenance\n\n" + "\n".join(f"- {k}: {v}" for k, v in items if v is not None))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- plots
def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def miou_curves_png(result: ResultMatrix) -> bytes:
    """mIoU against eps, one subplot per model, one line per attack (worst case dashed), 95% bands; each
    curve starts at eps 0 with the clean mIoU."""
    models = result.models
    fig = Figure(figsize=(4.2 * max(1, len(models)), 3.2))
    r = result.records
    for i, model in enumerate(models or [""]):
        ax = fig.add_subplot(1, max(1, len(models)), i + 1)
        mine = r[r["model"] == model]
        for attack in dict.fromkeys(mine["attack"]):
            rows = mine[mine["attack"] == attack].sort_values("eps")
            xs = [0.0, *rows["eps"].astype(float)]
            ys = [float(rows["clean_miou"].iloc[0]), *rows["miou"].astype(float)]
            lo = [ys[0], *rows["miou_ci_low"].astype(float)]
            hi = [ys[0], *rows["miou_ci_high"].astype(float)]
            style = "--" if attack == WORST_CASE else "-"
            line, = ax.plot(xs, ys, style, marker="o", ms=3, label=_label(attack).replace("$", r"\$"))
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(str(model).replace("$", r"\$"), fontsize=9)
        ax.set_xlabel("eps")
        ax.set_ylabel("mIoU")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def colorize(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` class map -> ``(H, W, 3)`` uint8: the fixed palette, ignored pixels (255) grey."""
    out = _PALETTE[np.clip(mask, 0, None) % len(_PALETTE)]
    out[mask == 255] = _IGNORED
    return out


def panels_png(examples: list[SegExample], limit: int = 6) -> bytes:
    """Rows image | ground truth | clean prediction | adversarial prediction | magnified perturbation."""
    shown = examples[:limit]
    fig = Figure(figsize=(9.0, 1.9 * max(1, len(shown))))
    titles = ("image", "ground truth", "clean prediction", "adversarial prediction", "perturbation (magnified)")
    for i, ex in enumerate(shown):
        delta = ex.adversarial - ex.clean
        peak = float(np.abs(delta).max()) or 1.0
        img = ex.clean.transpose(1, 2, 0)
        pert = (0.5 + 0.5 * delta / peak).transpose(1, 2, 0)
        for j, panel in enumerate((img, colorize(ex.label), colorize(ex.clean_pred), colorize(ex.adv_pred), pert)):
            ax = fig.add_subplot(len(shown), 5, 5 * i + j + 1)
            if panel.ndim == 3 and panel.shape[2] == 1:
                ax.imshow(panel[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(panel, 0, 255) if panel.dtype == np.uint8 else np.clip(panel, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{ex.model}\n{ex.attack}\neps {ex.eps:g}".replace("$", r"\$"), fontsize=6)
            if j == 4:
                ax.set_xlabel(f"x{1 / peak:.0f} (Linf {peak:.3g})" if peak else "", fontsize=6)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------- html
def _html_table(headers: list[str], rows: list[list[str]], bold_label: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        style = ' style="font-weight:bold"' if bold_label is not None and bold_label in row else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(result: ResultMatrix, *, images: bool = True) -> str:
    """The segmentation report as one self-contained HTML page (inline CSS and PNGs, everything escaped)."""
    md_sections = []
    headers, rows = matrix_rows(result)
    md_sections.append(("mIoU and pixel accuracy under attack", _html_table(headers, rows, ENSEMBLE)
                        + f"<p>{html.escape(CI_NOTE)}. {html.escape(ENSEMBLE_MEANING)}. Each cell is an "
                          "independent run over every image.</p>"))
    if images and not result.records.empty:
        md_sections.append(("mIoU vs eps", _img(miou_curves_png(result), "mIoU against eps")))
    eps = summary_eps(result)
    if eps is not None:
        for model in result.models:
            h, rws = class_iou_table(result, model, eps)
            md_sections.append((f"{model}: IoU % per class at eps {_eps(eps)}", _html_table(h, rws)))
    h, rws = extra_rows(result)
    if rws:
        md_sections.append(("Targeted success and perturbation norms", _html_table(h, rws)))
    h, rws = unbounded_rows(result)
    if rws:
        md_sections.append(("Unbounded attacks (DAG)", _html_table(h, rws)))
    if images and result.seg_examples:
        md_sections.append(("Examples", _img(panels_png(result.seg_examples), "segmentation panels")
                            + "<p>Palette fixed per class; ignored pixels (255) in grey; the perturbation is "
                              "scaled to its own peak.</p>"))
    md_sections.append(("Sanity checks", f"<p>{html.escape(SKIPPED_CHECKS)}.</p>"))
    body = "".join(f"<h2>{html.escape(t)}</h2>{content}" for t, content in md_sections)
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
           "margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
           "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Robustness audit: segmentation</title>"
            f"<style>{css}</style></head><body><h1>Robustness audit: segmentation</h1>"
            f"<p>{html.escape(headline(result))}</p>{body}</body></html>\n")
