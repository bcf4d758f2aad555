"""Whether a model's figures can be trusted: an unanswered failing sanity check makes them upper bounds.

A ``fail`` verdict says the attacks probably underestimate the model (probabilities instead of logits,
masked gradients, a broken attack...), so its robust accuracy is only an upper bound, unless
``--checks full`` ran an adaptive evaluation that answers the failure and merged it into the worst case
(the verdict then carries ``answered_by``: the attack columns that answer it). Pure functions of the
verdict dicts of ``results.json`` (:meth:`robustaudit.checks.verdict.Verdict.to_dict`); standard library
only, so the pytest plugin's gates and the reports use the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["detector_bases", "is_unanswered", "reasons_text", "reliability_of", "unanswered"]


def is_unanswered(verdict: Mapping[str, Any]) -> bool:
    """A ``fail`` verdict with no (non-empty) ``answered_by``: nothing in the worst case answers it."""
    return verdict.get("status") == "fail" and not verdict.get("answered_by")


def unanswered(checks: Iterable[Mapping[str, Any]], model: str | None = None) -> list[Mapping[str, Any]]:
    """The unanswered failing verdicts (of ``model`` and the audit-wide ones when ``model`` is given)."""
    return [c for c in checks if is_unanswered(c) and (model is None or c.get("model") in (None, model))]


def reliability_of(checks: Sequence[Mapping[str, Any]], models: Sequence[str],
                   bases: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per model: ``{"reliable": bool, "reasons": ["loss-gap failed", ...]}``.

    A model is unreliable when one of its own verdicts, or an audit-wide one (``model`` None), failed
    and is unanswered. ``bases`` maps a row that wraps a checked model (a detector row
    ``MODEL+DETECTOR``) to that model: the row's attacks go through the same gradients, so it inherits
    the model's verdicts. A model without verdicts (checks off, or not checked) is reliable with no
    reasons: not checked is not the same as failed; the reports say when checks were off.
    """
    bases = bases or {}
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        failed = unanswered(checks, bases.get(model, model))
        reasons = list(dict.fromkeys(f"{c.get('id')} failed" for c in failed))
        out[model] = {"reliable": not reasons, "reasons": reasons}
    return out


def reasons_text(reasons: Sequence[str]) -> str:
    """``"upper bound: loss-gap failed, random-noise failed"`` (the one line every rendering shows)."""
    return "upper bound: " + ", ".join(reasons)


def detector_bases(provenance: Mapping[str, Any]) -> dict[str, str]:
    """``MODEL+DETECTOR`` row -> ``MODEL``, from ``provenance["detection"]["detectors"]`` (empty without)."""
    block = provenance.get("detection") if isinstance(provenance, Mapping) else None
    fitted = block.get("detectors", []) if isinstance(block, Mapping) else []
    return {str(d["row"]): str(d["model"]) for d in fitted
            if isinstance(d, Mapping) and d.get("row") is not None and d.get("model") is not None}
