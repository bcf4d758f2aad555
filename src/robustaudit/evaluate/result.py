"""ResultMatrix: the tidy table of an audit, its provenance, example images and versioned JSON.

``results.json`` is the source of truth; the terminal table, Markdown and HTML are renderings of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustaudit.core.errors import UserError
from robustaudit.evaluate.metrics import wilson_interval

SCHEMA_VERSION = 1
#: Segmentation results: the same document with ``"task": "segmentation"``, :data:`SEG_COLUMNS` records
#: (mIoU and pixel accuracy instead of accuracy) and a ``segmentation`` block. Classification documents
#: keep version 1, so readers of version 1 still read them; a version-1 reader refuses a version-2 file
#: instead of misreading it.
SEG_SCHEMA_VERSION = 2
SEG_EXAMPLES_FILE = "seg_examples.npz"
WORST_CASE = "worst-case"
RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.npz"

#: Columns of :attr:`ResultMatrix.records`, one row per model × attack × eps. The cost columns (after
#: ``seconds``, added without a schema change: older files read them as missing) say what the cell
#: spent: ``n_attacked`` samples (survivors of the previous eps; for the worst case, samples at least
#: one attack attacked), the forward / backward passes the attacks pushed through the model (in
#: samples: a batch of B counts B), and the same per attacked sample (NaN when none was attacked).
COLUMNS: tuple[str, ...] = (
    "model",
    "attack",
    "eps",
    "norm",
    "n",
    "n_clean_correct",
    "n_robust",
    "clean_accuracy",
    "robust_accuracy",
    "ci_low",
    "ci_high",
    "seconds",
    "n_attacked",
    "forward_passes",
    "backward_passes",
    "forward_passes_per_attacked_sample",
    "backward_passes_per_attacked_sample",
)
#: Columns of a segmentation audit's records, one row per model × attack × eps (the worst case is the
#: per-image ensemble: each image's adversarial with the lowest pixel accuracy over the attacks). mIoU
#: and pixel accuracy come from the dataset-level confusion matrix; ``*_ci_*`` are 95% per-image
#: bootstrap percentile intervals; ``targeted_success`` is the share of valid target pixels reached (NaN
#: for untargeted attacks); ``median_l2`` / ``median_linf`` are the medians over images of the
#: perturbation's norms.
SEG_COLUMNS: tuple[str, ...] = (
    "model",
    "attack",
    "eps",
    "norm",
    "n",
    "clean_miou",
    "miou",
    "miou_ci_low",
    "miou_ci_high",
    "clean_pixel_accuracy",
    "pixel_accuracy",
    "pa_ci_low",
    "pa_ci_high",
    "targeted_success",
    "median_l2",
    "median_linf",
    "seconds",
    "n_attacked",
    "forward_passes",
    "backward_passes",
)
#: The cost columns a worst-case row sums over its attack columns.
_SUMMED = ("seconds", "forward_passes", "backward_passes")


@dataclass
class Example:
    """One attacked sample for the report: images of shape ``(C, H, W)`` in [0, 1]."""

    model: str
    attack: str
    eps: float
    clean: np.ndarray
    adversarial: np.ndarray
    label: int
    clean_pred: int
    adv_pred: int
    #: the sample's id in the data set (what orders examples merged from several processes)
    sample_id: int | None = None


@dataclass
class SegExample:
    """One attacked image of a segmentation audit for the report's panels: ``clean`` and ``adversarial``
    ``(C, H, W)`` in [0, 1]; ``label``, ``clean_pred``, ``adv_pred`` ``(H, W)`` class maps (255 = ignore)."""

    model: str
    attack: str
    eps: float
    clean: np.ndarray
    adversarial: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray


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

    @property
    def is_segmentation(self) -> bool:
        return self.task == "segmentation"

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
            raise KeyError((model, attack, eps))
        return float(rows["robust_accuracy"].iloc[0])

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

    def add_columns(self, other: ResultMatrix) -> None:
        """Merge the attack columns of ``other`` (a run of more attacks on some of the same models, same
        samples and eps) into this matrix, and recompute those models' worst case over every column."""
        extra = other.records[other.records["attack"] != WORST_CASE]
        self.records = pd.concat([self.records, extra], ignore_index=True)
        self.robust_ids.update({k: v for k, v in other.robust_ids.items() if k[1] != WORST_CASE})
        self.minimal_norms.update(other.minimal_norms)
        self.examples.extend(other.examples)
        for model in dict.fromkeys(extra["model"]):
            for idx in self.records.index[(self.records["model"] == model) & (self.records["attack"] == WORST_CASE)]:
                row = self.records.loc[idx]
                eps = float(row["eps"])
                robust = set.intersection(*(set(ids) for (m, a, e), ids in self.robust_ids.items()
                                            if m == model and a != WORST_CASE and e == eps))
                n = int(row["n"])
                lo, hi = wilson_interval(len(robust), n)
                self.records.loc[idx, ["n_robust", "robust_accuracy", "ci_low", "ci_high"]] = [
                    len(robust), len(robust) / n if n else float("nan"), lo, hi]
                cells = self.records[(self.records["model"] == model) & (self.records["attack"] != WORST_CASE)
                                     & np.isclose(self.records["eps"], eps)]
                for column in _SUMMED:
                    self.records.loc[idx, column] = float(cells[column].sum())
                grid = sorted(float(e) for e in self.records.loc[self.records["model"] == model, "eps"].unique())
                below = [e for e in grid if e < eps and not math.isclose(e, eps)]
                attacked = worst_case_attacked(cells.to_dict(orient="records"), self.robust_ids,
                                               below[-1] if below else None)
                self.records.loc[idx, "n_attacked"] = attacked
                for kind in ("forward", "backward"):
                    self.records.loc[idx, f"{kind}_passes_per_attacked_sample"] = (
                        float(self.records.loc[idx, f"{kind}_passes"]) / attacked if attacked else float("nan"))
                self.robust_ids[(model, WORST_CASE, eps)] = sorted(robust)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document (numbers as numbers, never strings)."""
        records = [
            {k: _plain(v) for k, v in row.items()} for row in self.records.to_dict(orient="records")
        ]
        if self.is_segmentation:
            return {
                "schema_version": SEG_SCHEMA_VERSION,
                "task": self.task,
                "provenance": self.provenance,
                "records": records,
                "checks": self.checks,
                "examples": SEG_EXAMPLES_FILE if self.seg_examples else None,
                "segmentation": {
                    "class_iou": [{"model": m, "attack": a, "eps": float(e), "iou": [_plain(v) for v in iou]}
                                  for (m, a, e), iou in self.class_iou.items()],
                    "unbounded": [{k: _plain(v) for k, v in row.items()} for row in self.unbounded],
                },
            }
        return {
            "schema_version": SCHEMA_VERSION,
            "provenance": self.provenance,
            "records": records,
            "checks": self.checks,
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
        }

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
            _save_examples(self.examples, out / EXAMPLES_FILE)
        if self.seg_examples:
            _save_seg_examples(self.seg_examples, out / SEG_EXAMPLES_FILE)
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
                result.seg_examples = _load_seg_examples(seg_path)
        elif doc.get("examples") and ex_path.is_file():
            result.examples = _load_examples(ex_path)
        return result


def worst_case_attacked(cells: Sequence[Mapping[str, Any]],
                        robust_ids: Mapping[tuple[str, str, float], Sequence[int]], previous_eps: float | None) -> int:
    """How many samples the attack columns ``cells`` (records of one model at one eps) attacked between
    them: the worst-case row's ``n_attacked``.

    A column that attacked every clean-correct sample (the first eps, a minimal-norm run) attacked them
    all; otherwise each fixed-eps column attacked exactly its survivors of ``previous_eps`` (the grid
    value below), whose ids are in ``robust_ids``, and the union is counted.
    """
    cells = [c for c in cells if c.get("attack") != WORST_CASE]
    if not cells:
        return 0
    n_clean = int(cells[0]["n_clean_correct"])
    if previous_eps is None or any(_count(c.get("n_attacked")) >= n_clean for c in cells):
        return n_clean
    union: set[int] = set()
    for c in cells:
        union.update(robust_ids.get((c["model"], c["attack"], previous_eps), ()))
    return len(union)


def _count(v: Any) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return out


def _summary_of(result: ResultMatrix, model: str, attack: str) -> dict[str, Any]:
    row = result.norm_summary().set_index(["model", "attack"]).loc[(model, attack)]
    return {k: row[k] for k in ("n", "found", "median", "q25", "q75")}


def _plain(v: Any) -> Any:
    """numpy scalars -> Python numbers; NaN -> None (JSON has no NaN)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _save_examples(examples: list[Example], path: Path) -> None:
    meta = [{k: v for k, v in asdict(e).items() if k not in ("clean", "adversarial")} for e in examples]
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(meta)),
        clean=np.stack([e.clean for e in examples]).astype(np.float32),
        adversarial=np.stack([e.adversarial for e in examples]).astype(np.float32),
    )


def _load_examples(path: Path) -> list[Example]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return [
            Example(clean=z["clean"][i], adversarial=z["adversarial"][i], **m)
            for i, m in enumerate(meta)
        ]


def _save_seg_examples(examples: list[SegExample], path: Path) -> None:
    meta = [{"model": e.model, "attack": e.attack, "eps": e.eps} for e in examples]
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(meta)),
        clean=np.stack([e.clean for e in examples]).astype(np.float32),
        adversarial=np.stack([e.adversarial for e in examples]).astype(np.float32),
        label=np.stack([e.label for e in examples]).astype(np.int64),
        clean_pred=np.stack([e.clean_pred for e in examples]).astype(np.int64),
        adv_pred=np.stack([e.adv_pred for e in examples]).astype(np.int64),
    )


def _load_seg_examples(path: Path) -> list[SegExample]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return [
            SegExample(clean=z["clean"][i], adversarial=z["adversarial"][i], label=z["label"][i],
                       clean_pred=z["clean_pred"][i], adv_pred=z["adv_pred"][i], **m)
            for i, m in enumerate(meta)
        ]
