"""The robust-accuracy matrix and the clean-vs-adversarial table, as rows every renderer shares.

Every figure comes from the result's columns (accuracy, ``ci_low`` / ``ci_high``); the one figure the
records lack, the clean accuracy's interval, is computed here once from ``n_clean_correct`` and ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.reports.view.numbers import (
    DASH, as_float, format_eps, format_passes, format_percent, format_percent_ci, format_seconds, format_upper_bound,
)
from robustaudit.reports.view.detection import detection_block
from robustaudit.reports.view.overview import model_cards, norm_label, parse_trained_for, sample_count, training_label

#: How every rendering names the interval next to an accuracy.
CI_LABEL = "95% Wilson interval"
#: How every rendering explains the worst-case rows.
WORST_CASE_MEANING = (
    "per-sample worst case over all attacks "
    "(a sample counts as robust only if it survives every attack at that ε)"
)
#: Beside the matrix when it has detector rows (``MODEL+DETECTOR``): why they read differently.
DETECTOR_ROWS_NOTE = (
    "MODEL+DETECTOR rows: a clean input counts as correct only when the detector accepts it and the model "
    "classifies it right; an adversarial input counts as defended when the detector rejects it or the model still "
    "classifies it right. Such a row is not the model's robust accuracy, and it can exceed its own clean accuracy "
    "and even the bare model's clean accuracy. It is monotone in ε only because a sample broken at a smaller ε is "
    "kept broken: attacked afresh, a larger ε need not read lower (a point the detector rejects at one ε may be "
    "accepted at another). The Detectors section compares the plain and the adaptive attack."
)
#: Beside the matrix when an attack was fitted (a patch, ATN, AdvGAN, a universal perturbation).
FIT_NOTE = (
    "seconds: the time spent attacking; \"+ N fit\": the one-off time spent fitting a universal attack (patch, "
    "ATN, AdvGAN, ...) on the training split, once per model and ε, before it was applied"
)
# Tolerance when matching eps values that went through JSON or arithmetic (8/255 vs 0.0313725...).
EPS_RTOL = 1e-6
EPS_ATOL = 1e-9


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


def format_cell(cell: Cell | None) -> str:
    """``"58.1 [53.0–63.0]"``: accuracy and 95% Wilson interval in %; the interval is left out when
    undefined, and a missing cell is ``—``."""
    return DASH if cell is None else format_percent_ci(cell.accuracy, cell.low, cell.high)


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
    #: the one-off fits of a universal attack over the row's cells (0 for other attacks)
    fit_seconds: float = 0.0
    #: the row is the model's headline (its worst case) and the model's figures are unreliable: the
    #: cells read "≤ 89.0 [...]" (see :mod:`robustaudit.evaluate.reliability`)
    upper_bound: bool = False

    @property
    def worst_case(self) -> bool:
        """True for the per-sample worst case over attacks."""
        return self.attack == WORST_CASE

    @property
    def clean_text(self) -> str:
        return format_percent(self.clean)

    @property
    def cell_texts(self) -> tuple[str, ...]:
        """Each eps: ``"58.1 [53.0–63.0]"`` (``"≤ 58.1 [53.0–63.0]"`` for an upper bound)."""
        return tuple(format_upper_bound(format_cell(c), self.upper_bound) for c in self.cells)

    @property
    def short_texts(self) -> tuple[str, ...]:
        """Each eps without its interval: ``"58.1"`` (``"≤ 58.1"`` for an upper bound)."""
        return tuple(format_upper_bound(format_percent(c.accuracy if c else None), self.upper_bound)
                     for c in self.cells)

    @property
    def seconds_text(self) -> str:
        """``"1.4"``; with a fitted attack ``"1.4 + 903.2 fit"`` (see :data:`FIT_NOTE`)."""
        text = format_seconds(self.seconds)
        fit = as_float(self.fit_seconds)
        return f"{text} + {format_seconds(fit)} fit" if math.isfinite(fit) and fit > 0 else text

    @property
    def passes_text(self) -> str:
        return format_passes(self.forward, self.backward)


@dataclass(frozen=True)
class SummaryRow:
    """One model of the clean-vs-adversarial table (worst case at :func:`summary_eps`)."""

    model: str
    training: str
    clean: Cell
    adversarial: Cell | None
    upper_bound: bool = False  # the model's figures are unreliable: "≤ 89.0 [...]"

    @property
    def adversarial_text(self) -> str:
        return format_upper_bound(format_cell(self.adversarial), self.upper_bound)


def rows_of(result: ResultMatrix, model: str, attack: str) -> pd.DataFrame:
    """The records of one model × attack."""
    r = result.records
    return r[(r["model"] == model) & (r["attack"] == attack)]


def cell_at(rows: pd.DataFrame, eps: float) -> Cell | None:
    """The accuracy and interval of the record at ``eps`` (None when there is none)."""
    hit = rows[np.isclose(rows["eps"].astype(float), eps, rtol=EPS_RTOL, atol=EPS_ATOL)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return Cell(as_float(row["robust_accuracy"]), as_float(row["ci_low"]), as_float(row["ci_high"]))


def first_finite(values: pd.Series) -> float:
    """The first finite value of ``values`` (NaN when there is none)."""
    for v in values:
        x = as_float(v)
        if math.isfinite(x):
            return x
    return math.nan


def matrix_rows(result: ResultMatrix) -> list[MatrixRow]:
    """The matrix as rows: per model (run order), its attacks (run order), then the worst case."""
    grid = result.eps_values
    out: list[MatrixRow] = []
    unreliable = {m for m, r in result.reliability.items() if not r["reliable"]}
    for model in result.models:
        present = set(result.records.loc[result.records["model"] == model, "attack"])
        attacks = [a for a in result.attacks if a in present]
        if WORST_CASE in present:
            attacks.append(WORST_CASE)
        for attack in attacks:
            # the headline: the worst case, or every row of a model that has none (one attack)
            rows = rows_of(result, model, attack)
            seconds = pd.to_numeric(rows["seconds"], errors="coerce")
            out.append(MatrixRow(
                model=model,
                attack=attack,
                clean=first_finite(rows["clean_accuracy"]),
                cells=tuple(cell_at(rows, eps) for eps in grid),
                # Worst-case rows may carry no time of their own; NaN then, not a fake 0.0.
                seconds=float(seconds.sum()) if seconds.notna().any() else math.nan,
                fit_seconds=_fit_seconds(rows),
                forward=_per_clean_sample(rows, "forward_passes"),
                backward=_per_clean_sample(rows, "backward_passes"),
                upper_bound=model in unreliable and (attack == WORST_CASE or WORST_CASE not in present),
            ))
    return out


def _fit_seconds(rows: pd.DataFrame) -> float:
    """The fit seconds over the rows (0.0 for results written before fits were counted)."""
    if "fit_seconds" not in rows:
        return 0.0
    return float(pd.to_numeric(rows["fit_seconds"], errors="coerce").fillna(0.0).sum())


def detector_rows(result: ResultMatrix) -> list[str]:
    """The matrix's detector-defended models (``MODEL+DETECTOR``), in matrix order."""
    named = {str(d.get("row")) for d in detection_block(result).get("detectors", []) if isinstance(d, dict)}
    return [m for m in result.models if m in named]


def _per_clean_sample(rows: pd.DataFrame, column: str) -> float:
    """A pass count summed over the rows (the eps grid) per clean-correct sample; NaN when unknown."""
    if column not in rows:
        return math.nan
    values = pd.to_numeric(rows[column], errors="coerce")
    n_clean = first_finite(rows["n_clean_correct"])
    if values.isna().any() or not (math.isfinite(n_clean) and n_clean > 0):
        return math.nan
    return float(values.sum()) / n_clean


def has_passes(result: ResultMatrix) -> bool:
    """Whether the records count passes (results written before pass counting do not)."""
    r = result.records
    return "forward_passes" in r and bool(pd.to_numeric(r["forward_passes"], errors="coerce").notna().any())


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
    if declared and all(math.isclose(e, declared[0], rel_tol=EPS_RTOL, abs_tol=EPS_ATOL) for e in declared):
        for eps in grid:
            if math.isclose(eps, declared[0], rel_tol=EPS_RTOL, abs_tol=EPS_ATOL):
                return eps
    return grid[len(grid) // 2]


def clean_cell(result: ResultMatrix, model: str) -> Cell:
    """A model's clean accuracy and 95% Wilson interval (from ``n_clean_correct`` and ``n``).

    The records carry no clean interval, so it is computed here, once, for every renderer.
    """
    rows = result.records[result.records["model"] == model]
    accuracy = first_finite(rows["clean_accuracy"])
    for _, row in rows.iterrows():
        n, k = as_float(row["n"]), as_float(row["n_clean_correct"])
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
    reliability = result.reliability
    for model in result.models:
        rows = rows_of(result, model, WORST_CASE)
        if rows.empty:
            present = [a for a in result.attacks if not rows_of(result, model, a).empty]
            if len(present) == 1:
                rows = rows_of(result, model, present[0])
        adversarial = cell_at(rows, eps) if not rows.empty and math.isfinite(as_float(eps)) else None
        out.append(SummaryRow(model, training_label(result, model), clean_cell(result, model), adversarial,
                              upper_bound=not reliability.get(model, {}).get("reliable", True)))
    return out


@dataclass(frozen=True)
class MatrixView:
    """The robust-accuracy matrix: rows, their eps headers, and the sentences that explain them."""

    norm: str
    eps_headers: tuple[str, ...]
    rows: tuple[MatrixRow, ...]
    n: int | None
    passes: bool  # the records count forward / backward passes
    lead: str  # the note's first sentences; then WORST_CASE in bold and WORST_CASE_MEANING
    #: sentences after it, only where they apply: detector rows (:data:`DETECTOR_ROWS_NOTE`), fits (:data:`FIT_NOTE`)
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return f"Robust accuracy ({self.norm})"

    def terminal_title(self, intervals: bool) -> str:
        return f"Robust accuracy %{f' [{CI_LABEL}]' if intervals else ''} — {self.norm}"

    def terminal_caption(self, intervals: bool) -> str:
        caption = f"{WORST_CASE}: {WORST_CASE_MEANING}" + (f"; n = {self.n} samples per cell" if self.n is not None else "")
        if not intervals:
            caption += "; intervals left out to fit the terminal (see report.md)"
        if self.passes:
            caption += ("; fwd/bwd: forward/backward passes per clean-correct sample over the ε grid, "
                        "as the attacks spent them (survivors only, early stopping)")
        return "\n".join((caption, *self.notes))


def matrix_view(result: ResultMatrix) -> MatrixView:
    n = sample_count(result)
    lead = (f"Robust accuracy in % with its {CI_LABEL} in brackets; clean accuracy in %."
            + (f" n = {n} samples per cell." if n is not None else ""))
    rows = tuple(matrix_rows(result))
    notes = ((DETECTOR_ROWS_NOTE,) if detector_rows(result) else ()) + (
        (FIT_NOTE,) if any(r.fit_seconds > 0 for r in rows) else ())
    return MatrixView(norm_label(result), tuple(f"ε={format_eps(e)}" for e in result.eps_values),
                      rows, n, has_passes(result), lead, notes)


@dataclass(frozen=True)
class SummaryView:
    """The clean-vs-adversarial table at one eps."""

    eps: str
    rows: tuple[SummaryRow, ...]

    @property
    def title(self) -> str:
        return f"Clean vs adversarial accuracy (ε={self.eps})"

    @property
    def note(self) -> str:
        return f"Test accuracy in % with its {CI_LABEL}; adversarial = {WORST_CASE} over all attacks at ε={self.eps}."

    @property
    def terminal_title(self) -> str:
        return f"Clean vs adversarial accuracy % ({WORST_CASE} at ε={self.eps})"


def summary_view(result: ResultMatrix) -> SummaryView:
    eps = summary_eps(result)
    return SummaryView(format_eps(eps), tuple(summary_rows(result, eps)))
