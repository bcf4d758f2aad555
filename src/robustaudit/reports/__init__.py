"""Renderings of a :class:`~robustaudit.evaluate.result.ResultMatrix`: the terminal table (rich),
Markdown (a CI job summary), a self-contained HTML page, and the plots the page embeds.

A report never runs a model: everything here reads a finished ResultMatrix. ``results.json`` stays
the source of truth. One view layer (:mod:`robustaudit.reports.view`) builds every section's content
from it; the renderers (``terminal``, ``markdown``, ``html`` with ``plots``) only lay the views out.
Imports run view -> renderers, never back, and no renderer imports another (``html`` draws its
figures with ``plots``).

Example::

    from robustaudit.evaluate.result import ResultMatrix
    from robustaudit.reports import write_reports

    paths = write_reports(ResultMatrix.load("robustaudit-out"), "robustaudit-out")
    paths["html"]  # PosixPath('robustaudit-out/report.html')
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustaudit.evaluate.result import ResultMatrix

__all__ = [
    "REPORT_HTML",
    "REPORT_MD",
    "render_html",
    "render_markdown",
    "render_terminal",
    "summary_eps",
    "write_reports",
]


#: Names served from their modules on first use (PEP 562), so that importing a light module of this
#: package (``reports.view.numbers``, used by the pytest plugin's controller) pulls in no pandas or jinja2.
_LAZY = {
    "REPORT_HTML": "robustaudit.evaluate.result",
    "REPORT_MD": "robustaudit.evaluate.result",
    "render_html": "robustaudit.reports.html",
    "render_markdown": "robustaudit.reports.markdown",
    "render_terminal": "robustaudit.reports.terminal",
    "summary_eps": "robustaudit.reports.view.matrix",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader (a CI upload, a browser refresh) then sees the old report or the new one, never half.
    The temporary name carries the pid so two processes writing the same directory do not collide,
    and it is opened normally (not with mkstemp) so the report gets the usual umask permissions.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_reports(result: ResultMatrix, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (created if needed).

    Both are rendered before either is written, so a rendering error leaves the directory as it
    was. Returns ``{"markdown": path, "html": path}``.
    """
    from robustaudit.evaluate.result import REPORT_HTML, REPORT_MD
    from robustaudit.reports.html import render_html
    from robustaudit.reports.markdown import render_markdown

    markdown, html = render_markdown(result), render_html(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / REPORT_MD, "html": out / REPORT_HTML}
    _write_atomic(paths["markdown"], markdown)
    _write_atomic(paths["html"], html)
    return paths
