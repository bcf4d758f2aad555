"""Report section of the learned attack generators (``provenance["learned"]``, see
:mod:`robustaudit.evaluate.learned`): one row per model × generator × eps, and a transfer table; the same
rows for the terminal, Markdown and HTML."""

from __future__ import annotations

import math
from typing import Any

from robustaudit.evaluate.result import ResultMatrix

DASH = "—"
LEARNED_HEADERS = ("model", "generator", "ε", "n", "success % [95% CI]", "targeted %", "mean L∞", "mean L2",
                   "fit s", "images/s", "PGD-10 images/s", "speed-up")


def learned_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("learned")
    return block if isinstance(block, dict) else {}


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(rate: Any) -> str:
    return f"{100 * rate:.1f}" if _num(rate) else DASH


def _rate_ci(r: Any) -> str:
    if not isinstance(r, dict) or not _num(r.get("rate")):
        return DASH
    ci = r.get("ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(_num(c) for c in ci):
        return f"{_pct(r['rate'])} [{_pct(ci[0])}–{_pct(ci[1])}]"
    return _pct(r["rate"])


def _f(x: Any, fmt: str) -> str:
    return format(x, fmt) if _num(x) else DASH


def _name(g: dict[str, Any]) -> str:
    target, name = g.get("target"), str(g.get("attack"))
    return name if target is None or "target=" in name else f"{name} (target {target})"


def learned_rows(result: ResultMatrix) -> list[list[str]]:
    """One row per generator: held-out success, norms, fit time, throughput against PGD-10."""
    rows = []
    for g in learned_block(result).get("generators", []):
        s = g.get("success") or {}
        t = g.get("throughput") or {}
        targeted = s.get("targeted") if isinstance(s, dict) else None
        rows.append([str(g.get("model")), _name(g), _f(g.get("eps"), "g"), str(s.get("n", DASH)), _rate_ci(s),
                     _rate_ci(targeted) if targeted else DASH, _f(g.get("mean_linf"), ".3f"),
                     _f(g.get("mean_l2"), ".3f"), "loaded" if g.get("loaded_from") else _f(g.get("fit_seconds"), ".1f"),
                     _f(t.get("generator_images_per_s"), ",.0f"), _f(t.get("pgd_images_per_s"), ",.0f"),
                     f"{t['speedup']:.1f}×" if _num(t.get("speedup")) else DASH])
    return rows


def transfer_headers(result: ResultMatrix) -> list[str]:
    models: list[str] = []
    for g in learned_block(result).get("generators", []):
        models += [t["model"] for t in g.get("transfer", []) if t.get("model") not in models]
    return ["crafted on", "generator", "ε", *models]


def transfer_rows(result: ResultMatrix) -> list[list[str]]:
    """Success % of each generator's adversarial images on the other models (their clean-correct samples)."""
    models = transfer_headers(result)[3:]
    rows = []
    for g in learned_block(result).get("generators", []):
        by_model = {t.get("model"): t for t in g.get("transfer", [])}
        if by_model:
            rows.append([str(g.get("model")), _name(g), _f(g.get("eps"), "g"),
                         *(_pct(by_model[m].get("rate")) if m in by_model else DASH for m in models)])
    return rows


def learned_notes(result: ResultMatrix) -> list[str]:
    block = learned_block(result)
    if not block.get("generators"):
        return []
    ref = block.get("reference", {})
    return [
        ("Success: the share of clean-correct held-out samples the fitted generator makes wrong in one forward "
         "pass (its own rate, not the matrix's sweep over eps); targeted: the share of samples not of the target "
         "class it makes the model call the target. Norms: mean perturbation over those samples."),
        (f"Throughput: adversarial images per second of the generator and of PGD-{ref.get('steps', 10)} "
         f"(every step, no early stopping) on the same batch, model and device ({ref.get('device', '?')}), "
         "median of runs timed in turns in this process; fit time is extra, paid once per model and eps."),
        ("Transfer: the same adversarial images scored on the other audited models and on the catalog models "
         "for this data (success among each model's own clean-correct samples). See docs/learned.md."),
    ]


# ---------------------------------------------------------------------------------------- renderings
def render_terminal_section(result: ResultMatrix, console: Any) -> None:
    """Print the learned-attack tables (when the audit fitted generators)."""
    from rich.table import Table
    from rich.text import Text

    for title, headers, rows, notes, text_cols in (
        ("Learned attacks: held-out success, perturbation, throughput", list(LEARNED_HEADERS), learned_rows(result),
         learned_notes(result)[:2], 2),
        ("Learned attacks: transfer success %", transfer_headers(result), transfer_rows(result),
         learned_notes(result)[2:], 2),
    ):
        if not rows:
            continue
        table = Table(title=title, header_style="bold", caption="\n".join(notes))
        for k, col in enumerate(headers):
            table.add_column(col, justify="left" if k < text_cols else "right", no_wrap=k < text_cols)
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        console.print(table)


def markdown_section(result: ResultMatrix) -> str | None:
    from robustaudit.reports.markdown import _table, md_escape

    rows = learned_rows(result)
    if not rows:
        return None
    text = ("## Learned attacks\n\n" + "\n".join(f"- {md_escape(n)}" for n in learned_notes(result)) + "\n\n"
            + _table(list(LEARNED_HEADERS), [[md_escape(c) for c in r] for r in rows],
                     right=list(range(2, len(LEARNED_HEADERS)))))
    transfer = transfer_rows(result)
    if transfer:
        headers = transfer_headers(result)
        text += "\n\n### Transfer success %\n\n" + _table([md_escape(h) for h in headers],
                                                          [[md_escape(c) for c in r] for r in transfer],
                                                          right=list(range(2, len(headers))))
    return text


def html_section(result: ResultMatrix) -> str:
    """The section as an HTML fragment (escaped here; the template inserts it as markup)."""
    from markupsafe import escape

    rows = learned_rows(result)
    if not rows:
        return ""
    num = ' class="num"'

    def table(headers: list[str], body_rows: list[list[str]]) -> str:
        head = "".join(f"<th{'' if k < 2 else num}>{escape(h)}</th>" for k, h in enumerate(headers))
        body = "".join("<tr>" + "".join(f"<td{'' if k < 2 else num}>{escape(c)}</td>" for k, c in enumerate(r))
                       + "</tr>" for r in body_rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    html = ("<h2>Learned attacks</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in learned_notes(result))
            + "</ul>" + table(list(LEARNED_HEADERS), rows))
    transfer = transfer_rows(result)
    if transfer:
        html += "<h3>Transfer success %</h3>" + table(transfer_headers(result), transfer)
    return html
