"""The text of each sanity check's section of ``docs/checks.md``, to inline in the HTML report.

A link such as ``docs/checks.md#loss-gap`` is relative, so it breaks once the report leaves the source tree
(the project has no published documentation site to link to absolutely). The report therefore carries the
sections it refers to, as anchors of its own. The file is read from the source checkout the package runs
from (the README's ``pip install -e .``); where it is absent (an installed wheel) the report shows the
reference as plain text, never a broken link.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

#: ``src/robustaudit/reports/view/checkdocs.py`` -> the checkout's ``docs/checks.md``.
CHECKS_MD = Path(__file__).resolve().parents[4] / "docs" / "checks.md"
_HEADING = re.compile(r"^#{2,3} ", re.M)


@lru_cache(maxsize=4)
def _sections(path: Path) -> dict[str, tuple[str, ...]]:
    """``check id -> paragraphs`` of every ``### id`` (or ``### a, b``) section of ``path``; a prose section
    (``## Upper bounds``) under its slug (``upper-bounds``), as Markdown renderers anchor it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for block in _HEADING.split(text)[1:]:
        heading, _, body = block.partition("\n")
        paragraphs = tuple(" ".join(p.split()) for p in body.strip().split("\n\n") if p.strip())
        for check_id in (h.strip().strip("`") for h in heading.split(",")):
            if re.fullmatch(r"[a-z0-9-]+", check_id):
                out[check_id] = paragraphs
        slug = "-".join(heading.strip().lower().split())
        if re.fullmatch(r"[a-z0-9-]+", slug):
            out.setdefault(slug, paragraphs)
    return out


def check_doc(check_id: str, path: Path = CHECKS_MD) -> tuple[str, ...]:
    """The paragraphs of ``check_id``'s section (Markdown source text), or ``()`` when there is none."""
    return _sections(path).get(check_id, ())


#: the slug of docs/checks.md's prose section on upper bounds (``## Upper bounds``)
UPPER_BOUNDS = "upper-bounds"


def carried_docs(check_ids: list[str], unreliable: bool) -> dict[str, tuple[str, ...]]:
    """The sections a report carries: each listed check's, then "Upper bounds" where a headline is one."""
    docs = {i: check_doc(i) for i in dict.fromkeys(check_ids) if check_doc(i)}
    if unreliable and check_doc(UPPER_BOUNDS):
        docs[UPPER_BOUNDS] = check_doc(UPPER_BOUNDS)
    return docs


def doc_reference(slug: str) -> str:
    """Where a terminal reader finds a section: the checkout's file by its absolute path (a relative
    ``docs/checks.md`` means nothing outside the checkout's root), else the relative name."""
    return f"{CHECKS_MD}#{slug}" if CHECKS_MD.is_file() else f"docs/checks.md#{slug}"
