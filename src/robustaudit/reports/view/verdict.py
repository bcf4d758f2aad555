"""The reviewer's first screen: the verdict (the headline worst case per model, reliable or an upper bound),
what the attacks were allowed to do, and which models the examples cover.

Reliability comes from ``results.json``'s top-level ``reliability`` (``{model: {"reliable": bool, "reasons":
[str]}}``), read defensively: a result written before it existed, or without an entry for a model, counts as
reliable, as its figures did then. An upper bound is written ``≤ 89.0`` and is never styled as a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view.detection import detection_block
from robustaudit.reports.view.matrix import Cell, format_cell, summary_eps, summary_rows
from robustaudit.reports.view.numbers import DASH, format_eps, format_percent

#: Verdict statuses: a figure the checks found nothing against, an upper bound, no sanity check at all, and a
#: figure too few samples stand behind (near chance, or under 30 clean-correct) for it to say anything.
RELIABLE, UPPER_BOUND, UNCHECKED, MEANINGLESS = "reliable", "upper bound", "not checked", "not meaningful"
#: How each kind of attack (provenance ``attacks[].kind``) may look at the model.
ACCESS = {"fixed-eps": "white-box (gradients)", "minimal-norm": "white-box (gradients)",
          "universal": "white-box (gradients), one perturbation for all inputs",
          "score-based": "black-box (scores only)", "decision-based": "black-box (labels only)",
          "transfer": "transfer (crafted on surrogate models)"}


@dataclass(frozen=True)
class Reliability:
    """Whether a model's headline figure is a measurement or only an upper bound, and why."""

    reliable: bool = True
    reasons: tuple[str, ...] = ()

    @property
    def reason_text(self) -> str:
        return "; ".join(self.reasons)


def reliability_of(result: ResultMatrix) -> dict[str, Reliability]:
    """``model -> Reliability`` from ``result.reliability`` (or ``provenance['reliability']``); models
    without an entry are absent (read them as reliable)."""
    block = getattr(result, "reliability", None)
    if not isinstance(block, dict) or not block:
        block = result.provenance.get("reliability")
    out: dict[str, Reliability] = {}
    for model, entry in (block or {}).items() if isinstance(block, dict) else ():
        if isinstance(entry, dict):
            reasons = entry.get("reasons") or []
            reasons = [reasons] if isinstance(reasons, str) else reasons
            out[str(model)] = Reliability(entry.get("reliable", True) is not False, tuple(str(r) for r in reasons))
    return out


def bounded_text(cell: Cell | None, reliability: Reliability | None) -> str:
    """``"60.7 [55.6–65.6]"`` for a measurement, ``"≤ 89.0 (upper bound: loss-gap failed)"`` for an upper
    bound (its interval says nothing about the model, only about the attack that fell short)."""
    if reliability is None or reliability.reliable or cell is None:
        return format_cell(cell)
    reason = f": {reliability.reason_text}" if reliability.reasons else ""
    return f"≤ {format_percent(cell.accuracy)} (upper bound{reason})"


@dataclass(frozen=True)
class VerdictRow:
    """One model's headline: its worst case at the verdict's eps, and whether it can be trusted."""

    model: str
    cell: Cell | None
    status: str  # RELIABLE, UPPER_BOUND, UNCHECKED or MEANINGLESS
    text: str  # the figure as shown: "60.7 [55.6–65.6]" or "≤ 89.0 (upper bound: ...)"
    note: str  # the status in words: "reliable", "upper bound: loss-gap failed", "no sanity check ran",
    #            "not meaningful: only 12 clean-correct samples"

    @property
    def accuracy(self) -> float:
        """The figure for styling; NaN for an upper bound or a meaningless figure, never coloured as a pass."""
        return self.cell.accuracy if self.cell is not None and self.status in (RELIABLE, UNCHECKED) else math.nan


@dataclass(frozen=True)
class VerdictView:
    """The verdict block: a lead sentence and one row per model."""

    lead: str
    rows: tuple[VerdictRow, ...]

    @property
    def upper_bounds(self) -> tuple[VerdictRow, ...]:
        return tuple(r for r in self.rows if r.status == UPPER_BOUND)


def verdict_row(model: str, cell: Cell | None, reliability: Reliability | None, checked: bool,
                meaningless: tuple[str, ...] = ()) -> VerdictRow:
    """A model's verdict: an upper bound where the reliability says so; not meaningful where too few samples
    stand behind the figure (``meaningless``: why); unchecked where no check ran."""
    text = bounded_text(cell, reliability)
    if reliability is not None and not reliability.reliable:
        return VerdictRow(model, cell, UPPER_BOUND, text, f"upper bound: {reliability.reason_text or 'see checks'}")
    if meaningless:
        return VerdictRow(model, cell, MEANINGLESS, text, f"{MEANINGLESS}: {'; '.join(meaningless)}")
    if not checked:
        return VerdictRow(model, cell, UNCHECKED, text, "no sanity check ran")
    return VerdictRow(model, cell, RELIABLE, text, RELIABLE)


def verdict_view(result: ResultMatrix) -> VerdictView:
    """The classification verdict: per model the worst case at the clean-vs-adversarial table's eps."""
    eps = summary_eps(result)
    reliability = reliability_of(result)
    checked = _checked_models(result)
    meaningless = meaningless_of(result)
    rows = tuple(verdict_row(s.model, s.adversarial, reliability.get(s.model), checked is None or s.model in checked,
                             tuple(meaningless.get(s.model, ())))
                 for s in summary_rows(result, eps))
    n = {int(r) for r in result.records["n"].dropna()} if not result.records.empty else set()
    lead = (f"Robust accuracy in % under the {WORST_CASE} over every attack at ε={format_eps(eps)} "
            f"({threat_norm(result)}), with its 95% Wilson interval"
            + (f"; n = {n.pop()} samples per model." if len(n) == 1 else "."))
    return VerdictView(lead, rows)


def meaningless_of(result: ResultMatrix) -> dict[str, list[str]]:
    """``model -> [reason]`` for the models whose figures too few samples stand behind (near chance, under 30
    clean-correct), from the matrix and the data's class count; empty when the count was not recorded."""
    from robustaudit.evaluate.header import meaningless_reasons

    data = result.provenance.get("data") or {}
    classes = data.get("num_classes") if isinstance(data, dict) else None
    if not isinstance(classes, int) or result.records.empty:
        return {}
    return meaningless_reasons(result.records, classes)


def _checked_models(result: ResultMatrix) -> set[str] | None:
    """The models a sanity check looked at (a detector row: its classifier's); None when a check covered
    the whole audit."""
    if any(c.get("model") is None for c in result.checks):
        return None
    checked = {str(c.get("model")) for c in result.checks}
    detectors = detection_block(result).get("detectors", [])
    return checked | {str(d.get("row")) for d in detectors if isinstance(d, dict) and str(d.get("model")) in checked}


def threat_norm(result: ResultMatrix) -> str:
    threat = result.provenance.get("threat") or {}
    return str(threat.get("norm")) if isinstance(threat, dict) and threat.get("norm") else DASH


def _targeted(attack: dict[str, Any]) -> bool:
    settings = attack.get("settings") if isinstance(attack.get("settings"), dict) else {}
    spec = str(attack.get("spec") or attack.get("name") or "")
    return any(settings.get(k) not in (None, False) for k in ("target", "targeted", "targets")) or "target" in spec


def access_text(result: ResultMatrix) -> str | None:
    """What the attacks may see and aim at: ``"white-box (gradients), untargeted: fgsm, pgd"``; groups
    of attacks with different access are joined by ``"; "``. None when provenance lists no attack."""
    listed = [a for a in result.provenance.get("attacks") or [] if isinstance(a, dict) and a.get("name")]
    if not listed:
        return None
    groups: dict[str, list[str]] = {}
    for attack in listed:
        access = ACCESS.get(str(attack.get("kind")), "access not recorded")
        aim = "targeted" if _targeted(attack) else "untargeted"
        groups.setdefault(f"{access}, {aim}", []).append(str(attack["name"]))
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())


def examples_note(result: ResultMatrix) -> str | None:
    """A sentence when the example images cover only some of the audited models (None otherwise)."""
    shown = list(dict.fromkeys(str(e.model) for e in result.examples))
    models = result.models
    if not shown or set(models) <= set(shown):
        return None
    return (f"Examples cover {len(shown)} of {len(models)} models ({', '.join(shown)}): the others have no "
            "stored example images.")
