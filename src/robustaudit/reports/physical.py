"""Report sections of the adversarial patch (``provenance["patch"]``) and of the physical-world proxies
(``provenance["physical"]``): the same rows for the terminal, Markdown and HTML; figures in HTML only."""

from __future__ import annotations

import math
from typing import Any

from robustaudit.evaluate.result import ResultMatrix

DASH = "—"
PATCH_HEADERS = ("model", "patch", "target", "area", "n", "patch success", "noise control", "gap", "p (patch > noise)")


def _pct(x: Any) -> str:
    return DASH if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.1f}"


def _ci(x: Any, ci: Any) -> str:
    if not isinstance(x, (int, float)) or math.isnan(x) or not isinstance(ci, list) or len(ci) != 2:
        return _pct(x)
    return f"{_pct(x)} [{_pct(ci[0])}–{_pct(ci[1])}]"


def patch_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("patch")
    return block if isinstance(block, dict) else {}


def physical_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("physical")
    return block if isinstance(block, dict) else {}


def patch_rows(result: ResultMatrix) -> list[list[str]]:
    """One row per model × patch × area share: success rates (%, 95% Wilson) of the patch and of the control."""
    out = []
    for r in patch_block(result).get("rows", []):
        p = r.get("p_value")
        out.append([str(r.get("model")), str(r.get("attack")), "untargeted" if r.get("target") is None else str(r["target"]),
                    f"{100 * r.get('eps', 0):g}% ({r.get('area_pixels')} px)", str(r.get("n")),
                    _ci(r.get("success"), r.get("success_ci")), _ci(r.get("control_success"), r.get("control_ci")),
                    _pct(r.get("gap")), f"{p:.2g}" if isinstance(p, (int, float)) else DASH])
    return out


def patch_notes(result: ResultMatrix) -> list[str]:
    if not patch_block(result).get("rows"):
        return []
    return [
        ("Success: targeted, the share of test images neither labelled nor predicted as the target (clean) that "
        "the patched image makes the model call the target; untargeted, the share of clean-correct images it "
        "makes wrong. Area: the patch's share of the image (at most that many pixels change)."),
        ("Noise control: uniform random noise of the same size and shape at the same placements; occlusion alone "
        "changes predictions, the gap is the patch's own effect (p: one-sided exact McNemar test, patch > noise)."),
        ("Placements: a random location, rotation, scale and brightness/contrast per test image, keyed by the seed "
        "and the image (fresh draws, not the fit's); the patch was fitted on the training split. See docs/physical.md."),
    ]


def patch_images(result: ResultMatrix) -> list[dict[str, Any]]:
    """``{"model", "attack", "eps", "artifact", "image" (C, R, R) lists}`` per fitted patch."""
    return [{k: r.get(k) for k in ("model", "attack", "eps", "artifact", "image", "shape")}
            for r in patch_block(result).get("rows", [])]


def physical_headers(result: ResultMatrix) -> list[str]:
    return ["model", "attack", "adversarial", *[t["name"] for t in physical_block(result).get("transforms", [])]]


def physical_rows(result: ResultMatrix) -> list[list[str]]:
    """One row per model × attack; each transform's cell: destruction rate % (counted images)."""
    block = physical_block(result)
    names = [t["name"] for t in block.get("transforms", [])]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in block.get("rows", []):
        table.setdefault((r["model"], r["attack"]), {"n_adversarial": r.get("n_adversarial")})[r["transform"]] = r
    out = []
    for (model, attack), cells in table.items():
        row = [model, attack, str(cells["n_adversarial"])]
        for name in names:
            r = cells.get(name)
            row.append(DASH if r is None or not r.get("n") else f"{_pct(r['rate'])} ({r['n']})")
        out.append(row)
    return out


def physical_notes(result: ResultMatrix) -> list[str]:
    block = physical_block(result)
    if not block.get("rows"):
        return []
    notes = [
        (f"Destruction rate % (Kurakin et al. 2016) of each attack's adversarial examples at eps={block.get('eps'):g} "
        f"({block.get('norm')}) on {block.get('n_samples')} test samples: of the images classified correctly both "
        "clean and clean-after-the-transform and misclassified adversarially (the count in parentheses), the share "
        "the transform turns back into correct predictions. Near 0: the perturbation survives; near 100: it does not."),
    ]
    survive = _survivors(block)
    if survive:
        notes.append(survive)
    harsh = sorted({r["transform"] for r in block["rows"]
                    if isinstance(r.get("clean_kept"), float) and r["clean_kept"] < 0.9})
    if harsh:
        notes.append(f"Harsh on clean images (keeps < 90% of them correct): {', '.join(harsh)}; judge those columns "
                     "with care.")
    notes.append("Transforms: " + "; ".join(f"{t['name']}: {t['description']}" for t in block.get("transforms", [])))
    return notes


def _survivors(block: dict[str, Any]) -> str:
    """One line naming, per attack, the mean destruction rate: which perturbations would survive."""
    rates: dict[tuple[str, str], list[float]] = {}
    for r in block.get("rows", []):
        if r.get("n"):
            rates.setdefault((r["model"], r["attack"]), []).append(r["rate"])
    if not rates:
        return ""
    parts = [f"{a} on {m}: {100 * sum(v) / len(v):.0f}%" for (m, a), v in rates.items()]
    return "Mean destruction over the transforms (lower survives the physical world better): " + ", ".join(parts) + "."


# ---------------------------------------------------------------------------------------- terminal
def render_terminal_sections(result: ResultMatrix, console: Any) -> None:
    """Print the patch and physical-world tables (when the audit has them)."""
    from rich.table import Table
    from rich.text import Text

    for title, headers, rows, notes in (
        ("Adversarial patch: success % [95% CI] vs a noise control at the same placements", PATCH_HEADERS,
         patch_rows(result), patch_notes(result)),
        ("Physical-world proxies: destruction rate % (counted images)", physical_headers(result),
         physical_rows(result), physical_notes(result)[:3]),
    ):
        if not rows:
            continue
        table = Table(title=title, header_style="bold", caption="\n".join(notes))
        for k, col in enumerate(headers):
            table.add_column(col, justify="left" if k < 2 else "right", no_wrap=k < 2)
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        console.print(table)


# ---------------------------------------------------------------------------------------- markdown
def markdown_sections(result: ResultMatrix) -> list[str]:
    """The ``## Adversarial patch`` and ``## Physical-world proxies`` sections (empty list when absent)."""
    from robustaudit.reports.markdown import _table, md_escape

    parts = []
    rows = patch_rows(result)
    if rows:
        text = "## Adversarial patch\n\n" + "\n".join(f"- {md_escape(n)}" for n in patch_notes(result)) + "\n\n"
        text += _table(list(PATCH_HEADERS), [[md_escape(c) for c in row] for row in rows], right=list(range(4, 9)))
        links = [f"![{md_escape(p['model'])} / {md_escape(p['attack'])} at {100 * p['eps']:g}%]({p['artifact']})"
                 for p in patch_images(result) if p.get("artifact")]
        if links:
            text += "\n\nThe patches (files under `artifacts/`, reusable with `--attack patch:load=FILE.pt`):\n\n" + " ".join(links)
        parts.append(text)
    rows = physical_rows(result)
    if rows:
        headers = physical_headers(result)
        parts.append("## Physical-world proxies\n\n" + "\n".join(f"- {md_escape(n)}" for n in physical_notes(result))
                     + "\n\n" + _table(headers, [[md_escape(c) for c in row] for row in rows],
                                       right=list(range(2, len(headers)))))
    return parts


# ---------------------------------------------------------------------------------------- html
def html_sections(result: ResultMatrix, *, images: bool = True) -> str:
    """The two sections as an HTML fragment (escaped here; the template inserts it as markup)."""
    from markupsafe import escape

    num = ' class="num"'

    def table(headers: list[str], rows: list[list[str]], first_text: int) -> str:
        head = "".join(f"<th{'' if k < first_text else num}>{escape(h)}</th>" for k, h in enumerate(headers))
        body = "".join("<tr>" + "".join(f"<td{'' if k < first_text else num}>{escape(c)}</td>"
                                        for k, c in enumerate(row)) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    html = []
    rows = patch_rows(result)
    if rows:
        html.append("<h2>Adversarial patch</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in patch_notes(result))
                    + "</ul>" + table(list(PATCH_HEADERS), rows, 4))
        if images:
            from robustaudit.reports.html import _data_uri

            for png, alt in ((patch_curve_png(result), "success vs patch size"), (patch_images_png(result), "patches")):
                if png is not None:
                    html.append(f'<p><img alt="{alt}" src="{_data_uri(png)}"></p>')
    rows = physical_rows(result)
    if rows:
        html.append("<h2>Physical-world proxies</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in physical_notes(result))
                    + "</ul>" + table(physical_headers(result), rows, 2))
    return "\n".join(html)


def patch_curve_png(result: ResultMatrix) -> bytes | None:
    """Success vs area share, patch and noise control with their 95% bands; one panel per model × patch."""
    rows = patch_block(result).get("rows", [])
    if not rows:
        return None
    from matplotlib.figure import Figure

    from robustaudit.reports.plots import _label, _png

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    fig = Figure(figsize=(4.2 * len(groups), 3.2))
    for k, ((model, attack), rs) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        rs = sorted(rs, key=lambda r: r["eps"])
        x = [100 * r["eps"] for r in rs]
        for key, ci, label, color in (("success", "success_ci", "patch", "#c0392b"),
                                      ("control_success", "control_ci", "noise control", "#7f8c8d")):
            ax.plot(x, [100 * r[key] for r in rs], marker="o", color=color, label=label)
            ax.fill_between(x, [100 * r[ci][0] for r in rs], [100 * r[ci][1] for r in rs], color=color, alpha=0.15)
        ax.set_xlabel("patch area (% of the image)")
        ax.set_ylabel("success %")
        ax.set_ylim(0, 100)
        ax.set_title(_label(f"{model} / {attack}"), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def patch_images_png(result: ResultMatrix) -> bytes | None:
    """The fitted patches, one panel each (grayscale or RGB)."""
    import numpy as np

    items = [p for p in patch_images(result) if p.get("image")]
    if not items:
        return None
    from matplotlib.figure import Figure

    from robustaudit.reports.plots import _label, _png

    fig = Figure(figsize=(1.8 * len(items), 2.2))
    for k, p in enumerate(items):
        ax = fig.add_subplot(1, len(items), k + 1)
        img = np.asarray(p["image"], dtype=float)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), interpolation="nearest")
        ax.set_title(_label(f"{p['model']}\n{p['attack']} {100 * p['eps']:g}%"), fontsize=6)
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)
