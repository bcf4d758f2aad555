"""The report as GitHub-flavoured Markdown (readable as a CI job summary): the views of
:mod:`robustaudit.reports.view` laid out as headings, bullet lists and GFM tables.

Curves and example images are in the HTML report only (GitHub strips inline images from job summaries).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view import ReportView, SegmentationView, report_view, segmentation_view
from robustaudit.reports.view.blocks import Section, Table
from robustaudit.reports.view.checkdocs import UPPER_BOUNDS, carried_docs, check_doc
from robustaudit.reports.view.checks import CHECK_HEADERS, STATUS_MARK
from robustaudit.reports.view.matrix import WORST_CASE_MEANING
from robustaudit.reports.view.numbers import DASH
from robustaudit.reports.view.reliability import UPPER_BOUND_MEANING
from robustaudit.reports.view.verdict import MEANINGLESS, RELIABLE, UNCHECKED, UPPER_BOUND, VerdictView

_MD_SPECIAL = re.compile(r"([\\`*|<>&])")


def md_escape(text: Any) -> str:
    """Text safe in a Markdown table cell: punctuation that formats, tags or splits cells is
    backslash-escaped, ``](`` cannot open a link, and newlines become spaces. Brackets alone stay
    as they are, so ``[0, 1]`` reads as written in the raw file too."""
    escaped = _MD_SPECIAL.sub(r"\\\1", str(text)).replace("](", "]\\(")
    return escaped.replace("\r", " ").replace("\n", " ")


def md_code(text: Any) -> str:
    """An inline code span; in a GFM table ``|`` must be escaped even inside code."""
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> str:
    """A GFM table of already-escaped cells; the columns from ``text_columns`` on are right-aligned."""
    rule = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _cell(table: Table, i: int, text: str) -> str:
    if i in table.code_columns:
        return md_code(text) if text != DASH else DASH
    return md_escape(text) if i < table.text_columns else text  # figures carry no Markdown syntax


def table(t: Table) -> str:
    """A view table as GFM: names escaped and left-aligned, figures as they are and right-aligned."""
    rows = [[_cell(t, i, c) for i, c in enumerate(row)] for row in t.rows]
    return _grid([md_escape(h) for h in t.headers], rows, t.text_columns)


def section(s: Section, level: int = 2) -> str:
    """A view section: heading, paragraph, bullet notes, table, closing paragraph, links, subsections."""
    parts = [f"{'#' * level} {md_escape(s.title)}"]
    if s.paragraph:
        parts.append(s.paragraph)
    if s.notes:
        parts.append("\n".join(f"- {md_escape(n)}" for n in s.notes))
    if s.table is not None:
        parts.append(table(s.table))
    if s.after:
        parts.append(s.after)
    if s.links:
        parts.append(s.links_intro + "\n\n" + " ".join(f"![{md_escape(label)}]({path})" for label, path in s.links))
    parts += [section(sub, level + 1) for sub in s.subsections]
    return "\n\n".join(parts)


def _items(items: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"- **{md_escape(k)}:** {md_escape(v)}" for k, v in items)


def _fence(text: str, lang: str) -> str:
    # A fence longer than any backtick run inside, so a config value cannot close it early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _matrix(view: ReportView) -> str:
    m = view.matrix
    rows = []
    for row in m.rows:
        cells = [row.clean_text, *row.cell_texts, row.seconds_text]
        if row.worst_case:
            cells = [f"**{c}**" for c in cells]
        attack = f"**{md_escape(row.attack)}**" if row.worst_case else md_escape(row.attack)
        rows.append([md_escape(row.model), attack, *cells])
    note = "\n\n".join((f"{m.lead} **{WORST_CASE}**: {WORST_CASE_MEANING}.", *m.notes))
    grid = _grid(["model", "attack", "clean", *m.eps_headers, "seconds"], rows, 2)
    return f"## {md_escape(m.title)}\n\n{note}\n\n{grid}"


def verdict(v: VerdictView) -> str:
    """``## Verdict``: the lead sentence and each model's headline with its status (a plain mark, no emoji)."""
    mark = {RELIABLE: STATUS_MARK["pass"], UPPER_BOUND: STATUS_MARK["fail"], UNCHECKED: STATUS_MARK["warn"],
            MEANINGLESS: STATUS_MARK["warn"]}
    rows = [[md_escape(r.model), md_escape(r.text), f"{mark[r.status]} {md_escape(r.note)}"] for r in v.rows]
    return f"## Verdict\n\n{v.lead}\n\n" + _grid(["model", "worst case", "status"], rows, 1)


def _summary(view: ReportView) -> str:
    s = view.summary
    rows = [[md_escape(r.model), md_escape(r.training), r.clean.text,
             f"**{r.adversarial_text}**" if r.upper_bound else r.adversarial_text] for r in s.rows]
    text = f"## {s.title}\n\n{s.note}\n\n" + _grid(["model", "training", "clean test", "adversarial test"], rows, 2)
    rel = view.reliability
    if rel.unreliable:  # never a colour in Markdown: the marks are the ≤ and these lines
        text += "\n\n" + "\n".join(f"- **{md_escape(line)}**" for line in rel.lines())
        # a link inside this file (the section follows the checks), else the checkout's file by name
        where = f"[Upper bounds](#{UPPER_BOUNDS})" if check_doc(UPPER_BOUNDS) else f"docs/checks.md#{UPPER_BOUNDS}"
        text += f"\n\n{md_escape(UPPER_BOUND_MEANING)} (see {where})."
    if rel.note:
        text += "\n\n" + md_escape(rel.note)
    return text


def _checks(view: ReportView) -> str:
    # each check's documentation follows the table, under a heading of its id: the link is an anchor of this
    # file, which travels with it (a relative docs/checks.md#... breaks once the report leaves the checkout)
    docs = carried_docs([c.id for c in view.checks], bool(view.reliability.unreliable))
    rows = [[f"{c.mark} {md_escape(c.status)}".strip(), md_code(c.id), md_escape(c.model), md_escape(c.message),
             f"[{c.id}](#{c.id})" if c.id in docs else (md_escape(c.doc) if c.doc else DASH)] for c in view.checks]
    text = f"## Sanity checks ({view.checks_tally})\n\n" + _grid(CHECK_HEADERS, rows, len(CHECK_HEADERS))
    if docs:
        text += "\n\n## What the checks test\n\n" + "\n\n".join(
            f"### {i}\n\n" + "\n\n".join(paragraphs) for i, paragraphs in docs.items())
    return text


def _provenance(view: ReportView | SegmentationView) -> str | None:
    if not view.provenance and view.config is None:
        return None
    text = "## Provenance"
    if view.provenance:
        text += "\n\n" + _grid(["field", "value"], [[md_escape(k), md_escape(v)] for k, v in view.provenance], 2)
    if view.config is not None:
        text += "\n\n<details><summary>Configuration</summary>\n\n" + _fence(view.config, "json") + "\n\n</details>"
    return text


def _classification(view: ReportView) -> str:
    parts = [f"# {view.title}", md_escape(view.headline)]
    parts += [] if view.empty else [verdict(view.verdict)]
    parts.append("## Threat model\n\n" + _items(view.threat))
    if view.data:
        parts.append("## Data\n\n" + _items(view.data))
    parts += [section(Section(title, table=t)) for title, t in (("Models", view.models), ("Attacks", view.attacks)) if t]
    parts += ["## Robust accuracy\n\nNo results."] if view.empty else [_matrix(view), _summary(view), section(view.ties)]
    extras = (view.published, view.norms, view.detection, view.transfer, view.patch, view.physical, view.learned,
              view.uap, view.cost)
    parts += [section(s) for s in extras if s is not None]
    if view.checks:
        parts.append(_checks(view))
    parts.append(_provenance(view))
    return "\n\n".join(p for p in parts if p is not None) + "\n"


def _segmentation(view: SegmentationView) -> str:
    parts = [f"# {view.title}", view.headline, verdict(view.verdict), *(section(s) for s in view.overview)]
    parts += [section(Section(title, table=t)) for title, t in (("Models", view.models), ("Attacks", view.attacks)) if t]
    parts += [section(view.summary), section(view.matrix)]
    parts += [section(s) for s in (*view.per_class, *view.extra, view.checks)]
    parts.append(_provenance(view))
    return "\n\n".join(p for p in parts if p is not None) + "\n"


def render_markdown(result: ResultMatrix) -> str:
    """The full report as GitHub-flavoured Markdown.

    Sections: title, threat model, data, models, attacks, the robust-accuracy matrix, the
    clean-vs-adversarial table, ties, minimal norms, detectors, transferability, patch, physical and learned attacks,
    universal perturbations,
    model and attack cost (when measured), sanity checks (when there are any) and provenance with the full
    configuration as a fenced JSON block. A segmentation result gets mIoU and pixel accuracy instead.
    """
    if result.is_segmentation:
        return _segmentation(segmentation_view(result))
    return _classification(report_view(result))
