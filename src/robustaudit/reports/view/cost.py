"""The cost section: each model's size, MACs/FLOPs, latency and memory (``provenance['models'][i]['cost']``)
and each attack's forward/backward passes (the records' pass columns)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.matrix import detector_rows, has_passes, matrix_rows
from robustaudit.reports.view.numbers import (
    DASH, as_float, format_bytes, format_count, format_eps, format_latency, format_passes, format_seconds,
    is_finite,
)
from robustaudit.reports.view.overview import model_cards

#: How every rendering states what the FLOP counter counts.
FLOP_NOTE = (
    "MACs and FLOPs per input from PyTorch's counter (torch.utils.flop_counter.FlopCounterMode), which "
    "reports FLOPs = 2 × MACs for convolutions and matrix products and does not count element-wise ops "
    "(activations, normalization, pooling, additions)"
)
#: How every rendering explains the pass counts.
PASSES_NOTE = (
    "passes: samples the attack pushed forward / backward through the model (counted by a wrapper around "
    "the model it is given; the runner's own scoring forward is not counted)"
)
ATTACK_COST_NOTE = (
    "Each ε cell: forward/backward passes per attacked sample · samples attacked (a larger ε attacks only "
    "the survivors of the smaller one, and early stopping drops a sample once it is broken, so both shrink); "
    "per sample: the whole grid's passes per clean-correct sample. A minimal-norm run serves every ε: its "
    "passes and seconds are spread evenly over the ε columns. " + PASSES_NOTE[0].upper() + PASSES_NOTE[1:] + "."
)
#: After :data:`ATTACK_COST_NOTE` when an attack was fitted.
FIT_COST_NOTE = (
    "fit (one-off): the time spent fitting a universal attack (patch, ATN, AdvGAN, ...) on the training split, once "
    "per model and ε before it was applied, with the passes the fit spent; not part of seconds (the attack applied), "
    "and counted once in the worst case."
)
#: After :data:`ATTACK_COST_NOTE` when the matrix has detector rows.
DETECTOR_COST_NOTE = (
    "MODEL+DETECTOR rows: the classifier's passes, the detector's own forwards through it included; an adaptive "
    "column's cell holds its share of the one detector-aware run per ε that every adaptive column of the row uses "
    "(seconds and passes split evenly over them; the plain point it falls back on is the plain column's cost), so "
    "the worst case is the row's time, counted once."
)
MODEL_COST_HEADERS = ("model", "parameters", "MACs / input", "FLOPs / input", "latency / batch", "peak memory")
SCATTER_ALT = "worst-case robust accuracy against FLOPs per input and against latency, one point per model"


@dataclass(frozen=True)
class CostRow:
    """One model's cost, from ``provenance['models'][i]['cost']`` (NaN / None where not measured)."""

    model: str
    parameters: float
    trainable: float
    macs: float
    flops: float
    latency: float  # median seconds per batch
    latency_batch: int | None
    memory: float  # peak bytes
    memory_batch: int | None
    device: str
    threads: int | None
    errors: dict[str, str]


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def cost_rows(result: ResultMatrix) -> list[CostRow]:
    """The models that carry a ``cost`` block, in matrix order."""
    out = []
    for name, card in model_cards(result).items():
        cost = card.get("cost")
        if not isinstance(cost, dict):
            continue
        latency, memory = _dict(cost.get("latency")), _dict(cost.get("peak_memory"))
        out.append(CostRow(
            model=name, parameters=as_float(cost.get("parameters")), trainable=as_float(cost.get("trainable_parameters")),
            macs=as_float(cost.get("macs_per_input")), flops=as_float(cost.get("flops_per_input")),
            latency=as_float(latency.get("median_seconds_per_batch")), latency_batch=latency.get("batch_size"),
            memory=as_float(memory.get("bytes")), memory_batch=memory.get("batch_size"),
            device=str(latency.get("device") or DASH), threads=latency.get("threads"),
            errors={str(k): str(v) for k, v in _dict(cost.get("errors")).items()},
        ))
    order = {m: i for i, m in enumerate(result.models)}
    return sorted(out, key=lambda r: order.get(r.model, len(order)))


def format_parameters(row: CostRow) -> str:
    """``"159,626"``, with the trainable count when it differs: ``"159,626 (650 trainable)"``."""
    if not is_finite(row.parameters):
        return DASH
    text = f"{int(row.parameters):,}"
    if is_finite(row.trainable) and row.trainable != row.parameters:
        text += f" ({int(row.trainable):,} trainable)"
    return text


def cost_caption(rows: list[CostRow]) -> str:
    """Where and at what batch latency and memory were measured, and the reasons for missing figures."""
    batches = {r.latency_batch for r in rows} | {r.memory_batch for r in rows}
    batches.discard(None)
    devices = {r.device for r in rows}
    threads = {r.threads for r in rows} - {None}
    where = ", ".join(sorted(devices)) + (f", {(t := threads.pop())} thread{'' if t == 1 else 's'}" if len(threads) == 1 else "")
    text = (f"latency: median per batch of {', '.join(str(b) for b in sorted(batches)) or DASH} under no_grad "
            f"({where}), warm-up excluded; peak memory: the model alone at that batch")
    missing = [f"{r.model}: {what} not measured ({why})" for r in rows for what, why in r.errors.items()]
    return text + (". " + "; ".join(missing) if missing else "")


def brief_cost_table(result: ResultMatrix) -> Table:
    """The terminal's cost table: parameters, MACs, latency and memory per model."""
    rows = cost_rows(result)
    caption = (cost_caption(rows) + "; FLOPs = 2 × MACs (convolutions and matmuls only: docs/cost.md)",) if rows else ()
    return Table(("model", "params", "MACs/input", "latency", "peak memory"),
                 tuple((r.model, format_parameters(r), format_count(r.macs), format_latency(r.latency),
                        format_bytes(r.memory)) for r in rows), text_columns=1, title="Model cost", caption=caption)


def _model_costs(result: ResultMatrix) -> Section | None:
    rows = cost_rows(result)
    if not rows:
        return None
    where = cost_caption(rows)
    note = (f"{FLOP_NOTE}. {where[:1].upper()}{where[1:]}. On a CPU the peak memory is measured in a process of its "
            "own per model (a TorchScript trace loaded and run once), on CUDA as the peak allocated around one "
            "forward plus the weights; see docs/cost.md.")
    table = Table(MODEL_COST_HEADERS, tuple((r.model, format_parameters(r), format_count(r.macs), format_count(r.flops),
                                             format_latency(r.latency), format_bytes(r.memory)) for r in rows),
                  text_columns=1)
    return Section("Models", paragraph=note, table=table, images=(Image("cost_scatter", SCATTER_ALT),))


def _eps_passes(rows, eps: float) -> str:
    """One eps cell: passes per attacked sample and the number attacked (``"48.7/47.7 · 64"``)."""
    hit = rows[np.isclose(rows["eps"].astype(float), eps)]
    if hit.empty:
        return DASH
    h = hit.iloc[0]
    attacked = as_float(h.get("n_attacked"))
    text = format_passes(h.get("forward_passes_per_attacked_sample"), h.get("backward_passes_per_attacked_sample"))
    if math.isnan(attacked):
        return text
    if attacked == 0:
        return "none attacked"
    # passes not counted (results written before they were): the cell's seconds stand in, never "none attacked"
    return f"{text} · {int(attacked)}" if text != DASH else f"{format_seconds(h.get('seconds'))} s · {int(attacked)}"


def attack_cost_table(result: ResultMatrix) -> Table:
    """Per model × attack: each eps's passes per attacked sample with the number attacked, then the whole
    grid's passes per clean-correct sample, and seconds."""
    r = result.records
    out = []
    rows_ = matrix_rows(result)
    fits = _fit_passes(result)
    fitted = any(row.fit_seconds > 0 for row in rows_)
    for row in rows_:
        rows = r[(r["model"] == row.model) & (r["attack"] == row.attack)]
        fit = ()
        if fitted:
            passes = fits.get((row.model, row.attack)) if row.fit_seconds > 0 else None
            fit = (DASH if row.fit_seconds <= 0 else f"{format_seconds(row.fit_seconds)} s"
                   + (f" · {format_count(passes[0])}/{format_count(passes[1])} passes" if passes else ""),)
        out.append((row.model, row.attack, *(_eps_passes(rows, eps) for eps in result.eps_values),
                    format_passes(row.forward, row.backward), format_seconds(row.seconds), *fit))
    headers = ("model", "attack", *(f"ε={format_eps(e)}" for e in result.eps_values), "per sample", "seconds",
               *(("fit (one-off)",) if fitted else ()))
    return Table(headers, tuple(out))


def _fit_passes(result: ResultMatrix) -> dict[tuple[str, str], tuple[float, float]]:
    """Per model × attack (and its worst case), the forward and backward passes its fits spent
    (``provenance['fits']``)."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for f in result.provenance.get("fits") or []:
        if not isinstance(f, dict):
            continue
        for key in ((f.get("model"), f.get("attack")), (f.get("model"), WORST_CASE)):
            have = out.get(key, (0.0, 0.0))
            out[key] = (have[0] + as_float(f.get("forward_passes")), have[1] + as_float(f.get("backward_passes")))
    return out


def cost_section(result: ResultMatrix) -> Section | None:
    """``## Cost`` with ``### Models`` (and the robustness-vs-cost figure) and ``### Attacks`` (pass counts);
    None when the result carries neither."""
    parts = [_model_costs(result)]
    if has_passes(result):
        rows = matrix_rows(result)
        note = " ".join((ATTACK_COST_NOTE, *((FIT_COST_NOTE,) if any(r.fit_seconds > 0 for r in rows) else ()),
                         *((DETECTOR_COST_NOTE,) if detector_rows(result) else ())))
        parts.append(Section("Attacks", paragraph=note, table=attack_cost_table(result)))
    subsections = tuple(p for p in parts if p is not None)
    return Section("Cost", subsections=subsections) if subsections else None
