"""The report as GitHub-flavoured Markdown (readable as a CI job summary), and the section model
(threat, data, models, attacks, provenance as plain strings) that the HTML report shares.
"""

from __future__ import annotations


import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.terminal import (
    CI_LABEL,
    DASH,
    FLOP_NOTE,
    PASSES_NOTE,
    TIE_ALPHA,
    WORST_CASE_MEANING,
    checks_tally,
    cost_caption,
    cost_rows,
    format_bytes,
    format_cell,
    format_count,
    format_eps,
    format_latency,
    format_parameters,
    format_passes,
    format_percent,
    format_seconds,
    has_passes,
    matrix_rows,
    model_cards,
    norm_label,
    sample_count,
    summary_eps,
    summary_rows,
    ties,
    training_label,
)

TITLE = "Robustness audit"
#: Status -> marker, so a failing check stands out in a long job summary.
STATUS_MARK = {"pass": "✅", "warn": "⚠️", "fail": "❌"}

# Provenance fields shown in the provenance table, in this order, with their labels. The others
# (config, data, threat, models, attacks) have sections of their own.
_PROVENANCE_FIELDS: tuple[tuple[str, str], ...] = (
    ("robustaudit", "robustaudit"),
    ("torch", "torch"),
    ("python", "Python"),
    ("platform", "platform"),
    ("device", "device"),
    ("seed", "seed"),
    ("started_at", "started"),
    ("finished_at", "finished"),
    ("seconds", "wall time"),
)
_SECTIONED = frozenset({"config", "data", "threat", "models", "attacks"})
_SHA_SHORT = 12


# ------------------------------------------------------------------------------- section model
@dataclass(frozen=True)
class ModelInfo:
    """A model as the report lists it (plain strings; renderers escape)."""

    name: str
    source: str
    sha256: str
    training: str
    params: str


@dataclass(frozen=True)
class AttackInfo:
    """An attack as the report lists it: ``settings`` is ``"steps=40, step_size=0.01"``."""

    name: str
    spec: str
    settings: str


def _text(v: Any) -> str:
    return DASH if v is None or v == "" else str(v)


def _format_bounds(bounds: Any) -> str:
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        return (
            f"[{bounds[0]:g}, {bounds[1]:g}]"
            if all(isinstance(b, (int, float)) for b in bounds)
            else f"[{bounds[0]}, {bounds[1]}]"
        )
    return _text(bounds)


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
    """Dataset name, sample count, classes and sample shape, as far as they are known."""
    data = result.provenance.get("data") or {}
    data = data if isinstance(data, dict) else {}
    items: list[tuple[str, str]] = []
    if data.get("name") is not None:
        items.append(("dataset", str(data["name"])))
    n = data.get("n", sample_count(result))
    if n is not None:
        items.append(("samples", str(n)))
    if data.get("num_classes") is not None:
        items.append(("classes", str(data["num_classes"])))
    shape = data.get("sample_shape")
    if isinstance(shape, (list, tuple)) and shape:
        items.append(("sample shape", "×".join(str(s) for s in shape)))
    return items


def model_infos(result: ResultMatrix) -> list[ModelInfo]:
    """Every audited model with its card's source, weights hash, training and size."""
    cards = model_cards(result)
    names = list(dict.fromkeys([*result.models, *cards]))
    out = []
    for name in names:
        card = cards.get(name, {})
        sha = card.get("weights_sha256")
        params = card.get("params")
        out.append(
            ModelInfo(
                name=name,
                source=_text(card.get("source")),
                sha256=str(sha)[:_SHA_SHORT] if sha else DASH,
                training=training_label(result, name),
                params=f"{params:,}" if isinstance(params, int) else _text(params),
            )
        )
    return out


def _format_setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def attack_infos(result: ResultMatrix) -> list[AttackInfo]:
    """Every attack with its spec and settings (the records' attacks when provenance has none)."""
    listed = [a for a in result.provenance.get("attacks") or [] if isinstance(a, dict)]
    if not listed:
        return [AttackInfo(a, DASH, DASH) for a in result.attacks]
    out = []
    for attack in listed:
        settings = attack.get("settings") or {}
        text = (
            ", ".join(f"{k}={_format_setting(v)}" for k, v in settings.items())
            if isinstance(settings, dict)
            else str(settings)
        )
        out.append(AttackInfo(_text(attack.get("name")), _text(attack.get("spec")), text or DASH))
    return out


def provenance_items(result: ResultMatrix) -> list[tuple[str, str]]:
    """Versions, device, seed and timing, then any other scalar provenance field."""
    prov = result.provenance
    items = []
    for key, label in _PROVENANCE_FIELDS:
        if prov.get(key) is None:
            continue
        value = prov[key]
        items.append(
            (label, f"{format_seconds(float(value))} s" if key == "seconds" else str(value))
        )
    known = {k for k, _ in _PROVENANCE_FIELDS} | _SECTIONED
    for key, value in prov.items():
        # Render what is there: a field added upstream shows up without a change here.
        if key not in known and value is not None and not isinstance(value, (dict, list)):
            items.append((key, str(value)))
    return items


def config_json(result: ResultMatrix) -> str | None:
    """The full configuration as indented JSON, or None when provenance has none."""
    config = result.provenance.get("config")
    if config is None:
        return None
    return json.dumps(config, indent=2, default=str)


def headline(result: ResultMatrix) -> str:
    """One line under the title: what ran, where, how long."""
    prov = result.provenance
    parts = []
    if prov.get("robustaudit"):
        parts.append(f"robustaudit {prov['robustaudit']}")
    parts.append(
        f"{len(result.models)} model(s) × {len(result.attacks)} attack(s) × "
        f"{len(result.eps_values)} ε"
    )
    if prov.get("device"):
        parts.append(f"on {prov['device']}")
    if prov.get("seconds") is not None:
        parts.append(f"{format_seconds(float(prov['seconds']))} s")
    if prov.get("finished_at"):
        parts.append(f"finished {prov['finished_at']}")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------ markdown
_MD_SPECIAL = re.compile(r"([\\`*|<>&])")


def md_escape(text: Any) -> str:
    """Text safe in a Markdown table cell: punctuation that formats, tags or splits cells is
    backslash-escaped, ``](`` cannot open a link, and newlines become spaces. Brackets alone stay
    as they are, so ``[0, 1]`` reads as written in the raw file too."""
    escaped = _MD_SPECIAL.sub(r"\\\1", str(text)).replace("](", "]\\(")
    return escaped.replace("\r", " ").replace("\n", " ")


def md_code(text: Any) -> str:
    """An inline code span; in a GFM table ``|`` must be escaped even inside code."""
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A GFM table of already-escaped cells; columns in ``right`` are right-aligned (numbers)."""
    rule = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fence(text: str, lang: str) -> str:
    # A fence longer than any backtick run inside, so a config value cannot close it early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _items(items: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"- **{md_escape(k)}:** {md_escape(v)}" for k, v in items)


def _matrix_section(result: ResultMatrix) -> str:
    n = sample_count(result)
    grid = result.eps_values
    headers = ["model", "attack", "clean", *(f"ε={format_eps(e)}" for e in grid), "seconds"]
    rows = []
    for row in matrix_rows(result):
        cells = [format_percent(row.clean), *(format_cell(c) for c in row.cells)]
        cells.append(format_seconds(row.seconds))
        if row.worst_case:
            cells = [f"**{c}**" for c in cells]
        attack = f"**{md_escape(row.attack)}**" if row.worst_case else md_escape(row.attack)
        rows.append([md_escape(row.model), attack, *cells])
    note = (
        f"Robust accuracy in % with its {CI_LABEL} in brackets; clean accuracy in %."
        + (f" n = {n} samples per cell." if n is not None else "")
        + f" **{WORST_CASE}**: {WORST_CASE_MEANING}."
    )
    right = range(2, len(headers))
    return f"## Robust accuracy ({md_escape(norm_label(result))})\n\n{note}\n\n" + _table(
        headers, rows, right=list(right)
    )


def _summary_section(result: ResultMatrix) -> str:
    eps = summary_eps(result)
    rows = [
        [md_escape(r.model), md_escape(r.training), r.clean.text, format_cell(r.adversarial)]
        for r in summary_rows(result, eps)
    ]
    return (
        f"## Clean vs adversarial accuracy (ε={format_eps(eps)})\n\n"
        f"Test accuracy in % with its {CI_LABEL}; adversarial = {WORST_CASE} over all attacks "
        f"at ε={format_eps(eps)}.\n\n"
        + _table(["model", "training", "clean test", "adversarial test"], rows, right=[2, 3])
    )


def norm_rows(result: ResultMatrix) -> list[list[str]]:
    """Rows of the smallest-adversarial-norm table: model, attack, found/attacked, median, quartiles."""
    rows = []
    for r in result.norm_summary().itertuples(index=False):
        fmt = lambda v: f"{v:.4g}" if math.isfinite(v) else "> budget"  # noqa: E731 - local formatter
        rows.append([str(r.model), str(r.attack), f"{r.found}/{r.n}", fmt(r.median), f"{fmt(r.q25)} – {fmt(r.q75)}"])
    return rows


NORM_NOTE = ("Minimal-norm attacks search for the smallest adversarial perturbation of each clean-correct "
             "sample: one run gives the whole robustness curve. A sample where none was found counts as "
             "larger than any ε.")


def _norms_section(result: ResultMatrix) -> str:
    rows = [[md_escape(c) for c in row[:2]] + row[2:] for row in norm_rows(result)]
    return (f"## Smallest adversarial perturbation ({md_escape(norm_label(result))})\n\n{NORM_NOTE}\n\n"
            + _table(["model", "attack", "found", "median norm", "25%–75%"], rows, right=[2, 3, 4]))


def _ties_section(result: ResultMatrix) -> str:
    found = ties(result)
    head = ("## Differences within noise\n\nEvery figure is measured on the same samples, so rows are "
            f"compared per sample (exact McNemar test, two-sided, α={TIE_ALPHA:g}).")
    if not found:
        return head + " Every pair of models, and every pair of attacks on one model, differs significantly."
    return head + " These pairs cannot be told apart at this n:\n\n" + "\n".join(
        f"- {md_escape(t.sentence())}" for t in found)


MODEL_COST_HEADERS = ("model", "parameters", "MACs / input", "FLOPs / input", "latency / batch", "peak memory")


def model_cost_rows(result: ResultMatrix) -> list[list[str]]:
    """Rows of the model-cost table (plain strings): model, parameters, MACs and FLOPs per input,
    median latency per batch, peak memory."""
    return [[r.model, format_parameters(r), format_count(r.macs), format_count(r.flops), format_latency(r.latency),
             format_bytes(r.memory)] for r in cost_rows(result)]


def model_cost_note(result: ResultMatrix) -> str:
    """The sentence under the model-cost table: the FLOP counter's convention, where latency and memory
    were measured (and why a figure is missing), how CPU memory is measured."""
    rows = cost_rows(result)
    where = cost_caption(rows)
    return (f"{FLOP_NOTE}. {where[:1].upper()}{where[1:]}. On a CPU the peak memory is measured in a process of its own "
            "per model (a TorchScript trace loaded and run once), on CUDA as the peak allocated around one "
            "forward plus the weights; see docs/cost.md.")


def attack_cost_headers(result: ResultMatrix) -> list[str]:
    return ["model", "attack", *(f"ε={format_eps(e)}" for e in result.eps_values), "per sample", "seconds"]


def attack_cost_rows(result: ResultMatrix) -> list[list[str]]:
    """Rows of the attack-cost table: per model × attack, each eps's forward/backward passes per attacked
    sample with the number attacked (``"48.7/47.7 · 64"``), then the whole grid's passes per
    clean-correct sample, and seconds."""
    out = []
    r = result.records
    for row in matrix_rows(result):
        rows = r[(r["model"] == row.model) & (r["attack"] == row.attack)]
        cells = []
        for eps in result.eps_values:
            hit = rows[np.isclose(rows["eps"].astype(float), eps)]
            if hit.empty:
                cells.append(DASH)
                continue
            h = hit.iloc[0]
            attacked = h.get("n_attacked")
            text = format_passes(_float(h.get("forward_passes_per_attacked_sample")),
                                 _float(h.get("backward_passes_per_attacked_sample")))
            if _float(attacked) == _float(attacked):  # not NaN
                text = f"{text} · {int(attacked)}" if text != DASH else f"none attacked · {int(attacked)}"
            cells.append(text)
        out.append([row.model, row.attack, *cells, format_passes(row.forward, row.backward),
                    format_seconds(row.seconds)])
    return out


ATTACK_COST_NOTE = (
    "Each ε cell: forward/backward passes per attacked sample · samples attacked (a larger ε attacks only "
    "the survivors of the smaller one, and early stopping drops a sample once it is broken, so both shrink); "
    "per sample: the whole grid's passes per clean-correct sample. A minimal-norm run serves every ε: its "
    "passes and seconds are spread evenly over the ε columns. " + PASSES_NOTE[0].upper() + PASSES_NOTE[1:] + "."
)


def has_cost(result: ResultMatrix) -> bool:
    """Whether the result carries model costs or pass counts (a Cost section is worth showing)."""
    return bool(cost_rows(result)) or has_passes(result)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _cost_section(result: ResultMatrix) -> str:
    parts = ["## Cost"]
    rows = model_cost_rows(result)
    if rows:
        parts.append("### Models\n\n" + model_cost_note(result) + "\n\n" + _table(
            MODEL_COST_HEADERS, [[md_escape(c) for c in row] for row in rows], right=[1, 2, 3, 4, 5]))
    if has_passes(result):
        headers = attack_cost_headers(result)
        parts.append("### Attacks\n\n" + ATTACK_COST_NOTE + "\n\n" + _table(
            headers, [[md_escape(c) for c in row] for row in attack_cost_rows(result)],
            right=list(range(2, len(headers)))))
    return "\n\n".join(parts)


def _detection_section(result: ResultMatrix) -> str:
    from robustaudit.reports.terminal import DETECTION_HEADERS, detection_notes, detection_rows

    notes = detection_notes(result)
    return ("## Detectors\n\n" + "\n".join(f"- {md_escape(line)}" for line in notes) + "\n\n"
            + _table(list(DETECTION_HEADERS), [[md_escape(c) for c in row] for row in detection_rows(result)],
                     right=list(range(2, len(DETECTION_HEADERS)))))


def _checks_section(result: ResultMatrix) -> str:
    rows = []
    for check in result.checks:
        status = str(check.get("status", DASH))
        mark = STATUS_MARK.get(status, "")
        doc = check.get("doc")
        rows.append(
            [
                f"{mark} {md_escape(status)}".strip(),
                md_code(check.get("id", DASH)),
                md_escape(check.get("model") or DASH),
                md_escape(check.get("message", "")),
                md_escape(doc) if doc else DASH,
            ]
        )
    return f"## Sanity checks ({checks_tally(result.checks)})\n\n" + _table(
        ["status", "check", "model", "message", "doc"], rows
    )


def render_markdown(result: ResultMatrix) -> str:
    """The full report as GitHub-flavoured Markdown.

    Sections: title, threat model, data, models, attacks, the robust-accuracy matrix, the
    clean-vs-adversarial table, model and attack cost (when measured), sanity checks (when there are
    any) and provenance with the full
    configuration as a fenced JSON block. Curves and example images are in the HTML report only
    (GitHub strips inline images from job summaries).
    """
    if result.is_segmentation:  # mIoU and pixel accuracy instead of accuracy
        from robustaudit.reports.segmentation import render_markdown as render_segmentation

        return render_segmentation(result)
    parts = [f"# {TITLE}", md_escape(headline(result))]
    parts.append("## Threat model\n\n" + _items(threat_items(result)))
    data = data_items(result)
    if data:
        parts.append("## Data\n\n" + _items(data))
    models = model_infos(result)
    if models:
        parts.append(
            "## Models\n\n"
            + _table(
                ["model", "source", "weights sha256", "training", "parameters"],
                [
                    [
                        md_escape(m.name),
                        md_escape(m.source),
                        md_code(m.sha256) if m.sha256 != DASH else DASH,
                        md_escape(m.training),
                        m.params,
                    ]
                    for m in models
                ],
                right=[4],
            )
        )
    attacks = attack_infos(result)
    if attacks:
        parts.append(
            "## Attacks\n\n"
            + _table(
                ["attack", "spec", "settings"],
                [
                    [
                        md_escape(a.name),
                        md_code(a.spec) if a.spec != DASH else DASH,
                        md_code(a.settings) if a.settings != DASH else DASH,
                    ]
                    for a in attacks
                ],
            )
        )
    if result.records.empty:
        parts.append("## Robust accuracy\n\nNo results.")
    else:
        parts.append(_matrix_section(result))
        parts.append(_summary_section(result))
        parts.append(_ties_section(result))
    if result.minimal_norms:
        parts.append(_norms_section(result))
    if result.provenance.get("detection"):
        parts.append(_detection_section(result))
    # adversarial patch, physical-world proxies
    from robustaudit.reports.physical import markdown_sections

    parts.extend(markdown_sections(result))
    from robustaudit.reports.learned import markdown_section  # ATN, AdvGAN

    learned = markdown_section(result)
    if learned:
        parts.append(learned)
    if has_cost(result):
        parts.append(_cost_section(result))
    if result.checks:
        parts.append(_checks_section(result))
    provenance = provenance_items(result)
    config = config_json(result)
    if provenance or config is not None:
        section = "## Provenance"
        if provenance:
            section += "\n\n" + _table(
                ["field", "value"], [[md_escape(k), md_escape(v)] for k, v in provenance]
            )
        if config is not None:
            section += (
                "\n\n<details><summary>Configuration</summary>\n\n"
                + _fence(config, "json")
                + "\n\n</details>"
            )
        parts.append(section)
    return "\n\n".join(parts) + "\n"
