"""ResultMatrix: the tidy table of an audit, its provenance, example images and versioned JSON.

``results.json`` is the source of truth; the terminal table, Markdown and HTML are renderings of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustaudit.core.errors import UserError, suggest
# COLUMNS (one row per model × attack × eps) and WORST_CASE are defined with the figures, in aggregate
from robustaudit.evaluate.aggregate import COLUMNS, WORST_CASE, Key, Outcomes, aggregate, interval
# the example images (and their .npz files) live in their own module; re-exported where they always were
from robustaudit.evaluate.examples import (Example, SegExample, load_examples, load_seg_examples, save_examples,
                                           save_seg_examples)
from robustaudit.evaluate.reliability import detector_bases, reliability_of

SCHEMA_VERSION = 1
#: Segmentation results: the same document with ``"task": "segmentation"``, :data:`SEG_COLUMNS` records
#: (mIoU and pixel accuracy instead of accuracy) and a ``segmentation`` block. Classification documents
#: keep version 1, so readers of version 1 still read them; a version-1 reader refuses a version-2 file
#: instead of misreading it.
SEG_SCHEMA_VERSION = 2
SEG_EXAMPLES_FILE = "seg_examples.npz"
RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.npz"
#: the reports robustaudit.reports.write_reports puts beside them
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

#: Columns of a segmentation audit's records, one row per model × attack × eps (the worst case is the
#: per-image ensemble: each image's adversarial with the lowest pixel accuracy over the attacks). mIoU
#: and pixel accuracy come from the dataset-level confusion matrix; ``*_ci_*`` are 95% per-image
#: bootstrap percentile intervals; ``targeted_success`` is the share of the pixels to change reached (NaN
#: for untargeted attacks); ``median_l2`` / ``median_linf`` are the medians over images of the
#: perturbation's norms.
SEG_COLUMNS: tuple[str, ...] = (
    "model", "attack", "eps", "norm", "n", "clean_miou", "miou", "miou_ci_low", "miou_ci_high",
    "clean_pixel_accuracy", "pixel_accuracy", "pa_ci_low", "pa_ci_high", "targeted_success", "median_l2",
    "median_linf", "seconds", "n_attacked", "forward_passes", "backward_passes", "fit_seconds",
)


class MissingCell(UserError, KeyError):
    """A cell the result does not hold: a ``KeyError`` (as it always was) and a one-line ``UserError``."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class ResultMatrix:
    """The outcome of an audit.

    ``records`` has one row per model × attack × eps (columns :data:`COLUMNS`); rows whose ``attack``
    is :data:`WORST_CASE` hold the per-sample worst case over all attacks at that eps (a sample counts
    as robust only if it survives every attack). ``provenance`` records versions, device, seed, the full
    configuration and the weights' sha256; ``checks`` holds sanity verdicts (dicts with ``id``,
    ``model``, ``status``, ``message``). ``robust_ids`` maps ``(model, attack, eps)`` to the sorted ids
    of the samples still robust in that cell: what paired, per-sample comparisons between attacks or
    between runs need.
    """

    records: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    robust_ids: dict[tuple[str, str, float], list[int]] = field(default_factory=dict)
    #: ``(model, attack) -> {sample id: smallest adversarial norm}`` for minimal-norm attacks
    #: (``inf`` where none was found), over the clean-correct samples.
    minimal_norms: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    #: ``classification`` (records: :data:`COLUMNS`) or ``segmentation`` (records: :data:`SEG_COLUMNS`)
    task: str = "classification"
    #: segmentation: ``(model, attack, eps) -> per-class IoU`` (``None`` for a class absent from both the
    #: labels and the predictions); ``attack`` ``"clean"`` holds the clean figures
    class_iou: dict[tuple[str, str, float], list[float | None]] = field(default_factory=dict)
    #: segmentation: rows of the attacks run once outside the eps grid (unbounded DAG): model, attack, n,
    #: miou, pixel_accuracy, targeted_success, median / q25 / q75 of the L2 and Linf norms, seconds
    unbounded: list[dict[str, Any]] = field(default_factory=list)
    #: segmentation: panels (image, ground truth, clean and adversarial prediction)
    seg_examples: list[SegExample] = field(default_factory=list)
    #: the per-sample outcomes every figure of ``records`` was aggregated from (classification, in memory
    #: only: ``None`` for a matrix read from ``results.json``)
    outcomes: Outcomes | None = None

    @property
    def is_segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def reliability(self) -> dict[str, dict[str, Any]]:
        """Per model ``{"reliable": bool, "reasons": [...]}`` from ``checks``, computed on each read so it
        follows the checks as they are attached (``results.json`` stores it as ``"reliability"``): an
        unanswered ``fail`` verdict makes the model's figures upper bounds (:mod:`.reliability`)."""
        return reliability_of(self.checks, self.models, detector_bases(self.provenance))

    def miou(self, model: str, attack: str, eps: float) -> float:
        """mIoU of one segmentation cell; ``attack`` may be :data:`WORST_CASE` (the per-image ensemble)."""
        r = self.records
        rows = r[(r["model"] == model) & (r["attack"] == attack) & np.isclose(r["eps"], eps)]
        if rows.empty:
            raise KeyError((model, attack, eps))
        return float(rows["miou"].iloc[0])

    # ------------------------------------------------------------------ views
    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.records["model"]))

    @property
    def attacks(self) -> list[str]:
        """Attack names in run order, without the worst-case pseudo-attack."""
        return [a for a in dict.fromkeys(self.records["attack"]) if a != WORST_CASE]

    @property
    def eps_values(self) -> list[float]:
        return sorted(set(float(e) for e in self.records["eps"]))

    def clean_accuracy(self, model: str) -> float:
        """Clean accuracy (classification) or clean mIoU (segmentation) of ``model``."""
        rows = self.records[self.records["model"] == model]
        if self.is_segmentation and not rows.empty:
            return float(rows["clean_miou"].iloc[0])
        if rows.empty:
            raise KeyError(model)
        return float(rows["clean_accuracy"].iloc[0])

    def robust_accuracy(self, model: str, attack: str, eps: float) -> float:
        """Robust accuracy of one cell; ``attack`` may be :data:`WORST_CASE`."""
        r = self.records
        rows = r[(r["model"] == model) & (r["attack"] == attack) & np.isclose(r["eps"], eps)]
        if rows.empty:
            raise self._missing(model, attack, eps)
        return float(rows["robust_accuracy"].iloc[0])

    def _missing(self, model: str, attack: str, eps: float) -> MissingCell:
        """The error for a cell the matrix lacks: which of model, attack and eps is not there, and what is."""
        r = self.records
        mine = r[r["model"] == model]
        if mine.empty:
            have = list(dict.fromkeys(r["model"]))
            what, kind = f"no model '{model}'{suggest(str(model), have)}", "models"
        elif not (mine["attack"] == attack).any():
            have = list(dict.fromkeys(mine["attack"]))
            what, kind = f"model '{model}' has no attack '{attack}'{suggest(str(attack), have)}", "its attacks"
        else:
            have = [f"{e:g}" for e in sorted(set(mine.loc[mine["attack"] == attack, "eps"]))]
            what, kind = f"model '{model}', attack '{attack}' has no eps {eps:g}", "its eps"
        return MissingCell(f"{what}; {kind}: {', '.join(map(str, have)) or 'none'}")

    def norm_summary(self) -> pd.DataFrame:
        """Per model × minimal-norm attack: the distribution of the smallest adversarial norm.

        Columns model, attack, n (clean-correct samples attacked), found (adversarial found), median,
        q25, q75 (of the norms, ``inf`` counting as larger than any: the median is ``inf`` when fewer
        than half were broken).
        """
        rows = []
        for (model, attack), norms in self.minimal_norms.items():
            v = np.sort(np.array(list(norms.values()), dtype=float))
            q = (lambda p: float(v[min(len(v) - 1, int(np.floor(p * (len(v) - 1) + 0.5)))]) if len(v) else float("nan"))
            rows.append({"model": model, "attack": attack, "n": len(v), "found": int(np.isfinite(v).sum()),
                         "median": q(0.5), "q25": q(0.25), "q75": q(0.75)})
        return pd.DataFrame(rows, columns=["model", "attack", "n", "found", "median", "q25", "q75"])

    def matrix(self, value: str = "robust_accuracy") -> pd.DataFrame:
        """Pivot: one row per model, one column per (attack, eps), cells ``value``."""
        return self.records.pivot_table(
            index="model", columns=["attack", "eps"], values=value, sort=False
        )

    def worst_case(self) -> pd.DataFrame:
        """The worst-case rows only (per-sample minimum over attacks)."""
        return self.records[self.records["attack"] == WORST_CASE].reset_index(drop=True)

    def below(self, threshold: float, *, bound: str = "point") -> pd.DataFrame:
        """Rows whose robust accuracy (``bound='point'``) or lower 95% bound (``'lower'``) is below."""
        column = {"point": "robust_accuracy", "lower": "ci_low"}.get(bound)
        if self.is_segmentation:  # segmentation gates on mIoU
            column = {"point": "miou", "lower": "miou_ci_low"}.get(bound)
        if column is None:
            raise UserError(f"bound must be 'point' or 'lower', got {bound!r}")
        return self.records[self.records[column] < threshold].reset_index(drop=True)

    @classmethod
    def from_outcomes(cls, outcomes: Outcomes, **fields: Any) -> ResultMatrix:
        """The matrix of per-sample ``outcomes`` (records and robust ids from
        :func:`~robustaudit.evaluate.aggregate.aggregate`); ``fields``: the other attributes."""
        rows, robust_ids = aggregate(outcomes)
        return cls(pd.DataFrame(rows, columns=list(COLUMNS)), robust_ids=robust_ids, outcomes=outcomes, **fields)

    def clean_interval(self, model: str) -> tuple[float, float, float]:
        """``(clean accuracy, 95% Wilson low, high)`` of ``model``, from its ``n_clean_correct`` of ``n``."""
        row = self.records[self.records["model"] == model]
        if row.empty:
            raise KeyError(model)
        n, k = int(row["n"].iloc[0]), int(row["n_clean_correct"].iloc[0])
        return (k / n if n else float("nan"), *interval(k, n))

    def add_columns(self, other: ResultMatrix) -> None:
        """Merge the attack columns of ``other`` (a run of more attacks on some of the same models, same
        samples and eps) into this matrix: their per-sample outcomes join this matrix's and every figure of
        those models, the worst case over every column included, is aggregated again. Rows keep their
        order; the new columns' rows follow."""
        if self.outcomes is None or other.outcomes is None:
            raise ValueError("add_columns needs the per-sample outcomes of both matrices (results of run())")
        known = {c.model for c in self.outcomes.clean}
        self.outcomes = Outcomes(self.outcomes.clean + [c for c in other.outcomes.clean if c.model not in known],
                                 self.outcomes.cells + [c for c in other.outcomes.cells if c.attack != WORST_CASE])
        rows, robust_ids = aggregate(self.outcomes)
        fresh: dict[Key, dict[str, Any]] = {(r["model"], r["attack"], r["eps"]): r for r in rows}
        old = {(r["model"], r["attack"], float(r["eps"])): r for r in self.records.to_dict(orient="records")}
        order = list(old) + [k for k in fresh if k not in old]
        self.records = pd.DataFrame([fresh.get(k, old.get(k)) for k in order], columns=list(self.records.columns))
        self.robust_ids = {k: robust_ids[k] if k in robust_ids else self.robust_ids[k]
                           for k in order if k in robust_ids or k in self.robust_ids}
        self.minimal_norms.update(other.minimal_norms)
        self.examples.extend(other.examples)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document (numbers as numbers, never strings; NaN and inf as None: :func:`json_safe`)."""
        records = self.records.to_dict(orient="records")  # numpy scalars and NaN: json_safe, as everywhere
        if self.is_segmentation:
            return json_safe({
                "schema_version": SEG_SCHEMA_VERSION,
                "task": self.task,
                "provenance": self.provenance,
                "records": records,
                "checks": self.checks,
                "reliability": self.reliability,
                "examples": SEG_EXAMPLES_FILE if self.seg_examples else None,
                "segmentation": {
                    "class_iou": [{"model": m, "attack": a, "eps": float(e), "iou": [_plain(v) for v in iou]}
                                  for (m, a, e), iou in self.class_iou.items()],
                    "unbounded": [{k: _plain(v) for k, v in row.items()} for row in self.unbounded],
                },
            })
        return json_safe({
            "schema_version": SCHEMA_VERSION,
            "provenance": self.provenance,
            "records": records,
            "checks": self.checks,
            "reliability": self.reliability,
            "examples": EXAMPLES_FILE if self.examples else None,
            "minimal_norms": [
                {"model": m, "attack": a, **{k: _plain(v) for k, v in _summary_of(self, m, a).items()},
                 "norms": {str(i): (nm if math.isfinite(nm) else None) for i, nm in norms.items()}}
                for (m, a), norms in self.minimal_norms.items()
            ],
            "robust_ids": [
                {"model": m, "attack": a, "eps": float(e), "ids": [int(i) for i in ids]}
                for (m, a, e), ids in self.robust_ids.items()
            ],
        })

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ResultMatrix:
        version = doc.get("schema_version")
        if version == SEG_SCHEMA_VERSION and doc.get("task") == "segmentation":
            seg = doc.get("segmentation") or {}
            class_iou = {(r["model"], r["attack"], float(r["eps"])): [None if v is None else float(v) for v in r["iou"]]
                         for r in seg.get("class_iou", [])}
            records = pd.DataFrame(doc.get("records", []), columns=list(SEG_COLUMNS)).astype({"eps": float})
            return cls(records, doc.get("provenance", {}), [], list(doc.get("checks", [])), task="segmentation",
                       class_iou=class_iou, unbounded=[dict(r) for r in seg.get("unbounded", [])])
        if version != SCHEMA_VERSION:
            raise UserError(
                f"results file has schema_version {version!r}; this robustaudit reads {SCHEMA_VERSION} "
                f"(classification) and {SEG_SCHEMA_VERSION} (segmentation)"
            )
        records = pd.DataFrame(doc.get("records", []), columns=list(COLUMNS))
        robust = {(r["model"], r["attack"], float(r["eps"])): list(r["ids"]) for r in doc.get("robust_ids", [])}
        minimal = {
            (r["model"], r["attack"]): {int(i): (float("inf") if v is None else float(v)) for i, v in r["norms"].items()}
            for r in doc.get("minimal_norms", [])
        }
        return cls(records, doc.get("provenance", {}), [], list(doc.get("checks", [])), robust, minimal)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``results.json`` (and ``examples.npz`` when there are examples) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / RESULTS_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half a results file
        if self.examples:
            save_examples(self.examples, out / EXAMPLES_FILE)
        if self.seg_examples:
            save_seg_examples(self.seg_examples, out / SEG_EXAMPLES_FILE)
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> ResultMatrix:
        """Read a finished run's directory (or a ``results.json`` path)."""
        p = Path(out_dir)
        path = p if p.is_file() else p / RESULTS_FILE
        if not path.is_file():
            raise UserError(f"no {RESULTS_FILE} in '{out_dir}': is it the --out directory of a run?")
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read '{path}': {exc}") from None
        if not isinstance(doc, dict):
            raise UserError(f"'{path}' is not a robustaudit results file (a JSON {type(doc).__name__}, not an object)")
        try:
            result = cls.from_dict(doc)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hand-edited or foreign file
            raise UserError(f"'{path}' is not a valid robustaudit results file ({type(exc).__name__}: {exc})") from None
        ex_path = path.parent / EXAMPLES_FILE
        if result.is_segmentation:
            seg_path = path.parent / SEG_EXAMPLES_FILE
            if doc.get("examples") and seg_path.is_file():
                result.seg_examples = load_seg_examples(seg_path)
        elif doc.get("examples") and ex_path.is_file():
            result.examples = load_examples(ex_path)
        return result


def _summary_of(result: ResultMatrix, model: str, attack: str) -> dict[str, Any]:
    row = result.norm_summary().set_index(["model", "attack"]).loc[(model, attack)]
    return {k: row[k] for k in ("n", "found", "median", "q25", "q75")}


def json_safe(doc: Any) -> Any:
    """``doc`` as JSON holds it, at any depth: NaN and +-inf as None, numpy scalars as Python numbers, tuples as
    lists. Whatever a stage puts in a check's evidence or the provenance, the save cannot fail after the audit."""
    if isinstance(doc, dict):
        return {k: json_safe(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [json_safe(v) for v in doc]
    return _plain(doc)


def _plain(v: Any) -> Any:
    """numpy scalars -> Python numbers; NaN -> None (JSON has no NaN)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
