"""The label map of a model audited on a subset of its outputs (``provenance["models"][i]["class_map"]``,
:mod:`robustaudit.evaluate.classmap`): one line per model that has one, for every renderer; nothing
where no map is in use."""

from __future__ import annotations

from typing import Any

from robustaudit.evaluate.result import ResultMatrix

#: Pairs shown per line; the rest are counted (all of them are in results.json).
SHOWN = 8
LABEL = "label map"
_HOW = {"given": "--class-map", "by name": "matched by name",
        "identity": "the first outputs in class order (no class names to match)"}


def label_map_items(result: ResultMatrix) -> list[tuple[str, str]]:
    """``("label map", "tv-r18: cat → 281 (tabby), dog → 207; --class-map; 2 of 1000 outputs")`` per model
    with a map (the data's class → the model output it is audited on)."""
    items = []
    for card in result.provenance.get("models") or []:
        doc = card.get("class_map") if isinstance(card, dict) else None
        if isinstance(doc, dict) and isinstance(doc.get("map"), dict):
            items.append((LABEL, f"{card.get('name')}: {_line(doc)}"))
    return items


def _line(doc: dict[str, Any]) -> str:
    pairs, names = list(doc["map"].items()), doc.get("output_names") or {}
    shown = [f"{c} → {k}" + (f" ({names[c]})" if names.get(c) not in (None, c) else "") for c, k in pairs[:SHOWN]]
    more = f", … ({len(pairs) - SHOWN} more in results.json)" if len(pairs) > SHOWN else ""
    how = _HOW.get(str(doc.get("how")), str(doc.get("how")))
    total = doc.get("outputs")
    return f"{', '.join(shown)}{more}; {how}; audited on {len(pairs)} of the model's {total} outputs"
