"""The accuracy matrix in the terminal (rich), and the table model every rendering shares.

Markdown and HTML show the same rows and the same numbers as the terminal. The row model
(:func:`matrix_rows`, :func:`summary_rows`), the number formatting and the choice of the summary eps
(:func:`summary_eps`) therefore live here once, so that the three renderings cannot drift apart.
"""

from __future__ import annotations

import io

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from robustaudit.core.threat import NORMS
from robustaudit.evaluate.metrics import paired_p_value, wilson_interval
from robustaudit.evaluate.result import WORST_CASE, ResultMatrix

#: What a missing or undefined number is shown as.
DASH = "—"
#: How every rendering names the interval next to an accuracy.
CI_LABEL = "95% Wilson interval"
#: How every rendering explains the worst-case rows.
WORST_CASE_MEANING = (
    "per-sample worst case over all attacks "
    "(a sample counts as robust only if it survives every attack at that ε)"
)

# "linf eps=0.2", "l2 eps=0.5", "linf eps=8/255": the form ModelCard.trained_for is written in.
_TRAINED_FOR = re.compile(
    r"^\s*(?:(?P<norm>[a-z0-9]+)\s+)?eps\s*=\s*(?P<num>[0-9.eE+-]+)(?:\s*/\s*(?P<den>[0-9.eE+-]+))?",
    re.IGNORECASE,
)
# Tolerance when matching eps values that went through JSON or arithmetic (8/255 vs 0.0313725...).
_EPS_RTOL = 1e-6
_EPS_ATOL = 1e-9


# ---------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Cell:
    """An accuracy in [0, 1] with its 95% Wilson interval; NaN where undefined (n = 0, not run)."""

    accuracy: float
    low: float = math.nan
    high: float = math.nan

    @property
    def text(self) -> str:
        """``"58.1 [53.0–63.0]"``; see :func:`format_cell`."""
        return format_cell(self)


@dataclass(frozen=True)
class MatrixRow:
    """One model × attack row of the matrix; ``cells`` is aligned with ``result.eps_values``.

    ``forward`` / ``backward``: the passes the row's attack(s) spent over the whole eps grid per
    clean-correct sample (NaN for results without pass counts).
    """

    model: str
    attack: str
    clean: float
    cells: tuple[Cell | None, ...]
    seconds: float
    forward: float = math.nan
    backward: float = math.nan

    @property
    def worst_case(self) -> bool:
        """True for the per-sample worst case over attacks."""
        return self.attack == WORST_CASE


@dataclass(frozen=True)
class SummaryRow:
    """One model of the clean-vs-adversarial table (worst case at :func:`summary_eps`)."""

    model: str
    training: str
    clean: Cell
    adversarial: Cell | None


# ----------------------------------------------------------------------------------- formatting
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


def _num(v: Any) -> float:
    """A record value as a float; ``None``, ``pd.NA`` and non-numbers become NaN."""
    try:
        out = float(v)
    except (TypeError, ValueError):
        return math.nan
    return out


def format_percent(x: float) -> str:
    """An accuracy in [0, 1] as a percentage, one decimal (``0.581 -> "58.1"``); NaN -> ``—``."""
    return f"{100.0 * x:.1f}" if _finite(x) else DASH


def format_cell(cell: Cell | None) -> str:
    """``"58.1 [53.0–63.0]"``: accuracy and 95% Wilson interval in %; the interval is left out when
    undefined, and a missing cell is ``—``."""
    if cell is None or not _finite(cell.accuracy):
        return DASH
    text = format_percent(cell.accuracy)
    if _finite(cell.low) and _finite(cell.high):
        text += f" [{format_percent(cell.low)}–{format_percent(cell.high)}]"
    return text


def format_eps(eps: float) -> str:
    """An eps as people write it: ``0.1``, ``0.3``, and ``8/255`` where the decimal is unwieldy."""
    if not _finite(eps):
        return DASH
    short = f"{eps:.4g}"
    scaled = eps * 255.0
    # Pixel-level budgets (k/255) are the convention for images; show them so only when the short
    # decimal would lose digits, so 0.2 (= 51/255) stays 0.2.
    if float(short) != eps and eps > 0 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return short


def format_seconds(seconds: float) -> str:
    """Wall time with one decimal; NaN -> ``—``."""
    return f"{seconds:.1f}" if _finite(seconds) else DASH


def format_passes(forward: float, backward: float) -> str:
    """Forward / backward passes per sample: ``"48.7/47.7"`` (whole numbers from 100 on); ``—`` when
    unknown."""
    if not (_finite(forward) and _finite(backward)):
        return DASH
    fmt = (lambda v: f"{v:.0f}") if max(forward, backward) >= 100 else (lambda v: f"{v:.1f}")
    return f"{fmt(forward)}/{fmt(backward)}"


def format_count(n: Any) -> str:
    """A large count with an SI prefix and three significant digits: ``2444544 -> "2.44 M"``; ``—``
    when unknown."""
    if not _finite(n):
        return DASH
    n = float(n)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:.0f}"


def format_bytes(n: Any) -> str:
    """Bytes in binary units: ``15814656 -> "15.1 MiB"``; ``—`` when unknown."""
    if not _finite(n):
        return DASH
    n = float(n)
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_latency(seconds: Any) -> str:
    """A latency in milliseconds, three significant digits: ``0.00519 -> "5.19 ms"``; ``—`` when unknown."""
    if not _finite(seconds):
        return DASH
    return f"{1000.0 * float(seconds):.3g} ms"


# ------------------------------------------------------------------------------------ provenance
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


# --------------------------------------------------------------------------------------- matrix
def detection_block(result: ResultMatrix) -> dict[str, Any]:
    """``provenance['detection']`` (empty when the audit ran no detector)."""
    block = result.provenance.get("detection")
    return block if isinstance(block, dict) else {}


#: Headers of the detection table (terminal, Markdown, HTML): one line per model × detector × attack × eps.
DETECTION_HEADERS = ("model + detector", "attack", "ε", "clean FPR", "AUROC plain / adaptive",
                     "TPR plain / adaptive", "defended plain", "defended adaptive", "gap")


def _ratio(v: Any) -> str:
    return f"{float(v):.3f}" if _finite(v) else DASH


def detection_rows(result: ResultMatrix) -> list[list[str]]:
    """The detection table's rows, strings, from ``provenance['detection']['rows']``: plain and adaptive
    side by side (the gap between them is the headline); defended accuracies in % with 95% intervals."""
    rows = detection_block(result).get("rows", [])
    plain = {(r["row"], r["attack"], float(r["eps"])): r for r in rows if not r.get("adaptive")}
    adaptive = {(r["row"], r["attack"], float(r["eps"])): r for r in rows if r.get("adaptive")}
    out = []
    for key, p in plain.items():
        a = adaptive.get(key, {})
        gap = (float(p["defended_accuracy"]) - float(a["defended_accuracy"])) if a else float("nan")

        def defended(r: dict[str, Any]) -> str:
            if not r:
                return DASH
            return f"{format_percent(r['defended_accuracy'])} [{format_percent(r['ci_low'])}–{format_percent(r['ci_high'])}]"

        out.append([key[0], key[1], format_eps(key[2]),
                    f"{format_percent(p.get('fpr_clean'))}% (target {format_percent(p.get('fpr_target'))}%)",
                    f"{_ratio(p.get('auroc'))} / {_ratio(a.get('auroc'))}",
                    f"{_ratio(p.get('tpr'))} / {_ratio(a.get('tpr'))}",
                    defended(p), defended(a), f"{100 * gap:.1f} pts" if math.isfinite(gap) else DASH])
    return out


def detection_notes(result: ResultMatrix) -> list[str]:
    """One line per fitted detector (what it looks at, its threshold), then how the figures are read."""
    block = detection_block(result)
    lines = [f"{d.get('row')}: {d.get('description')}; threshold {float(d.get('threshold')):.4g} at "
             f"{format_percent(d.get('fpr_target'))}% FPR on clean data held out of the fitting data ({d.get('fit_data')})"
             + _added_latency(d.get("latency")) for d in block.get("detectors", []) if isinstance(d, dict)]
    if block:
        lines.append(DETECTION_NOTE)
    return lines


def _added_latency(latency: Any) -> str:
    if not isinstance(latency, dict) or latency.get("added_seconds_per_batch") is None:
        return ""
    return (f"; adds {1000 * float(latency['added_seconds_per_batch']):.1f} ms per batch of {latency.get('batch_size')} "
            f"to the bare model's {1000 * float(latency['bare_seconds_per_batch']):.1f} ms")


DETECTION_NOTE = ("defended: an adversarial input counts when rejected or still correctly classified, over all n; "
                  "AUROC/TPR: clean test inputs vs the adversarial ones that fool the classifier; adaptive: PGD on "
                  "classifier margin + detector score together (BPDA through squeezers), success = misclassified "
                  "AND accepted, per sample the worse of it and the plain attack")


@dataclass(frozen=True)
class Tie:
    """Two rows at one eps whose robust accuracies the sample cannot tell apart."""

    eps: float
    first: str
    second: str
    p_value: float
    n: int

    def sentence(self) -> str:
        return (f"{self.first} and {self.second} at ε={format_eps(self.eps)} cannot be told apart at n={self.n} "
                f"(paired exact test, p={self.p_value:.2g})")


#: Two rows differ when a paired two-sided test rejects "no difference" at this level.
TIE_ALPHA = 0.05


def ties(result: ResultMatrix, *, alpha: float = TIE_ALPHA) -> list[Tie]:
    """Pairs of rows measured on the same samples whose robust accuracies do not differ significantly.

    Compared: every pair of models on their worst case (or their single attack) at each eps, and every
    pair of attacks of one model at each eps. Uses the per-sample robust ids (exact McNemar test), so
    results saved without them yield nothing.
    """
    out: list[Tie] = []
    ids = result.robust_ids
    if not ids:
        return out
    for eps in result.eps_values:
        def key(model: str, attack: str) -> tuple[str, str, float] | None:
            return next((k for k in ids if k[0] == model and k[1] == attack and math.isclose(k[2], eps)), None)

        def n_of(model: str) -> int:
            rows = result.records[result.records["model"] == model]
            return int(rows["n"].iloc[0]) if not rows.empty else 0

        heads = []
        for model in result.models:
            attacks = [a for a in result.attacks if key(model, a) is not None]
            head = key(model, WORST_CASE) or (key(model, attacks[0]) if len(attacks) == 1 else None)
            if head is not None:
                heads.append((model, head))
            pairs = [(key(model, a), key(model, b)) for i, a in enumerate(attacks) for b in attacks[i + 1:]]
            for ka, kb in pairs:
                p = paired_p_value(set(ids[ka]), set(ids[kb]))
                if p >= alpha:
                    out.append(Tie(eps, f"{model} / {ka[1]}", f"{model} / {kb[1]}", p, n_of(model)))
        for i, (ma, ka) in enumerate(heads):
            for mb, kb in heads[i + 1:]:
                if n_of(ma) != n_of(mb):
                    continue
                p = paired_p_value(set(ids[ka]), set(ids[kb]))
                if p >= alpha:
                    out.append(Tie(eps, ma, mb, p, n_of(ma)))
    return out


def _rows_of(result: ResultMatrix, model: str, attack: str) -> pd.DataFrame:
    r = result.records
    return r[(r["model"] == model) & (r["attack"] == attack)]


def _cell_at(rows: pd.DataFrame, eps: float) -> Cell | None:
    hit = rows[np.isclose(rows["eps"].astype(float), eps, rtol=_EPS_RTOL, atol=_EPS_ATOL)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return Cell(_num(row["robust_accuracy"]), _num(row["ci_low"]), _num(row["ci_high"]))


def _first_finite(values: pd.Series) -> float:
    for v in values:
        x = _num(v)
        if math.isfinite(x):
            return x
    return math.nan


def matrix_rows(result: ResultMatrix) -> list[MatrixRow]:
    """The matrix as rows: per model (run order), its attacks (run order), then the worst case."""
    grid = result.eps_values
    out: list[MatrixRow] = []
    for model in result.models:
        present = set(result.records.loc[result.records["model"] == model, "attack"])
        attacks = [a for a in result.attacks if a in present]
        if WORST_CASE in present:
            attacks.append(WORST_CASE)
        for attack in attacks:
            rows = _rows_of(result, model, attack)
            seconds = pd.to_numeric(rows["seconds"], errors="coerce")
            out.append(
                MatrixRow(
                    model=model,
                    attack=attack,
                    clean=_first_finite(rows["clean_accuracy"]),
                    cells=tuple(_cell_at(rows, eps) for eps in grid),
                    # Worst-case rows may carry no time of their own; NaN then, not a fake 0.0.
                    seconds=float(seconds.sum()) if seconds.notna().any() else math.nan,
                    forward=_per_clean_sample(rows, "forward_passes"),
                    backward=_per_clean_sample(rows, "backward_passes"),
                )
            )
    return out


def _per_clean_sample(rows: pd.DataFrame, column: str) -> float:
    """A pass count summed over the rows (the eps grid) per clean-correct sample; NaN when unknown."""
    if column not in rows:
        return math.nan
    values = pd.to_numeric(rows[column], errors="coerce")
    n_clean = _first_finite(rows["n_clean_correct"])
    if values.isna().any() or not (math.isfinite(n_clean) and n_clean > 0):
        return math.nan
    return float(values.sum()) / n_clean


def has_passes(result: ResultMatrix) -> bool:
    """Whether the records count passes (results written before pass counting do not)."""
    r = result.records
    return "forward_passes" in r and bool(pd.to_numeric(r["forward_passes"], errors="coerce").notna().any())


# ------------------------------------------------------------------------------------------ cost
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


def cost_rows(result: ResultMatrix) -> list[CostRow]:
    """The models that carry a ``cost`` block, in matrix order."""
    out = []
    for name, card in model_cards(result).items():
        cost = card.get("cost")
        if not isinstance(cost, dict):
            continue
        latency = cost.get("latency") if isinstance(cost.get("latency"), dict) else {}
        memory = cost.get("peak_memory") if isinstance(cost.get("peak_memory"), dict) else {}
        errors = cost.get("errors") if isinstance(cost.get("errors"), dict) else {}
        out.append(CostRow(
            model=name, parameters=_num(cost.get("parameters")), trainable=_num(cost.get("trainable_parameters")),
            macs=_num(cost.get("macs_per_input")), flops=_num(cost.get("flops_per_input")),
            latency=_num(latency.get("median_seconds_per_batch")), latency_batch=latency.get("batch_size"),
            memory=_num(memory.get("bytes")), memory_batch=memory.get("batch_size"),
            device=str(latency.get("device") or DASH), threads=latency.get("threads"),
            errors={str(k): str(v) for k, v in errors.items()},
        ))
    order = {m: i for i, m in enumerate(result.models)}
    return sorted(out, key=lambda r: order.get(r.model, len(order)))


def format_parameters(row: CostRow) -> str:
    """``"159,626"``, with the trainable count when it differs: ``"159,626 (650 trainable)"``."""
    if not _finite(row.parameters):
        return DASH
    text = f"{int(row.parameters):,}"
    if _finite(row.trainable) and row.trainable != row.parameters:
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


def summary_eps(result: ResultMatrix) -> float:
    """The eps of the clean-vs-adversarial table.

    The eps the models were adversarially trained for, when every model whose card declares one
    (for the audited norm) declares the same and it is in the grid: with the default pair of a
    standard and an adversarially trained model, that gives the classic 2×2 table. Otherwise the
    median of the grid (its upper middle value when the grid has an even length, so that it is a
    grid point). NaN for an empty result.
    """
    grid = result.eps_values
    if not grid:
        return math.nan
    norms = {str(n) for n in result.records["norm"].dropna()}
    cards = model_cards(result)
    declared: list[float] = []
    for model in result.models:
        parsed = parse_trained_for(cards.get(model, {}).get("trained_for"))
        if parsed is None:
            continue
        norm, eps = parsed
        # An eps trained for another norm is not on this axis, so it cannot pick a column.
        if norm is not None and norms and norm not in norms:
            continue
        declared.append(eps)
    if declared and all(
        math.isclose(e, declared[0], rel_tol=_EPS_RTOL, abs_tol=_EPS_ATOL) for e in declared
    ):
        for eps in grid:
            if math.isclose(eps, declared[0], rel_tol=_EPS_RTOL, abs_tol=_EPS_ATOL):
                return eps
    return grid[len(grid) // 2]


def clean_cell(result: ResultMatrix, model: str) -> Cell:
    """A model's clean accuracy and 95% Wilson interval (from ``n_clean_correct`` and ``n``)."""
    rows = result.records[result.records["model"] == model]
    accuracy = _first_finite(rows["clean_accuracy"])
    for _, row in rows.iterrows():
        n, k = _num(row["n"]), _num(row["n_clean_correct"])
        if math.isfinite(n) and math.isfinite(k) and n > 0:
            low, high = wilson_interval(int(k), int(n))
            return Cell(accuracy if math.isfinite(accuracy) else k / n, low, high)
    return Cell(accuracy)


def summary_rows(result: ResultMatrix, eps: float | None = None) -> list[SummaryRow]:
    """Clean and worst-case adversarial accuracy per model at ``eps`` (default :func:`summary_eps`).

    With a single attack and no worst-case rows, that attack's row is its own worst case.
    """
    eps = summary_eps(result) if eps is None else eps
    out: list[SummaryRow] = []
    for model in result.models:
        rows = _rows_of(result, model, WORST_CASE)
        if rows.empty:
            present = [a for a in result.attacks if not _rows_of(result, model, a).empty]
            if len(present) == 1:
                rows = _rows_of(result, model, present[0])
        adversarial = _cell_at(rows, eps) if not rows.empty and _finite(eps) else None
        out.append(
            SummaryRow(model, training_label(result, model), clean_cell(result, model), adversarial)
        )
    return out


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


# ------------------------------------------------------------------------------------- terminal
_STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def render_terminal(result: ResultMatrix, console: Console) -> None:
    """Print the accuracy matrix, the clean-vs-adversarial table and the sanity checks.

    Matrix: one row per model × attack (worst case last and bold), columns model, attack, clean
    accuracy, robust accuracy with its 95% Wilson interval per eps, and seconds.
    """
    if result.is_segmentation:  # mIoU and pixel accuracy instead of accuracy
        from robustaudit.reports.segmentation import render_terminal as render_segmentation

        render_segmentation(result, console)
        return
    if result.records.empty:
        console.print("[dim]no results to show[/dim]")
        return
    table = _matrix_table(result, intervals=True)
    wide = Console(width=10_000, file=io.StringIO())  # measures the table's natural width
    if wide.measure(table).maximum > console.width:
        # too narrow for "58.1 [53.0–63.0]" cells: show accuracies only, say where the intervals are
        table = _matrix_table(result, intervals=False)
    console.print(table)
    console.print(_summary_table(result))
    costs = cost_rows(result)
    if costs:
        console.print(_cost_table(costs))
    eps = summary_eps(result)
    same = [t for t in ties(result) if math.isclose(t.eps, eps) and " / " not in t.first]
    for tie in same:  # the terminal names model ties at the table's eps; report.md lists them all
        console.print(f"[yellow]note:[/] {tie.sentence()}")
    if detection_rows(result):
        det = Table(title="Detectors: plain vs adaptive attack", header_style="bold",
                    caption="\n".join(detection_notes(result)))
        for col in DETECTION_HEADERS:
            det.add_column(col, no_wrap=col in ("model + detector", "attack"),
                           justify="left" if col in ("model + detector", "attack") else "right")
        for row in detection_rows(result):
            det.add_row(*(Text(c) for c in row))
        console.print(det)
    # adversarial patch, physical-world proxies
    from robustaudit.reports.physical import render_terminal_sections

    render_terminal_sections(result, console)
    from robustaudit.reports.learned import render_terminal_section  # ATN, AdvGAN

    render_terminal_section(result, console)
    if result.minimal_norms:
        from robustaudit.reports.markdown import norm_rows  # the row logic lives with the other sections

        norms = Table(title=f"Smallest adversarial perturbation — {norm_label(result)}", header_style="bold")
        for col in ("model", "attack", "found", "median norm", "25%–75%"):
            norms.add_column(col, no_wrap=col in ("model", "attack"), justify="left" if col in ("model", "attack") else "right")
        for row in norm_rows(result):
            norms.add_row(*(Text(c) for c in row))
        console.print(norms)
    if result.checks:
        # the terminal shows what needs attention; every verdict is in report.md / report.html
        attention = [c for c in result.checks if c.get("status") != "pass"]
        if attention:
            console.print(_checks_table(attention))
        level = result.provenance.get("checks", {}).get("level")
        console.print(f"Sanity checks{f' ({level})' if level else ''}: {checks_tally(result.checks)}"
                      + ("" if attention else " — every figure passed") + "; details in report.md, see docs/checks.md")


def _matrix_table(result: ResultMatrix, *, intervals: bool) -> Table:
    n = sample_count(result)
    caption = f"{WORST_CASE}: {WORST_CASE_MEANING}" + (
        f"; n = {n} samples per cell" if n is not None else ""
    )
    if not intervals:
        caption += "; intervals left out to fit the terminal (see report.md)"
    table = Table(
        title=f"Robust accuracy %{f' [{CI_LABEL}]' if intervals else ''} — {norm_label(result)}",
        caption=caption,
        header_style="bold",
    )
    # names never truncate (a narrow terminal gets the table without intervals instead)
    table.add_column("model", no_wrap=True)
    table.add_column("attack", no_wrap=True)
    table.add_column("clean", justify="right", no_wrap=True)
    for eps in result.eps_values:
        table.add_column(f"ε={format_eps(eps)}", justify="right", no_wrap=True)
    passes = has_passes(result)
    if passes:
        table.add_column("fwd/bwd", justify="right", no_wrap=True)
        table.caption = (caption + "; fwd/bwd: forward/backward passes per clean-correct sample over the ε grid, "
                         "as the attacks spent them (survivors only, early stopping)")
    table.add_column("seconds", justify="right")

    rows = matrix_rows(result)
    for i, row in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        first_of_model = i == 0 or rows[i - 1].model != row.model
        table.add_row(
            # Text, not str: names are data, and rich would read "[bold]" in a name as markup.
            Text(row.model if first_of_model else ""),
            Text(row.attack, style="magenta" if row.worst_case else ""),
            Text(format_percent(row.clean)),
            *(Text(format_cell(c) if intervals else format_percent(c.accuracy if c else None))
              for c in row.cells),
            *([Text(format_passes(row.forward, row.backward))] if passes else []),
            Text(format_seconds(row.seconds)),
            style="bold" if row.worst_case else None,
            # A rule before the worst case and after each model keeps the groups apart.
            end_section=nxt is None or nxt.model != row.model or nxt.worst_case,
        )
    return table


def _summary_table(result: ResultMatrix) -> Table:
    eps = summary_eps(result)
    table = Table(
        title=f"Clean vs adversarial accuracy % ({WORST_CASE} at ε={format_eps(eps)})",
        header_style="bold",
    )
    table.add_column("model", no_wrap=True)
    table.add_column("training")
    table.add_column("clean test", justify="right")
    table.add_column("adversarial test", justify="right")
    for row in summary_rows(result, eps):
        table.add_row(
            Text(row.model),
            Text(row.training),
            Text(row.clean.text),
            Text(format_cell(row.adversarial)),
        )
    return table


def _cost_table(rows: list[CostRow]) -> Table:
    table = Table(title="Model cost", caption=cost_caption(rows) + "; FLOPs = 2 × MACs (convolutions and "
                  "matmuls only: docs/cost.md)", header_style="bold")
    table.add_column("model", no_wrap=True)
    for col in ("params", "MACs/input", "latency", "peak memory"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(Text(r.model), Text(format_parameters(r)), Text(format_count(r.macs)),
                      Text(format_latency(r.latency)), Text(format_bytes(r.memory)))
    return table


def checks_tally(checks: list[dict[str, Any]]) -> str:
    """``"3 pass, 1 warn, 0 fail"``."""
    counts = {s: 0 for s in ("pass", "warn", "fail")}
    for check in checks:
        status = str(check.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def _checks_table(checks: list[dict[str, Any]]) -> Table:
    table = Table(title="Sanity checks", header_style="bold")
    table.add_column("status")
    table.add_column("check")
    table.add_column("model")
    table.add_column("message")
    for check in checks:
        status = str(check.get("status", DASH))
        message = Text(str(check.get("message", "")))
        if check.get("doc"):
            message.append(f" ({check['doc']})", style="dim")
        table.add_row(
            Text(status, style=_STATUS_STYLE.get(status, "")),
            Text(str(check.get("id", DASH))),
            Text(str(check.get("model") or DASH)),
            message,
        )
    return table
