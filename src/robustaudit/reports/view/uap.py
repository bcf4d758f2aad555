"""The universal adversarial perturbations section (``provenance["uap"]``): fooling rate against eps beside a
random-noise control of the same norm, with the paired test, and the transfer table."""

from __future__ import annotations

from typing import Any

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.numbers import DASH, format_number, format_percent, format_percent_ci

UAP_HEADERS = ("model", "perturbation", "ε", "n", "fooling % [95% CI]", "noise control % [95% CI]", "gap",
               "p (UAP > noise)", "fit")
UAP_NOTES = (
    ("Fooling rate: the share of the audited (held-out) samples whose prediction on clip(x + v) differs from the "
     "clean prediction (Moosavi-Dezfooli et al. 2017), one perturbation v per model and ε, fitted on the training "
     "split and applied alone to every sample (the matrix's column is robust accuracy, swept over ε on survivors)."),
    ("Noise control: random noise of the same norm on the same samples (L∞: a random sign times ε per pixel; L2: a "
     "random direction of length ε), one keyed draw per sample; p: one-sided exact McNemar test on the samples "
     "fooled by one and not the other."),
)
TRANSFER_NOTE = ("The same v on each other audited model: its fooling rate (prediction changed against that model's "
                 "clean prediction), then that model's noise control in parentheses, on the same samples. "
                 "See docs/uap.md.")
LINKS_INTRO = ("The perturbations, magnified (grey is zero; the `.pt` beside each image is reusable with "
               "`--attack uap:load=FILE.pt`):")


def uap_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("uap")
    return block if isinstance(block, dict) else {}


def _rate_ci(x: Any, ci: Any) -> str:
    if isinstance(ci, list) and len(ci) == 2:
        return format_percent_ci(x, ci[0], ci[1])
    return format_percent(x)


def _fit(r: dict[str, Any]) -> str:
    """How ``v`` was made: loaded (projected when saved at a larger eps) or the fit and its last fit fooling rate."""
    if r.get("loaded_from"):
        return "loaded" + (f", projected from ε={r.get('fitted_eps'):g}" if r.get("projected") else "")
    rates = [x for x in r.get("fit_fooling") or [] if isinstance(x, (int, float))]
    # the fit keeps the pass with the highest fooling rate on its own images
    best = f", fit fooling {format_percent(max(rates))}%" if rates else ""
    return f"{r.get('method', DASH)} on {r.get('fit_n', DASH)} images{best}"


def uap_rows(result: ResultMatrix) -> tuple[tuple[str, ...], ...]:
    """One row per model × perturbation × eps."""
    return tuple(
        (str(r.get("model")), str(r.get("attack")), format_number(r.get("eps"), "g"), str(r.get("n", DASH)),
         _rate_ci(r.get("fooling"), r.get("fooling_ci")), _rate_ci(r.get("control"), r.get("control_ci")),
         format_percent(r.get("gap")), format_number(r.get("p_value"), ".2g"), _fit(r))
        for r in uap_block(result).get("rows", []))


def _transfer_cell(t: dict[str, Any]) -> str:
    """``"0.3 (0.6)"``: the perturbation's fooling % on that model, then that model's noise control %."""
    return f"{format_percent(t.get('fooling'))} ({format_percent(t.get('control'))})"


def _transfer_table(result: ResultMatrix) -> Table:
    rows_in = uap_block(result).get("rows", [])
    models: list[str] = []
    for r in rows_in:
        models += [t["model"] for t in r.get("transfer", []) if t.get("model") not in models]
    rows = []
    for r in rows_in:
        by_model = {t.get("model"): t for t in r.get("transfer", [])}
        if by_model:
            rows.append((str(r.get("model")), str(r.get("attack")), format_number(r.get("eps"), "g"),
                         *(_transfer_cell(by_model[m]) if m in by_model else DASH for m in models)))
    return Table(("crafted on", "perturbation", "ε", *models), tuple(rows), text_columns=2,
                 title="Universal perturbations: transfer fooling % (noise control %)", caption=(TRANSFER_NOTE,))


def uap_section(result: ResultMatrix) -> Section | None:
    """``## Universal adversarial perturbations``: notes, the table, then ``### Transfer``."""
    rows = uap_rows(result)
    if not rows:
        return None
    table = Table(UAP_HEADERS, rows, text_columns=2,
                  title="Universal perturbations: fooling % vs a noise control of the same norm", caption=UAP_NOTES)
    transfer = _transfer_table(result)
    links = tuple((f"{r['model']} / {r['attack']} at ε={r['eps']:g}", str(r["artifact"])[:-3] + ".png")
                  for r in uap_block(result).get("rows", []) if str(r.get("artifact") or "").endswith(".pt"))
    subsections = (Section("Transfer fooling %", notes=(TRANSFER_NOTE,), table=transfer),) if transfer else ()
    return Section("Universal adversarial perturbations", notes=UAP_NOTES, table=table, links=links,
                   links_intro=LINKS_INTRO if links else "", subsections=subsections,
                   images=(Image("uap_curve", "fooling rate vs ε, universal perturbation and noise control"),))
