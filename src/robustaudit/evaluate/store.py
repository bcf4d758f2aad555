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
- ``meta(key, value)`` — JSON values: ``config``, ``fingerprint`` (what must match to resume),
  ``finished`` (true once ``results.json`` is written), and whatever later stages add.

Batches are keyed by their exact sample ids (``"3,4,7"``): survivors are deterministic, so a resumed
run cuts the same batches, and a batch-dependent attack sees the same batch it saw before.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustaudit.evaluate.result import Example

STORE_FILE = "results.sqlite"
#: Bumped when the tables change meaning; part of the resume fingerprint. 3: pass counts per batch/cell.
STORE_VERSION = 3

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
"""


_TABLES = ("meta", "clean", "clean_batches", "adv", "adv_batches", "examples", "cells")


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


def batch_key(ids: Sequence[int]) -> str:
    """The exact-ids key of a batch: ``"3,4,7"`` (order matters: it is the batch the attack saw)."""
    return ",".join(str(int(i)) for i in ids)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # viewed as bytes so every dtype (bfloat16 included, which numpy lacks) hashes the same way
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and raw bytes (the data check of a resumed run)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes, bytes): the weights of a model that was
    not read from a file. Non-tensor entries (extra state) count by their ``repr``."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(_tensor_bytes(value))
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


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

    def count_batches(self) -> int:
        """Finished batches (clean and attacked) of the stored run."""
        return sum(self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("clean_batches", "adv_batches"))

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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
