"""The transferability section (``provenance["transfer"]``): a source × target table of success rates with their
stored 95% intervals, the white-box diagonal marked, and a heat map in HTML."""

from __future__ import annotations

from typing import Any

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.numbers import DASH, format_eps, format_percent, format_percent_ci

TITLE = "Transferability"
#: The mark of a diagonal cell (crafted and scored on the same model: the white-box figure).
WHITE_BOX = "*"
HEATMAP_ALT = "transfer success %: rows crafted on, columns scored on"


def transfer_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("transfer")
    return block if isinstance(block, dict) else {}


def transfer_grid(result: ResultMatrix) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    """``(sources, targets, cells by (source, target))`` of the block (empty when there is none)."""
    block = transfer_block(result)
    cells = {(c["source"], c["target"]): c for c in block.get("cells", [])}
    return list(block.get("sources", [])), list(block.get("models", [])), cells


def _text(cell: dict[str, Any] | None) -> str:
    if cell is None or not cell.get("n"):
        return DASH
    lo, hi = cell.get("ci") or (None, None)
    text = f"{format_percent_ci(cell['rate'], lo, hi)} ({cell['n']})"
    return f"{text} {WHITE_BOX}" if cell.get("white_box") else text


def transfer_rows(result: ResultMatrix) -> tuple[tuple[str, ...], ...]:
    """One row per source model: its points' success % [95% CI] (samples) on each target, the diagonal marked."""
    sources, targets, cells = transfer_grid(result)
    return tuple((s, *(_text(cells.get((s, t))) for t in targets)) for s in sources)


def _mean_off_diagonal(cells: dict[tuple[str, str], dict[str, Any]], key: int, name: str) -> float | None:
    """Pooled off-diagonal success of one source (``key`` 0) or against one target (``key`` 1)."""
    picked = [c for k, c in cells.items() if k[key] == name and not c.get("white_box") and c.get("n")]
    n = sum(c["n"] for c in picked)
    return sum(c["fooled"] for c in picked) / n if n else None


def _reading(result: ResultMatrix) -> str:
    """One sentence: which model's points transfer best and which model they fool least."""
    sources, targets, cells = transfer_grid(result)
    out = {s: _mean_off_diagonal(cells, 0, s) for s in sources}
    into = {t: _mean_off_diagonal(cells, 1, t) for t in targets}
    out = {k: v for k, v in out.items() if v is not None}
    into = {k: v for k, v in into.items() if v is not None}
    if not out or not into:
        return ""
    best, hardest = max(out, key=out.__getitem__), min(into, key=into.__getitem__)
    return (f"Points crafted on {best} transfer best ({format_percent(out[best])}% of the other models' samples, "
            f"pooled); {hardest} is fooled least by the others' points ({format_percent(into[hardest])}%).")


def transfer_notes(result: ResultMatrix) -> tuple[str, ...]:
    block = transfer_block(result)
    if not block.get("cells"):
        return ()
    attack, eps = block.get("attack"), format_eps(block.get("eps"))
    others = ", ".join(f"{name} {format_percent(v)}%" for name, v in block.get("candidates", {}).items()
                       if name != attack)
    notes = [
        (f"Each row: {attack} run on that model at eps={eps} ({block.get('norm')}) on every sample it classifies "
         f"correctly; each cell: of the samples both models classify correctly (their number in parentheses), "
         f"the share whose adversarial point makes the column's model wrong, % [95% Wilson interval]. "
         f"{WHITE_BOX}: the diagonal, crafted and scored on the same model (the white-box figure)."),
        (f"Attack: the audit's strongest at eps={eps}, {attack} (robust accuracy {format_percent(block.get('candidates', {}).get(attack))}% "
         "of the clean-correct samples, pooled over the models" + (f"; {others}" if others else "") + ")."),
    ]
    differ = [c for c in block["cells"] if c.get("white_box") and isinstance(c.get("matrix"), dict)
              and c["matrix"].get("fooled") != c.get("fooled")]
    if differ:
        notes.append("The matrix's cell at this eps sweeps the smaller radii first (a worst case), so it breaks more "
                     "than one run at eps: " + "; ".join(
                         f"{c['source']} {format_percent(c['matrix']['fooled'] / c['matrix']['n'])}% there, "
                         f"{format_percent(c['rate'])}% here" for c in differ if c["matrix"].get("n")) + ".")
    reading = _reading(result)
    if reading:
        notes.append(reading)
    return tuple(notes)


def transfer_section(result: ResultMatrix) -> Section | None:
    """``## Transferability``: notes, the table (rows crafted on, columns scored on) and the heat map; a skipped
    matrix is one line."""
    block = transfer_block(result)
    if not block:
        return None
    if block.get("skipped"):
        return Section(TITLE, paragraph=f"Skipped: {block['skipped']}.")
    rows = transfer_rows(result)
    if not rows:
        return None
    notes = transfer_notes(result)
    headers = ("crafted on / scored on", *block.get("models", []))
    table = Table(headers, rows, text_columns=1,
                  title=f"Transferability: success % [95% CI] (samples) of {block.get('attack')} at "
                        f"eps={format_eps(block.get('eps'))}, {WHITE_BOX} white-box",
                  caption=notes[:1])
    return Section(TITLE, notes=notes, table=table, images=(Image("transfer_heatmap", HEATMAP_ALT),))
