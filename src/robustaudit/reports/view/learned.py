"""The learned attack generators section (``provenance["learned"]``): one row per model × generator × eps
with the held-out success rate and its stored interval, and the transfer table."""

from __future__ import annotations

from typing import Any

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Section, Table
from robustaudit.reports.view.numbers import DASH, format_number, format_percent, format_percent_ci, is_finite

LEARNED_HEADERS = ("model", "generator", "ε", "n", "success % [95% CI]", "targeted %", "mean L∞", "mean L2",
                   "fit s", "images/s", "PGD-10 images/s", "speed-up")


def learned_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("learned")
    return block if isinstance(block, dict) else {}


def _rate_ci(r: Any) -> str:
    if not isinstance(r, dict) or not is_finite(r.get("rate")):
        return DASH
    ci = r.get("ci95")
    if isinstance(ci, list) and len(ci) == 2:
        return format_percent_ci(r["rate"], ci[0], ci[1])
    return format_percent(r["rate"])


def _name(g: dict[str, Any]) -> str:
    target, name = g.get("target"), str(g.get("attack"))
    return name if target is None or "target=" in name else f"{name} (target {target})"


def learned_rows(result: ResultMatrix) -> tuple[tuple[str, ...], ...]:
    """One row per generator: held-out success, norms, fit time, throughput against PGD-10."""
    rows = []
    for g in learned_block(result).get("generators", []):
        s = g.get("success") or {}
        t = g.get("throughput") or {}
        targeted = s.get("targeted") if isinstance(s, dict) else None
        rows.append((str(g.get("model")), _name(g), format_number(g.get("eps"), "g"), str(s.get("n", DASH)),
                     _rate_ci(s), _rate_ci(targeted) if targeted else DASH, format_number(g.get("mean_linf"), ".3f"),
                     format_number(g.get("mean_l2"), ".3f"),
                     "loaded" if g.get("loaded_from") else format_number(g.get("fit_seconds"), ".1f"),
                     format_number(t.get("generator_images_per_s"), ",.0f"),
                     format_number(t.get("pgd_images_per_s"), ",.0f"),
                     f"{t['speedup']:.1f}×" if is_finite(t.get("speedup")) else DASH))
    return tuple(rows)


def _transfer_table(result: ResultMatrix, caption: tuple[str, ...]) -> Table:
    """Success % of each generator's adversarial images on the other models (their clean-correct samples)."""
    generators = learned_block(result).get("generators", [])
    models: list[str] = []
    for g in generators:
        models += [t["model"] for t in g.get("transfer", []) if t.get("model") not in models]
    rows = []
    for g in generators:
        by_model = {t.get("model"): t for t in g.get("transfer", [])}
        if by_model:
            rows.append((str(g.get("model")), _name(g), format_number(g.get("eps"), "g"),
                         *(format_percent(by_model[m].get("rate")) if m in by_model else DASH for m in models)))
    return Table(("crafted on", "generator", "ε", *models), tuple(rows),
                 title="Learned attacks: transfer success %", caption=caption)


def learned_notes(result: ResultMatrix) -> tuple[str, ...]:
    block = learned_block(result)
    if not block.get("generators"):
        return ()
    ref = block.get("reference", {})
    return (
        ("Success: the share of clean-correct held-out samples the fitted generator makes wrong in one forward "
         "pass (its own rate, not the matrix's sweep over eps); targeted: the share of samples not of the target "
         "class it makes the model call the target. Norms: mean perturbation over those samples."),
        (f"Throughput: adversarial images per second of the generator and of PGD-{ref.get('steps', 10)} "
         f"(every step, no early stopping) on the same batch, model and device ({ref.get('device', '?')}), "
         "median of runs timed in turns in this process; fit time is extra, paid once per model and eps."),
        ("Transfer: the same adversarial images scored on the other audited models and on the catalog models "
         "for this data (success among each model's own clean-correct samples). See docs/learned.md."),
    )


def learned_section(result: ResultMatrix) -> Section | None:
    """``## Learned attacks``: notes, the generator table, then ``### Transfer success %``."""
    rows = learned_rows(result)
    if not rows:
        return None
    notes = learned_notes(result)
    table = Table(LEARNED_HEADERS, rows, title="Learned attacks: held-out success, perturbation, throughput",
                  caption=notes[:2])
    transfer = _transfer_table(result, notes[2:])
    subsections = (Section("Transfer success %", table=transfer),) if transfer else ()
    return Section("Learned attacks", notes=notes, table=table, subsections=subsections)
