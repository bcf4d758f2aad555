"""The per-sample results store: one SQLite file per run, written after every batch.

A crash (even SIGKILL) loses at most the batch in flight: each batch is one transaction, and SQLite in
WAL mode keeps a committed transaction through a process crash. Tables:

- ``clean(model, sample_id, label, pred, correct)``
- ``clean_batches(model, ids, data_sha256)`` — one per clean batch, written with its ``clean`` rows:
  the hash of the batch's input bytes lets a resumed run check, at no extra read pass, that the data
  did not change.
- ``adv(model, attack, eps, sample_id, pred, correct, pert_norm)`` — only samples actually attacked;
  a sample broken at a smaller eps is broken at every larger one and is not attacked again.
- ``adv_batches(model, attack, eps, ids, seconds, forward_passes, backward_passes)`` — one per attacked
  batch, written with its ``adv`` and ``examples`` rows, so a batch is either wholly stored or not at
  all; it keeps what the batch cost (seconds, and the samples the attack pushed forward and back through
  the model), so a resumed run reports the cost of the uninterrupted one.
- ``examples(model, attack, eps, sample_id, ...)`` — the report's example images picked from a batch
  (``x``/``adv`` as ``.npy`` bytes), so a batch reused on resume gives back its examples too.
- ``cells(model, attack, eps, seconds, n_attacked, n_robust, forward_passes, backward_passes)`` — a
  finished model × attack × eps.
- ``seg_batches(model, attack, eps, ids, ...)`` — one per segmentation batch (``attack`` ``""`` and eps 0
  for the clean pass, eps ``inf`` for an unbounded attack): the per-image confusion matrices ``(B, K, K)``
  int64 (the per-image pixel accuracy and every figure of the cell follow from them exactly), the clean
  prediction maps (clean batches: the attacks' target maps and the panels need them), the per-image L2 /
  Linf perturbation norms, targeted-success counts, seconds, passes, and the clean batch's data sha256.
- ``seg_examples(model, attack, eps, ids, rank, drop, ...)`` — the panel images picked from a batch.
- ``seg_fits(model, attack, eps, ...)`` — a fitted universal perturbation and what its fit cost, so a
  resumed run whose cell is wholly stored need not fit it again.
- ``stages(name, key, value, seconds)`` — a stage after the matrix (checks, detectors, cost, learned, patch,
  physical; ``fit`` for a fitted attack's record) finished for ``key``: its JSON output and what it cost.
- ``meta(key, value)`` — JSON values: ``config``, ``fingerprint`` (what must match to resume),
  ``finished`` (true once ``results.json`` is written), and whatever later stages add.

Batches are keyed by their exact sample ids (``"3,4,7"``): survivors are deterministic, so a resumed
run cuts the same batches, and a batch-dependent attack sees the same batch it saw before.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from robustaudit.core.hashing import state_dict_sha256, tensors_sha256  # noqa: F401 - re-exported
from robustaudit.evaluate.result import Example, SegExample

STORE_FILE = "results.sqlite"
#: Bumped when the tables change meaning; part of the resume fingerprint. 3: pass counts per batch/cell.
STORE_VERSION = 4  # 4: segmentation batches (seg_batches, seg_examples, seg_fits)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clean (
    model TEXT NOT NULL, sample_id INTEGER NOT NULL, label INTEGER NOT NULL,
    pred INTEGER NOT NULL, correct INTEGER NOT NULL, PRIMARY KEY (model, sample_id));
CREATE TABLE IF NOT EXISTS adv (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, sample_id INTEGER NOT NULL,
    pred INTEGER NOT NULL, correct INTEGER NOT NULL, pert_norm REAL NOT NULL,
    PRIMARY KEY (model, attack, eps, sample_id));
CREATE TABLE IF NOT EXISTS clean_batches (
    model TEXT NOT NULL, ids TEXT NOT NULL, data_sha256 TEXT NOT NULL, PRIMARY KEY (model, ids));
CREATE TABLE IF NOT EXISTS adv_batches (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, ids TEXT NOT NULL,
    seconds REAL NOT NULL, forward_passes INTEGER NOT NULL, backward_passes INTEGER NOT NULL,
    PRIMARY KEY (model, attack, eps, ids));
CREATE TABLE IF NOT EXISTS examples (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, sample_id INTEGER NOT NULL,
    example_eps REAL NOT NULL, x BLOB NOT NULL, adv BLOB NOT NULL, label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL, pred INTEGER NOT NULL, PRIMARY KEY (model, attack, eps, sample_id));
CREATE TABLE IF NOT EXISTS cells (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, seconds REAL NOT NULL,
    n_attacked INTEGER NOT NULL, n_robust INTEGER NOT NULL, forward_passes INTEGER NOT NULL,
    backward_passes INTEGER NOT NULL, PRIMARY KEY (model, attack, eps));
CREATE TABLE IF NOT EXISTS seg_batches (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, ids TEXT NOT NULL,
    data_sha256 TEXT NOT NULL, cms BLOB NOT NULL, clean_pred BLOB, l2 BLOB NOT NULL, linf BLOB NOT NULL,
    hits INTEGER NOT NULL, total INTEGER NOT NULL, seconds REAL NOT NULL, forward_passes INTEGER NOT NULL,
    backward_passes INTEGER NOT NULL, PRIMARY KEY (model, attack, eps, ids));
CREATE TABLE IF NOT EXISTS seg_examples (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, ids TEXT NOT NULL, rank INTEGER NOT NULL,
    drop_ REAL NOT NULL, example_eps REAL NOT NULL, x BLOB NOT NULL, adv BLOB NOT NULL, label BLOB NOT NULL,
    clean_pred BLOB NOT NULL, pred BLOB NOT NULL, PRIMARY KEY (model, attack, eps, ids, rank));
CREATE TABLE IF NOT EXISTS seg_fits (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, seconds REAL NOT NULL,
    forward_passes INTEGER NOT NULL, backward_passes INTEGER NOT NULL, xi BLOB NOT NULL, static BLOB,
    PRIMARY KEY (model, attack, eps));
CREATE TABLE IF NOT EXISTS stages (
    name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (name, key));
"""


_TABLES = ("meta", "clean", "clean_batches", "adv", "adv_batches", "examples", "cells", "seg_batches",
           "seg_examples", "seg_fits", "stages")


@dataclass
class StoredBatch:
    """An attacked batch read back from the store, in the order of its ids."""

    ids: list[int]
    preds: list[int]
    correct: list[bool]
    norms: list[float]
    seconds: float
    #: ``(sample id, example)`` pairs picked from this batch for the report
    examples: list[tuple[int, Example]] = field(default_factory=list)
    #: samples the attack pushed through the model's forward, and back through it
    forward_passes: int = 0
    backward_passes: int = 0
    #: per sample, correct in each draw of a repeated judgement (``EOT(judge=R)``); computed batches only
    draws: list[list[bool]] | None = None


@dataclass
class SegBatch:
    """One segmentation batch (clean or attacked), as written and as read back.

    ``cms`` ``(B, K, K)`` int64 per-image confusion matrices (rows: true class); ``clean_pred`` ``(B, H, W)``
    int64 (clean batches only); ``l2``/``linf`` per-image perturbation norms (attacked batches);
    ``examples`` ``(drop in pixel accuracy, panel)`` pairs picked from the batch.
    """

    cms: torch.Tensor
    data_sha256: str = ""
    clean_pred: torch.Tensor | None = None
    l2: list[float] = field(default_factory=list)
    linf: list[float] = field(default_factory=list)
    hits: int = 0
    total: int = 0
    seconds: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0
    examples: list[tuple[float, SegExample]] = field(default_factory=list)


def batch_key(ids: Sequence[int]) -> str:
    """The exact-ids key of a batch: ``"3,4,7"`` (order matters: it is the batch the attack saw)."""
    return ",".join(str(int(i)) for i in ids)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _small_int(a: np.ndarray) -> np.ndarray:
    """A class map in the narrowest dtype that holds it (uint8 for up to 256 classes, 255 = ignore)."""
    a = np.asarray(a)
    return a.astype(np.uint8) if a.size == 0 or (a.min() >= 0 and a.max() <= 255) else a.astype(np.int64)


class Store:
    """Append-only writer of per-sample records (WAL mode, one commit per batch), and their reader
    for a resumed run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def reset(self) -> None:
        """Forget earlier records (a fresh run in an existing ``--out``). The tables are made anew, so a
        store written by an older layout gets the current one."""
        with self._db:
            for table in _TABLES:
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def put_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able ``value`` under ``key`` (replaces an earlier one)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put_stage(self, name: str, key: str, value: Any, seconds: float) -> None:
        """Stage ``name``'s JSON-able output for ``key`` and its seconds, in one commit (replaces an earlier one)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?)",
                             (name, key, json.dumps(value), float(seconds)))

    def stage(self, name: str, key: str = "") -> tuple[Any, float] | None:
        """``(output, seconds)`` of stage ``name`` for ``key`` as :meth:`put_stage` wrote it, or ``None``."""
        row = self._db.execute("SELECT value, seconds FROM stages WHERE name = ? AND key = ?", (name, key)).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def stage_outputs(self, name: str) -> list[Any]:
        """Every stored output of stage ``name``, in the order first written."""
        return [json.loads(r[0]) for r in self._db.execute("SELECT value FROM stages WHERE name = ? ORDER BY rowid",
                                                           (name,))]

    def count_batches(self) -> int:
        """Finished batches (clean and attacked, of either task) of the stored run."""
        return sum(self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                   for t in ("clean_batches", "adv_batches", "seg_batches"))

    def write_seg_batch(self, model: str, attack: str, eps: float, ids: Sequence[int], batch: SegBatch) -> None:
        """One segmentation batch with its panel examples, in one commit (stored whole or not at all).
        ``attack`` is ``""`` for the clean pass."""
        key = (model, attack, float(eps), batch_key(ids))
        pred = None if batch.clean_pred is None else _npy(_small_int(batch.clean_pred.cpu().numpy()))
        shots = [(*key, rank, float(drop), float(ex.eps), _npy(ex.clean), _npy(ex.adversarial),
                  _npy(_small_int(ex.label)), _npy(_small_int(ex.clean_pred)), _npy(_small_int(ex.adv_pred)))
                 for rank, (drop, ex) in enumerate(batch.examples)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO seg_examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 shots)
            self._db.execute(
                "INSERT OR REPLACE INTO seg_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, batch.data_sha256, _npy(batch.cms.cpu().numpy().astype(np.int64)), pred,
                 _npy(np.asarray(batch.l2, dtype=np.float64)), _npy(np.asarray(batch.linf, dtype=np.float64)),
                 int(batch.hits), int(batch.total), float(batch.seconds), int(batch.forward_passes),
                 int(batch.backward_passes)))

    def seg_batch(self, model: str, attack: str, eps: float, ids: Sequence[int]) -> SegBatch | None:
        """The stored segmentation batch with exactly these ids, or ``None`` when it was not finished."""
        key = (model, attack, float(eps), batch_key(ids))
        row = self._db.execute(
            "SELECT data_sha256, cms, clean_pred, l2, linf, hits, total, seconds, forward_passes, backward_passes "
            "FROM seg_batches WHERE model = ? AND attack = ? AND eps = ? AND ids = ?", key).fetchone()
        if row is None:
            return None
        shots = self._db.execute(
            "SELECT drop_, example_eps, x, adv, label, clean_pred, pred FROM seg_examples "
            "WHERE model = ? AND attack = ? AND eps = ? AND ids = ? ORDER BY rank", key).fetchall()
        return SegBatch(
            cms=torch.from_numpy(_from_npy(row[1]).astype(np.int64)), data_sha256=row[0],
            clean_pred=None if row[2] is None else torch.from_numpy(_from_npy(row[2]).astype(np.int64)),
            l2=_from_npy(row[3]).tolist(), linf=_from_npy(row[4]).tolist(), hits=int(row[5]), total=int(row[6]),
            seconds=float(row[7]), forward_passes=int(row[8]), backward_passes=int(row[9]),
            examples=[(float(d), SegExample(model, attack, float(e), _from_npy(x), _from_npy(a),
                                            _from_npy(lab).astype(np.int64), _from_npy(cp).astype(np.int64),
                                            _from_npy(p).astype(np.int64)))
                      for d, e, x, a, lab, cp, p in shots])

    def write_seg_fit(self, model: str, attack: str, eps: float, fit: dict[str, Any], xi: torch.Tensor,
                      static: torch.Tensor | None) -> None:
        """A fitted universal perturbation ``xi`` ``(C, H, W)`` (and its static target map ``(H, W)``, if
        any) with its cost (``fit``: seconds, forward_passes, backward_passes)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO seg_fits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (model, attack, float(eps), float(fit["seconds"]), int(fit["forward_passes"]),
                              int(fit["backward_passes"]), _npy(xi.detach().cpu().numpy()),
                              None if static is None else _npy(static.detach().cpu().numpy())))

    def seg_fit(self, model: str, attack: str, eps: float
                ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor | None] | None:
        """``(fit record, xi, static)`` as written by :meth:`write_seg_fit`, or ``None``."""
        row = self._db.execute("SELECT seconds, forward_passes, backward_passes, xi, static FROM seg_fits "
                               "WHERE model = ? AND attack = ? AND eps = ?", (model, attack, float(eps))).fetchone()
        if row is None:
            return None
        fit = {"model": model, "attack": attack, "eps": float(eps), "seconds": row[0], "forward_passes": row[1],
               "backward_passes": row[2]}
        return fit, torch.from_numpy(_from_npy(row[3])), None if row[4] is None else torch.from_numpy(_from_npy(row[4]))

    def write_clean(
        self,
        model: str,
        ids: Sequence[int],
        labels: Sequence[int],
        preds: Sequence[int],
        *,
        data_sha256: str | None = None,
    ) -> None:
        """One clean batch: per-sample rows and, given ``data_sha256``, the batch record (one commit)."""
        rows = [(model, int(i), int(t), int(p), int(t == p)) for i, t, p in zip(ids, labels, preds)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO clean VALUES (?, ?, ?, ?, ?)", rows)
            if data_sha256 is not None:
                self._db.execute("INSERT OR REPLACE INTO clean_batches VALUES (?, ?, ?)",
                                 (model, batch_key(ids), data_sha256))

    def clean_batch(self, model: str, ids: Sequence[int]) -> tuple[str, list[int]] | None:
        """``(data sha256, preds in the order of ids)`` of a stored clean batch, or ``None``."""
        row = self._db.execute("SELECT data_sha256 FROM clean_batches WHERE model = ? AND ids = ?",
                               (model, batch_key(ids))).fetchone()
        if row is None:
            return None
        preds = dict(self._select_in("SELECT sample_id, pred FROM clean WHERE model = ?", (model,), ids))
        return row[0], [preds[int(i)] for i in ids]

    def write_adv(
        self,
        model: str,
        attack: str,
        eps: float,
        ids: Sequence[int],
        labels: Sequence[int],
        preds: Sequence[int],
        norms: Sequence[float],
        *,
        seconds: float | None = None,
        examples: Sequence[tuple[int, Example]] = (),
        forward_passes: int = 0,
        backward_passes: int = 0,
    ) -> None:
        """One attacked batch: per-sample rows, the report examples picked from it and, given
        ``seconds``, the batch record with its cost (``seconds``, forward and backward passes in
        samples), in one commit (a batch is stored whole or not at all)."""
        rows = [
            (model, attack, float(eps), int(i), int(p), int(t == p), float(nm))
            for i, t, p, nm in zip(ids, labels, preds, norms)
        ]
        shots = [
            (model, attack, float(eps), int(sid), float(ex.eps), _npy(ex.clean), _npy(ex.adversarial),
             int(ex.label), int(ex.clean_pred), int(ex.adv_pred))
            for sid, ex in examples
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO adv VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany("INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", shots)
            if seconds is not None:
                self._db.execute("INSERT OR REPLACE INTO adv_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (model, attack, float(eps), batch_key(ids), float(seconds), int(forward_passes),
                                  int(backward_passes)))

    def adv_batch(self, model: str, attack: str, eps: float, ids: Sequence[int]) -> StoredBatch | None:
        """The stored attacked batch with exactly these ids, or ``None`` when it was not finished."""
        row = self._db.execute(
            "SELECT seconds, forward_passes, backward_passes FROM adv_batches "
            "WHERE model = ? AND attack = ? AND eps = ? AND ids = ?",
            (model, attack, float(eps), batch_key(ids))).fetchone()
        if row is None:
            return None
        key = (model, attack, float(eps))
        found = {r[0]: r[1:] for r in self._select_in(
            "SELECT sample_id, pred, correct, pert_norm FROM adv WHERE model = ? AND attack = ? AND eps = ?",
            key, ids)}
        shots = sorted(self._select_in(
            "SELECT sample_id, example_eps, x, adv, label, clean_pred, pred FROM examples "
            "WHERE model = ? AND attack = ? AND eps = ?", key, ids), key=lambda r: list(ids).index(r[0]))
        return StoredBatch(
            ids=[int(i) for i in ids],
            preds=[found[int(i)][0] for i in ids],
            correct=[bool(found[int(i)][1]) for i in ids],
            norms=[found[int(i)][2] for i in ids],
            seconds=row[0],
            examples=[(sid, Example(model, attack, e, _from_npy(x), _from_npy(a), lab, cp, p, sample_id=sid))
                      for sid, e, x, a, lab, cp, p in shots],
            forward_passes=int(row[1]),
            backward_passes=int(row[2]),
        )

    def _select_in(self, sql: str, params: Sequence[Any], ids: Sequence[int]) -> list[tuple]:
        """``sql`` restricted to ``sample_id IN ids`` (the ids are integers we made, inlined)."""
        return self._db.execute(f"{sql} AND sample_id IN ({batch_key(ids)})", params).fetchall()

    def write_cell(
        self, model: str, attack: str, eps: float, seconds: float, n_attacked: int, n_robust: int, *,
        forward_passes: int = 0, backward_passes: int = 0,
    ) -> None:
        """A finished model × attack × eps with its cost (seconds, passes in samples)."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model, attack, float(eps), float(seconds), int(n_attacked), int(n_robust), int(forward_passes),
                 int(backward_passes)),
            )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a read-only query (tests and reports of per-sample data)."""
        return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
