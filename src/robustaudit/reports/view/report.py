"""The whole classification report as one view: every section built once from the result, in plain,
already-formatted data that the terminal, Markdown and HTML renderers lay out."""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.checks import CheckRow, check_rows, checks_line, checks_tally
from robustaudit.reports.view.comparisons import Tie, norms_section, ties, ties_section
from robustaudit.reports.view.cost import brief_cost_table, cost_section
from robustaudit.reports.view.detection import detection_section
from robustaudit.reports.view.learned import learned_section
from robustaudit.reports.view.matrix import MatrixView, SummaryView, matrix_view, summary_eps, summary_view
from robustaudit.reports.view.overview import (
    TITLE, attacks_table, config_json, data_items, headline, models_table, provenance_items, threat_items,
)
from robustaudit.reports.view.physical import patch_section, physical_section
from robustaudit.reports.view.published import published_section
from robustaudit.reports.view.reliability import ReliabilityView, reliability_view
from robustaudit.reports.view.transferability import transfer_section
from robustaudit.reports.view.uap import uap_section
from robustaudit.reports.view.verdict import VerdictView, access_text, examples_note, meaningless_of, verdict_view

CURVES_ALT = "robust accuracy against ε, one panel per model"
EXAMPLES_ALT = "clean, adversarial and perturbation images"
EXAMPLES_NOTE = ("Clean image, adversarial image and the perturbation magnified (grey is zero); "
                 "a wrong prediction is red.")


@dataclass(frozen=True)
class ReportView:
    """Every section of a classification report. Sections that do not apply are None (or empty)."""

    title: str
    headline: str
    threat: list[tuple[str, str]]
    data: list[tuple[str, str]]
    models: Table
    attacks: Table
    empty: bool  # no records: the matrix, summary and ties are left out
    matrix: MatrixView
    summary: SummaryView
    ties: Section
    model_ties: tuple[Tie, ...]  # the terminal's notes: model pairs at the summary eps
    curves: Image | None
    examples: Image | None
    norms: Section | None
    detection: Section | None
    patch: Section | None
    physical: Section | None
    learned: Section | None
    transfer: Section | None
    uap: Section | None  # universal adversarial perturbations: fooling rate vs a noise control
    cost: Section | None
    brief_cost: Table  # the terminal's cost table
    checks: list[CheckRow]
    checks_tally: str
    provenance: list[tuple[str, str]]
    config: str | None
    checks_line: str  # the terminal's closing line on the checks
    #: per model: reliable or an upper bound (``≤ 89.0 (upper bound: loss-gap failed)``), and whether the
    #: checks ran at all
    reliability: ReliabilityView
    verdict: VerdictView  # the first screen's headline per model
    access: str | None  # what the attacks may see and aim at ("white-box (gradients), untargeted: pgd")
    examples_note: str | None  # set when the examples cover only some models
    #: our figures beside a catalog's published ones (RobustBench models only)
    published: Section | None = None


def _model_ties(result: ResultMatrix) -> tuple[Tie, ...]:
    eps = summary_eps(result)
    return tuple(t for t in ties(result) if math.isclose(t.eps, eps) and " / " not in t.first)


def report_view(result: ResultMatrix) -> ReportView:
    """Build every section of the classification report from ``result``."""
    empty = result.records.empty
    access = access_text(result)
    threat = [*threat_items(result), *([("attacks", access)] if access else [])]
    return ReportView(
        title=TITLE, headline=headline(result), threat=threat, data=data_items(result),
        models=models_table(result), attacks=attacks_table(result), empty=empty,
        matrix=matrix_view(result), summary=summary_view(result), ties=ties_section(result),
        model_ties=() if empty else _model_ties(result),
        curves=None if empty else Image("accuracy_curves", CURVES_ALT),
        examples=Image("examples", EXAMPLES_ALT, note=EXAMPLES_NOTE) if result.examples else None,
        norms=norms_section(result), detection=detection_section(result), patch=patch_section(result),
        physical=physical_section(result), learned=learned_section(result), transfer=transfer_section(result),
        uap=uap_section(result), cost=cost_section(result),
        brief_cost=brief_cost_table(result), checks=check_rows(result), checks_tally=checks_tally(result.checks),
        provenance=provenance_items(result), config=config_json(result),
        checks_line=checks_line(result, any(c.status != "pass" for c in check_rows(result)),
                                list(meaningless_of(result))),
        reliability=reliability_view(result),
        verdict=verdict_view(result), access=access, examples_note=examples_note(result),
        published=published_section(result),
    )
