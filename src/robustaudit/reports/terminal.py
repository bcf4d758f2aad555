"""The report in the terminal (rich): the matrix, the clean-vs-adversarial table and what needs attention,
laid out from the views of :mod:`robustaudit.reports.view`. Every verdict and section is in report.md."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view import ReportView, SegmentationView, report_view, segmentation_view
from robustaudit.reports.view.blocks import Table
from robustaudit.reports.view.checkdocs import UPPER_BOUNDS, doc_reference
from robustaudit.reports.view.checks import CheckRow
from robustaudit.reports.view.labelmap import LABEL
from robustaudit.reports.view.reliability import UPPER_BOUND_MEANING
from robustaudit.reports.view.segmentation import SKIPPED_CHECKS
from robustaudit.reports.view.verdict import MEANINGLESS, UPPER_BOUND

_STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def rich_table(t: Table, *, no_wrap: str = "names", strong: str = "bold") -> RichTable:
    """A view table for rich. ``no_wrap``: ``"names"`` (the text columns never wrap), ``"all"`` or ``"none"``."""
    table = RichTable(title=t.title or None, header_style="bold", caption="\n".join(t.caption) or None)
    for k, col in enumerate(t.headers):
        name = k < t.text_columns
        table.add_column(col, justify="left" if name else "right",
                         no_wrap=no_wrap == "all" or (no_wrap == "names" and name))
    for i, row in enumerate(t.rows):
        # Text, not str: names are data, and rich would read "[bold]" in a name as markup.
        table.add_row(*(Text(c, style=strong if i in t.strong_rows else "") for c in row))
    return table


def _matrix_table(view: ReportView, *, intervals: bool) -> RichTable:
    m = view.matrix
    table = RichTable(title=m.terminal_title(intervals), caption=m.terminal_caption(intervals), header_style="bold")
    # names never truncate (a narrow terminal gets the table without intervals instead)
    for col in ("model", "attack"):
        table.add_column(col, no_wrap=True)
    for col in ("clean", *m.eps_headers, *(["fwd/bwd"] if m.passes else [])):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("seconds", justify="right")
    rows = m.rows
    for i, row in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        table.add_row(
            Text(row.model if i == 0 or rows[i - 1].model != row.model else ""),
            Text(row.attack, style="magenta" if row.worst_case else ""),
            Text(row.clean_text),
            *(Text(c) for c in (row.cell_texts if intervals else row.short_texts)),
            *([Text(row.passes_text)] if m.passes else []),
            Text(row.seconds_text),
            style="bold" if row.worst_case else None,
            # A rule before the worst case and after each model keeps the groups apart.
            end_section=nxt is None or nxt.model != row.model or nxt.worst_case,
        )
    return table


def _summary_table(view: ReportView) -> RichTable:
    s = view.summary
    table = RichTable(title=s.terminal_title, header_style="bold")
    table.add_column("model", no_wrap=True)
    table.add_column("training")
    table.add_column("clean test", justify="right")
    table.add_column("adversarial test", justify="right")
    shown = {v.model: v for v in view.verdict.rows}
    for row in s.rows:
        verdict = shown.get(row.model)
        # an upper bound reads "≤ 89.0 (upper bound: loss-gap failed)", in yellow, never as a pass; so does a
        # figure too few samples stand behind
        if verdict is not None and verdict.status == UPPER_BOUND:
            adversarial = Text(verdict.text, style="yellow")
        elif verdict is not None and verdict.status == MEANINGLESS:
            adversarial = Text(f"{verdict.text} ({MEANINGLESS})", style="yellow")
        else:
            adversarial = Text(row.adversarial_text)
        table.add_row(Text(row.model), Text(row.training), Text(row.clean.text), adversarial)
    return table


def _checks_table(checks: list[CheckRow]) -> RichTable:
    table = RichTable(title="Sanity checks", header_style="bold")
    for col in ("status", "check", "model", "message"):
        table.add_column(col)
    for c in checks:
        message = Text(c.message)
        if c.doc:
            message.append(f" ({c.doc})", style="dim")
        table.add_row(Text(c.status, style=_STATUS_STYLE.get(c.status, "")), Text(c.id), Text(c.model), message)
    return table


def _print_reliability(view: ReportView, console: Console) -> None:
    """The upper bounds, one line per unreliable model, or the note that nothing was checked."""
    rel = view.reliability
    for line in rel.lines():
        console.print(Text(line, style="bold red"))
    if rel.unreliable:
        console.print(Text(f"{UPPER_BOUND_MEANING} (see {doc_reference(UPPER_BOUNDS)}).", style="red"))
    if rel.note:
        console.print(Text(rel.note, style="dim"))


def _print_classification(view: ReportView, console: Console) -> None:
    table = _matrix_table(view, intervals=True)
    wide = Console(width=10_000, file=io.StringIO())  # measures the table's natural width
    if wide.measure(table).maximum > console.width:
        # too narrow for "58.1 [53.0–63.0]" cells: show accuracies only, say where the intervals are
        table = _matrix_table(view, intervals=False)
    console.print(table)
    for label, text in view.data:  # a model audited on a subset of its outputs: which ones
        if label == LABEL:
            console.print(Text(f"{label}: {text}"))
    console.print(_summary_table(view))
    _print_reliability(view, console)
    if view.brief_cost:
        console.print(rich_table(view.brief_cost, no_wrap="all"))
    rates = dict(view.provenance).get("attack throughput")
    if rates:  # attacked samples / attack seconds, per model
        console.print(Text(f"attack throughput: {rates}"))
    for tie in view.model_ties:  # the terminal names model ties at the table's eps; report.md lists them all
        console.print(f"[yellow]note:[/] {tie.sentence()}")
    sections = [s for s in (view.published, view.detection, view.transfer, view.patch, view.physical, view.learned,
                            view.uap, view.norms) if s is not None]
    for section in sections:
        for part in (section, *section.subsections):  # learned attacks: the transfer table
            if part.table is not None:
                console.print(rich_table(part.table))
    if view.detection is not None and view.detection.table is None:
        # detectors asked for but no per-sample attack to judge them by: say so, naming the attacks left out
        for note in view.detection.notes:
            console.print(Text(f"Detectors: {note}", style="yellow"))
    if view.checks:
        # the terminal shows what needs attention; every verdict is in report.md / report.html
        attention = [c for c in view.checks if c.status != "pass"]
        if attention:
            console.print(_checks_table(attention))
        console.print(view.checks_line)


def _print_segmentation(view: SegmentationView, console: Console) -> None:
    console.print(rich_table(view.matrix.table, no_wrap="all"))
    for section in view.per_class:
        console.print(rich_table(section.table, no_wrap="none"))
    for section in view.extra:
        console.print(rich_table(section.table, no_wrap="none"))
    console.print(Text(SKIPPED_CHECKS, style="dim"))


def render_terminal(result: ResultMatrix, console: Console) -> None:
    """Print the accuracy matrix, the clean-vs-adversarial table, the other sections' tables and the
    sanity checks that need attention (a segmentation result: mIoU and pixel accuracy tables).

    Matrix: one row per model × attack (worst case last and bold), columns model, attack, clean
    accuracy, robust accuracy with its 95% Wilson interval per eps, and seconds.
    """
    if result.is_segmentation:
        _print_segmentation(segmentation_view(result), console)
    elif result.records.empty:
        console.print("[dim]no results to show[/dim]")
    else:
        _print_classification(report_view(result), console)
