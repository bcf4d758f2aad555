"""The vocabulary of a report view: tables of already-formatted cells, sections, images as data.

A view is plain data (strings, and numbers only where a renderer styles by them), so a renderer never
computes a figure: the terminal (rich), Markdown and HTML only lay these out.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    """Rows of already-formatted cells.

    The first ``text_columns`` columns hold names (left-aligned, escaped where the format needs it);
    the rest hold figures (right-aligned). ``code_columns`` are shown in a monospace font unless the
    cell is a dash. ``title`` and ``caption`` are used where the table stands alone (the terminal).
    """

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    text_columns: int = 2
    code_columns: tuple[int, ...] = ()
    title: str = ""
    caption: tuple[str, ...] = ()
    strong_rows: tuple[int, ...] = ()  # rows shown in bold in the terminal and HTML (a worst case)

    def __bool__(self) -> bool:  # an empty table is not worth a section
        return bool(self.rows)


@dataclass(frozen=True)
class Image:
    """A figure of the result, named by ``kind`` (drawn by :mod:`robustaudit.reports.plots` for HTML).

    Drawing needs matplotlib and the records, so the view says which figure goes where; the HTML
    renderer draws it. Kinds: ``accuracy_curves``, ``examples``, ``cost_scatter``, ``patch_curve``,
    ``patch_images``, ``uap_curve``, ``miou_curves``, ``seg_panels``, ``transfer_heatmap``.
    """

    kind: str
    alt: str
    note: str = ""  # a sentence shown with the figure


@dataclass(frozen=True)
class Section:
    """A titled part of the report: a paragraph, bullet notes, a table, images, then subsections."""

    title: str
    paragraph: str = ""  # before the table
    notes: tuple[str, ...] = ()
    table: Table | None = None
    after: str = ""  # a paragraph after the table
    images: tuple[Image, ...] = ()
    #: Markdown: files the report links to (label, path) after ``links_intro``, where HTML shows images
    links: tuple[tuple[str, str], ...] = ()
    links_intro: str = ""
    subsections: tuple[Section, ...] = field(default_factory=tuple)
