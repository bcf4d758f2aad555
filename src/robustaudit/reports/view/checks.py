"""The sanity-check verdicts (``result.checks``) as rows every renderer shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.numbers import DASH

#: Status -> marker, so a failing check stands out in a long job summary. Plain symbols (Dingbats and
#: ASCII), not emoji: they render with any text font, where an emoji shows as an empty box without one.
STATUS_MARK = {"pass": "✓", "warn": "!", "fail": "✗"}
CHECK_HEADERS = ("status", "check", "model", "message", "doc")


@dataclass(frozen=True)
class CheckRow:
    """One verdict: ``doc_href`` is the doc as a link target, or None where it must stay text."""

    status: str
    mark: str
    id: str
    model: str
    message: str
    doc: str | None
    doc_href: str | None


def doc_href(doc: Any) -> str | None:
    """A check's doc as a link target: web and relative addresses only.

    Autoescaping stops markup, not ``javascript:`` URLs, so other schemes are shown as text.
    """
    if not doc:
        return None
    scheme = urlsplit(str(doc)).scheme.lower()
    return str(doc) if scheme in ("", "http", "https") else None


def check_rows(result: ResultMatrix) -> list[CheckRow]:
    """Every verdict, in the order the checks ran; a failure an adaptive evaluation answered says by what."""
    return [CheckRow(status=str(c.get("status", DASH)), mark=STATUS_MARK.get(str(c.get("status")), ""),
                     id=str(c.get("id", DASH)), model=str(c.get("model") or DASH),
                     message=_message(c) + _spread(result, c),
                     doc=str(c["doc"]) if c.get("doc") else None, doc_href=doc_href(c.get("doc")))
            for c in result.checks]


def _message(check: dict[str, Any]) -> str:
    """The verdict's message; ``answered_by`` (the adaptive columns merged into the worst case) appended."""
    answered = check.get("answered_by")
    message = str(check.get("message", ""))
    return f"{message} (answered by {', '.join(map(str, answered))} in the worst case)" if answered else message


#: the checks of randomness: their answer (EOT) is judged over repeated draws, whose spread their row shows
_RANDOMNESS = ("deterministic", "eps-zero")


def _spread(result: ResultMatrix, check: dict[str, Any]) -> str:
    """For a randomness check answered by EOT columns judged over repeated draws
    (``provenance["verdict_spread"]``): per eps, the answering column with the fewest samples robust in every
    draw (the figure), and the range a single draw would have reported."""
    answered = check.get("answered_by") or ()
    if check.get("id") not in _RANDOMNESS or not answered:
        return ""
    rows = [s for s in result.provenance.get("verdict_spread", [])
            if s.get("model") == check.get("model") and s.get("attack") in answered]
    worst: dict[float, dict[str, Any]] = {}
    for s in rows:
        if s["eps"] not in worst or s["robust_every_draw"] < worst[s["eps"]]["robust_every_draw"]:
            worst[s["eps"]] = s
    parts = [f"ε={e:g}: {s['robust_every_draw']}/{s['n']} robust in all {s['repeats']} draws, "
             f"{s['per_draw_min']}–{s['per_draw_max']} in a single draw" for e, s in sorted(worst.items())]
    return f"; verdict over repeated draws ({', '.join(parts)})" if parts else ""


def checks_tally(checks: list[dict[str, Any]]) -> str:
    """``"3 pass, 1 warn, 0 fail"``."""
    counts = {s: 0 for s in ("pass", "warn", "fail")}
    for check in checks:
        status = str(check.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def checks_line(result: ResultMatrix, attention: bool, meaningless: Sequence[str] = ()) -> str:
    """The terminal's closing line: the tally, whether everything passed, where the details are.
    ``meaningless``: models whose figures too few samples stand behind; no figure of theirs "passed"."""
    level = result.provenance.get("checks", {}).get("level")
    said = "" if attention or meaningless else " — every figure passed"
    if meaningless:
        said = (f" — but the figures of {', '.join(meaningless)} are not meaningful (clean accuracy near "
                "chance or under 30 clean-correct samples: see the warnings)")
    return (f"Sanity checks{f' ({level})' if level else ''}: {checks_tally(result.checks)}{said}"
            "; details in report.md, see docs/checks.md")
