"""The ``--robust-report`` files: ``report.md`` (fits ``$GITHUB_STEP_SUMMARY``) and ``report.html`` for the
session, and each test's full single-audit reports under ``audits/`` (rendered by :mod:`robustaudit.reports`)."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustaudit.plugin.compare import COMPARISON_HEADERS
from robustaudit.plugin.summary import (
    CHECK_HEADERS,
    FAIL,
    PASS,
    SESSION_HEADERS,
    checks_summary,
    compare_rows,
    compare_verdict,
    session_rows,
)

__all__ = ["render_session_html", "render_session_markdown", "write_atomic", "write_report"]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:120] or "test"


def _md(text: Any) -> str:
    """Text safe in a GFM table cell: what formats, tags, links or splits cells is escaped."""
    escaped = re.sub(r"([\\`*|<>&])", r"\\\1", str(text)).replace("](", "]\\(")
    return escaped.replace("\r", " ").replace("\n", " ")


def _md_code(text: Any) -> str:
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, code_first: bool = False) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        cells = [_md_code(c) if i == 0 and code_first else _md(c) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(cell: str) -> str:
    css = ("fail" if FAIL in cell or cell in ("failed", "fail")
           else "warn" if cell == "warn"
           else "pass" if cell.endswith(PASS) or cell in ("ok", "passed") else "")
    return f'<td class="{css}">{html.escape(cell)}</td>' if css else f"<td>{html.escape(cell)}</td>"


def _outcome_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    return [[nodeid, str(p.get("outcome", "-")), str(len(p.get("audits", [])))] for nodeid, p in doc["tests"].items()]


def render_session_markdown(doc: Mapping[str, Any], *, headline: str = "", links: Mapping[str, str] | None = None) -> str:
    """The session report in GitHub-flavoured Markdown (fits ``$GITHUB_STEP_SUMMARY``)."""
    tests = doc["tests"]
    failed = sum(1 for p in tests.values() if p.get("outcome") == "failed")
    parts = ["# Robustness tests",
             f"{len(tests)} test(s) ran robustness audits, {failed} failed. {_md(headline)}"]
    if failed:
        parts.append("Failed: " + ", ".join(_md_code(n) for n, p in tests.items() if p.get("outcome") == "failed"))
    if tests:
        parts.append("## Results\n\nRobust accuracy in % with its 95% Wilson interval; gate: the threshold, "
                     "what was gated (point estimate or lower bound) and the verdict.\n\n"
                     + _md_table(SESSION_HEADERS, session_rows(tests), code_first=True))
    if tests:
        tallies, rows = checks_summary(tests)
        text = ("## Sanity checks\n\nA `fail` means the figure is probably too high and fails the test's "
                "gate (unless `allow_failed_checks=True`); a `warn` asks to read it with care. See "
                "robustaudit's `docs/checks.md`.\n\n" + "\n".join(f"- {_md_code(n)}: {_md(t)}" for n, t in tallies))
        if rows:
            text += "\n\n" + _md_table(CHECK_HEADERS, rows, code_first=True)
        parts.append(text)
    if doc.get("compare"):
        rows, counts = compare_rows(tests)
        gates = ", ".join(doc["compare"]["gates"]) or "none"
        parts.append(f"## Compared with the baseline\n\nbaseline `{Path(doc['compare']['baseline']).name}`; "
                     f"gates: {_md(gates)}. {_md('. '.join(compare_verdict(counts, bool(doc['compare']['gates']))))}. "
                     "lost/gained: samples robust in the baseline and broken now / the reverse; "
                     "p: one-sided exact binomial test of lost vs gained.\n\n"
                     + _md_table(("test", *COMPARISON_HEADERS), rows, code_first=True))
    if links:
        parts.append("## Full reports\n\n" + "\n".join(f"- [{_md_code(k)}]({v})" for k, v in links.items()))
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2rem auto;padding:0 1rem;color:#1f2328}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}th,td{border:1px solid #d1d9e0;padding:.3rem .6rem;
text-align:left}th{background:#f6f8fa}td.fail{color:#d1242f;font-weight:600}td.pass{color:#1a7f37}
td.warn{color:#9a6700;font-weight:600}
.note{color:#59636e}"""


def render_session_html(doc: Mapping[str, Any], *, headline: str = "", links: Mapping[str, str] | None = None) -> str:
    """The session report as one self-contained HTML page."""
    tests = doc["tests"]
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Robustness tests</title>",
             f"<style>{_CSS}</style></head><body><h1>Robustness tests</h1>",
             f'<p class="note">{html.escape(headline)}</p>',
             "<h2>Tests</h2>", _html_table(("test", "outcome", "audits"), _outcome_rows(doc))]
    if tests:
        parts += ["<h2>Results</h2>",
                  '<p class="note">Robust accuracy in % with its 95% Wilson interval.</p>',
                  _html_table(SESSION_HEADERS, session_rows(tests))]
        tallies, rows = checks_summary(tests)
        parts += ["<h2>Sanity checks</h2>",
                  ('<p class="note">A fail means the figure is probably too high and fails the test\'s gate '
                   "(unless allow_failed_checks=True); a warn asks to read it with care. See robustaudit's "
                   "docs/checks.md.</p>"),
                  "<ul>" + "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(t)}</li>" for n, t in tallies)
                  + "</ul>"]
        if rows:
            parts.append(_html_table(CHECK_HEADERS, rows))
    if doc.get("compare"):
        rows, counts = compare_rows(tests)
        verdict = ". ".join(compare_verdict(counts, bool(doc["compare"]["gates"])))
        parts += ["<h2>Compared with the baseline</h2>",
                  (f'<p class="note">baseline {html.escape(str(doc["compare"]["baseline"]))}; gates: '
                   f'{html.escape(", ".join(doc["compare"]["gates"]) or "none")}. {html.escape(verdict)}.</p>'),
                  _html_table(("test", *COMPARISON_HEADERS), rows)]
    if links:
        items = "".join(f'<li><a href="{html.escape(v)}">{html.escape(k)}</a></li>' for k, v in links.items())
        parts += ["<h2>Full reports</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(doc: Mapping[str, Any], out: Path, *, headline: str = "") -> dict[str, Path]:
    """``out/report.md`` and ``out/report.html`` for the session, and the full single-audit reports of
    every test under ``out/audits/<test>/`` (rendered by :mod:`robustaudit.reports`)."""
    import shutil

    from robustaudit.evaluate.result import ResultMatrix
    from robustaudit.reports import write_reports

    if (out / "audits").is_dir():  # ours: rewritten each run, so no stale report of a removed test stays
        shutil.rmtree(out / "audits")
    links_md: dict[str, str] = {}
    links_html: dict[str, str] = {}
    for nodeid, payload in doc["tests"].items():
        audits = payload.get("audits", [])
        for i, audit in enumerate(audits):
            name = nodeid if len(audits) == 1 else f"{nodeid} [audit {i + 1}]"
            folder = Path("audits") / (_slug(nodeid) + ("" if len(audits) == 1 else f"-{i + 1}"))
            write_reports(ResultMatrix.from_dict(audit), out / folder)
            links_md[name] = (folder / "report.md").as_posix()
            links_html[name] = (folder / "report.html").as_posix()
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    write_atomic(paths["markdown"], render_session_markdown(doc, headline=headline, links=links_md))
    write_atomic(paths["html"], render_session_html(doc, headline=headline, links=links_html))
    return paths
