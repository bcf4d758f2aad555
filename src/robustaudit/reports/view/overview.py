"""What was audited: threat model, data, models, attacks, provenance and the one-line headline.

Plain strings from ``result.provenance`` (falling back to the records), for every renderer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd

from robustaudit.core.threat import NORMS
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Table
from robustaudit.reports.view.detection import detection_block
from robustaudit.reports.view.numbers import DASH, format_eps, format_seconds, format_text

TITLE = "Robustness audit"
# "linf eps=0.2", "l2 eps=0.5", "linf eps=8/255": the form ModelCard.trained_for is written in.
_TRAINED_FOR = re.compile(
    r"^\s*(?:(?P<norm>[a-z0-9]+)\s+)?eps\s*=\s*(?P<num>[0-9.eE+-]+)(?:\s*/\s*(?P<den>[0-9.eE+-]+))?",
    re.IGNORECASE,
)
# Provenance fields shown in the provenance table, in this order, with their labels. The others
# (config, data, threat, models, attacks) have sections of their own.
_PROVENANCE_FIELDS: tuple[tuple[str, str], ...] = (
    ("robustaudit", "robustaudit"), ("torch", "torch"), ("python", "Python"), ("platform", "platform"),
    ("device", "device"), ("seed", "seed"), ("started_at", "started"), ("finished_at", "finished"),
    ("seconds", "wall time"),
)
_SECTIONED = frozenset({"config", "data", "threat", "models", "attacks"})
_SHA_SHORT = 12


def model_cards(result: ResultMatrix) -> dict[str, dict[str, Any]]:
    """``provenance['models']`` keyed by model name (empty when absent or malformed)."""
    cards = result.provenance.get("models") or []
    return {str(c["name"]): c for c in cards if isinstance(c, dict) and c.get("name") is not None}


def training_label(result: ResultMatrix, model: str) -> str:
    """Training from the card: ``"pgd-at (linf eps=0.2)"``, ``"linf eps=0.2"`` or ``—``; a detector row
    (``MODEL+DETECTOR``) reads ``"<the model's training> + squeeze detector"``."""
    fitted = {d.get("row"): d for d in detection_block(result).get("detectors", []) if isinstance(d, dict)}
    if model in fitted:
        base = training_label(result, str(fitted[model].get("model")))
        return f"{base if base != DASH else 'standard'} + {fitted[model].get('detector')} detector"
    card = model_cards(result).get(model, {})
    defense, trained_for = card.get("defense"), card.get("trained_for")
    if defense and trained_for:
        return f"{defense} ({trained_for})"
    return str(defense or trained_for or DASH)


def parse_trained_for(trained_for: str | None) -> tuple[str | None, float] | None:
    """``"linf eps=0.2" -> ("linf", 0.2)``, ``"eps=8/255" -> (None, 0.0314)``; else None."""
    if not trained_for:
        return None
    match = _TRAINED_FOR.match(str(trained_for))
    if match is None:
        return None
    try:
        eps = float(match["num"]) / (float(match["den"]) if match["den"] else 1.0)
    except (ValueError, ZeroDivisionError):
        return None
    norm = match["norm"].lower() if match["norm"] else None
    if norm is not None and norm not in NORMS:
        return None
    return norm, eps


def norm_label(result: ResultMatrix) -> str:
    """The norm(s) of the audit, from the threat provenance or the records."""
    threat = result.provenance.get("threat") or {}
    if isinstance(threat, dict) and threat.get("norm"):
        return str(threat["norm"])
    norms = list(dict.fromkeys(str(n) for n in result.records["norm"].dropna()))
    return ", ".join(norms) if norms else DASH


def sample_count(result: ResultMatrix) -> int | None:
    """The number of samples behind every cell, when it is the same for all of them."""
    counts = {int(n) for n in pd.to_numeric(result.records["n"], errors="coerce").dropna()}
    return counts.pop() if len(counts) == 1 else None


def _format_bounds(bounds: Any) -> str:
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        if all(isinstance(b, (int, float)) for b in bounds):
            return f"[{bounds[0]:g}, {bounds[1]:g}]"
        return f"[{bounds[0]}, {bounds[1]}]"
    return format_text(bounds)


def threat_items(result: ResultMatrix) -> list[tuple[str, str]]:
    """Norm, eps grid and bounds (from provenance, falling back to the records)."""
    threat = result.provenance.get("threat") or {}
    threat = threat if isinstance(threat, dict) else {}
    eps = threat.get("eps") or result.eps_values
    items = [("norm", norm_label(result))]
    if eps:
        items.append(("ε grid", ", ".join(format_eps(float(e)) for e in eps)))
    if threat.get("bounds") is not None:
        items.append(("pixel bounds", _format_bounds(threat["bounds"])))
    return items


def data_items(result: ResultMatrix) -> list[tuple[str, str]]:
    """Dataset name, sample count, classes and sample shape, as far as they are known; the label map of each
    model audited on a subset of its outputs."""
    data = result.provenance.get("data") or {}
    data = data if isinstance(data, dict) else {}
    items: list[tuple[str, str]] = []
    if data.get("name") is not None:
        items.append(("dataset", str(data["name"])))
    n = data.get("n", sample_count(result))
    if n is not None:
        items.append(("samples", str(n)))
    if data.get("num_classes") is not None:
        # the audited samples' classes where they lack some for a reason other than chance (header.audited_classes)
        audited = data.get("classes_audited")
        items.append(("classes", str(data["num_classes"]) if audited is None
                      else f"{audited} of {data['num_classes']} present in the audited samples"))
    shape = data.get("sample_shape")
    if isinstance(shape, (list, tuple)) and shape:
        items.append(("sample shape", "×".join(str(s) for s in shape)))
    from robustaudit.reports.view.labelmap import label_map_items

    return items + label_map_items(result)  # only where a model is audited on a subset of its outputs


def models_table(result: ResultMatrix) -> Table:
    """Every audited model with its card's source, weights hash (short, monospace), training and size."""
    cards = model_cards(result)
    rows = []
    for name in dict.fromkeys([*result.models, *cards]):
        card = cards.get(name, {})
        sha, params = card.get("weights_sha256"), card.get("params")
        rows.append((name, format_text(card.get("source")), str(sha)[:_SHA_SHORT] if sha else DASH,
                     training_label(result, name), f"{params:,}" if isinstance(params, int) else format_text(params)))
    return Table(("model", "source", "weights sha256", "training", "parameters"), tuple(rows),
                 text_columns=4, code_columns=(2,))


def _format_setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def attacks_table(result: ResultMatrix) -> Table:
    """Every attack with its spec and settings (the records' attacks when provenance has none)."""
    listed = [a for a in result.provenance.get("attacks") or [] if isinstance(a, dict)]
    rows = [(a, DASH, DASH) for a in result.attacks] if not listed else []
    for attack in listed:
        settings = attack.get("settings") or {}
        text = (", ".join(f"{k}={_format_setting(v)}" for k, v in settings.items())
                if isinstance(settings, dict) else str(settings))
        rows.append((format_text(attack.get("name")), format_text(attack.get("spec")), text or DASH))
    return Table(("attack", "spec", "settings"), tuple(rows), text_columns=3, code_columns=(1, 2))


def provenance_items(result: ResultMatrix) -> list[tuple[str, str]]:
    """Versions, device, seed and timing, then any other scalar provenance field."""
    prov = result.provenance
    items = []
    for key, label in _PROVENANCE_FIELDS:
        if prov.get(key) is not None:
            value = prov[key]
            items.append((label, f"{format_seconds(float(value))} s" if key == "seconds" else str(value)))
        if key == "seconds" and isinstance(prov.get("stage_seconds"), dict):
            items.append(("time per stage", stage_seconds_text(prov["stage_seconds"])))
        if key == "seconds" and (rate := throughput_text(prov)) is not None:
            items.append(("attack throughput", rate))
        if key == "seconds" and (size := batch_size_text(prov)) is not None:
            items.append(("batch size", size))
    known = {k for k, _ in _PROVENANCE_FIELDS} | _SECTIONED
    for key, value in prov.items():
        # Render what is there: a field added upstream shows up without a change here.
        if key not in known and value is not None and not isinstance(value, (dict, list)):
            items.append((key, str(value)))
    return items


def throughput_text(prov: dict[str, Any]) -> str | None:
    """``"digits-cnn 437 images/s (20 attacked in 0.05 s) · ..."``: per model, the samples its attacks attacked
    over their seconds (``provenance["throughput"]``); ``None`` when absent."""
    block = prov.get("throughput")
    if not isinstance(block, dict) or not block:
        return None
    parts = []
    for model, t in block.items():
        if not isinstance(t, dict):
            continue
        rate = t.get("images_per_second")
        shown = DASH if not isinstance(rate, (int, float)) else (f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}")
        parts.append(f"{model} {shown} images/s ({t.get('attacked_samples')} attacked in "
                     f"{format_seconds(float(t.get('attack_seconds') or 0.0))} s)")
    return " · ".join(parts) or None


def batch_size_text(prov: dict[str, Any]) -> str | None:
    """``"8 (automatic: memory: 171.8 MiB per sample, ... (resnet50))"``: the batch size and why
    (``provenance["batch_sizing"]``); ``None`` when absent."""
    block = prov.get("batch_sizing")
    if not isinstance(block, dict) or "size" not in block:
        return None
    source = {"auto": "automatic", "given": "given", "resumed": "resumed"}.get(str(block.get("source")), "")
    reason = str(block.get("reason") or "")
    return f"{block['size']} ({source}: {reason})" if source == "automatic" else f"{block['size']} ({reason})"


def stage_seconds_text(stages: dict[str, Any]) -> str:
    """``"matrix 3.1 s · detect 4.2 s"``: the stages that took time, in run order (the rest of the wall time is
    opening the models and data, and writing)."""
    parts = [f"{name} {format_seconds(float(v))} s" for name, v in stages.items()
             if isinstance(v, (int, float)) and v >= 0.05]
    return " · ".join(parts) or DASH


def config_json(result: ResultMatrix) -> str | None:
    """The full configuration as indented JSON, or None when provenance has none."""
    config = result.provenance.get("config")
    return None if config is None else json.dumps(config, indent=2, default=str)


def headline(result: ResultMatrix) -> str:
    """One line under the title: what ran, where, how long."""
    prov = result.provenance
    parts = []
    if prov.get("robustaudit"):
        parts.append(f"robustaudit {prov['robustaudit']}")
    parts.append(f"{len(result.models)} model(s) × {len(result.attacks)} attack(s) × {len(result.eps_values)} ε")
    if prov.get("device"):
        parts.append(f"on {prov['device']}")
    if prov.get("seconds") is not None:
        parts.append(f"{format_seconds(float(prov['seconds']))} s")
    if prov.get("finished_at"):
        parts.append(f"finished {prov['finished_at']}")
    return " · ".join(parts)
