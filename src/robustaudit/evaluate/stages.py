"""Stages after the matrix: one protocol for the sanity checks, detectors, model cost, the learned report,
the patch and the physical sections.

A :class:`Stage` has a name, computes its output for the finished matrix, and says how that output is
written as JSON (``encode``) and read back (``decode``). :class:`Stages` runs them for one audit: a
computed output goes to the store's ``stages`` table (one commit per stage and key, with its seconds)
as soon as it is done, and a resumed run reads it back instead of computing it again, so ``--resume``
re-checks nothing, re-fits no detector and re-measures no cost that was stored. ``key`` splits a stage
into units stored apart (one per model, say): a run killed halfway keeps the finished units.

What a stage does to the result (matrix rows, verdicts) is done by its caller with the output, the same
way for a computed and a read-back output, so both give the same ``results.json``.

The codecs below turn the richer outputs into JSON and back exactly: a table of matrix rows (floats as
``repr`` round-trips them, the column dtypes restored) and the sanity checks' verdicts and probes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

import pandas as pd

from robustaudit.evaluate.store import Store

__all__ = ["Stage", "Stages", "decode_checks", "decode_detection", "encode_checks", "encode_detection"]

T = TypeVar("T")


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Stage(Generic[T]):
    """One stage after the matrix: ``compute()`` its output; ``encode``/``decode`` it to and from JSON
    (the identity for an output that is JSON already)."""

    name: str
    compute: Callable[[], T]
    encode: Callable[[T], Any] = _same
    decode: Callable[[Any], T] = _same


@dataclass
class Stages:
    """Runs the stages of one audit on its store (``None``: nothing is stored, everything computed).

    ``reuse``: a resumed run, which reads stored outputs back. ``seconds`` per stage name: what its units
    cost when computed (a read-back unit counts its stored seconds, as a reused batch does);
    ``reused``/``computed``: units read back and computed (``provenance["resume"]``).
    """

    store: Store | None = None
    reuse: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    #: seconds of read-back units minus the time reading them took: what a caller timing a stage adds
    credit: dict[str, float] = field(default_factory=dict)
    reused: int = 0
    computed: int = 0

    def stored(self, name: str, key: str = "") -> bool:
        """Whether a resumed run finds stage ``name``'s output for ``key`` in the store."""
        return self.reuse and self.store is not None and self.store.stage(name, key) is not None

    def run(self, stage: Stage[T], key: str = "") -> T:
        """``stage``'s output for ``key``: read back when stored and resuming, else computed and stored."""
        t0 = time.perf_counter()
        found = self.store.stage(stage.name, key) if self.reuse and self.store is not None else None
        if found is not None:
            value, seconds = found
            self.reused += 1
            out = stage.decode(value)
            self.credit[stage.name] = self.credit.get(stage.name, 0.0) + seconds - (time.perf_counter() - t0)
        else:
            out = stage.compute()
            seconds = time.perf_counter() - t0
            if self.store is not None:
                self.store.put_stage(stage.name, key, stage.encode(out), seconds)
            self.computed += 1
        self.seconds[stage.name] = self.seconds.get(stage.name, 0.0) + seconds
        return out

    def resume_counts(self) -> dict[str, int]:
        """``reused_stages`` / ``computed_stages`` for ``provenance["resume"]``."""
        return {"reused_stages": self.reused, "computed_stages": self.computed}


# ---------------------------------------------------------------------------------------------- codecs
def encode_table(frame: pd.DataFrame) -> dict[str, Any]:
    """A data frame as JSON: its columns, their dtypes and its rows."""
    return {"columns": list(frame.columns), "dtypes": [str(d) for d in frame.dtypes],
            "rows": frame.astype(object).where(frame.notna(), None).values.tolist()}


def decode_table(doc: dict[str, Any]) -> pd.DataFrame:
    """The data frame :func:`encode_table` wrote (missing values back as NaN / None per dtype)."""
    frame = pd.DataFrame(doc["rows"], columns=doc["columns"])
    return frame.astype(dict(zip(doc["columns"], doc["dtypes"])))


def encode_detection(out: tuple[pd.DataFrame, dict[tuple[str, str, float], list[int]], dict[str, Any]]
                     ) -> dict[str, Any]:
    """:func:`~robustaudit.evaluate.detection.evaluate_detection`'s ``(records, robust ids, block)`` as JSON."""
    records, robust, block = out
    return {"records": encode_table(records), "robust": [[*key, list(ids)] for key, ids in robust.items()],
            "block": block}


def decode_detection(doc: dict[str, Any]) -> tuple[pd.DataFrame, dict[tuple[str, str, float], list[int]],
                                                   dict[str, Any]]:
    """What :func:`encode_detection` wrote, as ``evaluate_detection`` returned it."""
    robust = {(m, a, float(e)): [int(i) for i in ids] for m, a, e, ids in doc["robust"]}
    return decode_table(doc["records"]), robust, doc["block"]


def encode_checks(out: tuple[list[Any], dict[str, Any]]) -> dict[str, Any]:
    """:func:`~robustaudit.checks.run_checks`'s ``(verdicts, probes by model)`` as JSON: each verdict's
    fields; each probe's fields, its verdicts as indices into the verdict list."""
    verdicts, probes = out
    index = {id(v): k for k, v in enumerate(verdicts)}
    return {"verdicts": [_fields(v) for v in verdicts],
            "probes": {name: {**_fields(p, skip="verdicts"), "verdicts": [index[id(v)] for v in p.verdicts]}
                       for name, p in probes.items()}}


def decode_checks(doc: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The verdicts and probes :func:`encode_checks` wrote, as ``run_checks`` returned them."""
    from robustaudit.checks.probes import Probe
    from robustaudit.checks.verdict import Verdict

    # JSON has no tuple: answered_by comes back as a list and must be the tuple the verdict was built with.
    verdicts = [Verdict(**{**v, "answered_by": tuple(v.get("answered_by", ()))}) for v in doc["verdicts"]]
    probes = {name: Probe(**{k: v for k, v in p.items() if k != "verdicts"},
                          verdicts=[verdicts[k] for k in p["verdicts"]]) for name, p in doc["probes"].items()}
    return verdicts, probes


def _fields(obj: Any, skip: str = "") -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name != skip}
