"""The per-sample results store: one SQLite file per run, written after every batch.

A crash loses at most the batch in flight. Tables:

- ``clean(model, sample_id, label, pred, correct)``
- ``adv(model, attack, eps, sample_id, pred, correct, pert_norm)`` — only samples actually attacked;
  a sample broken at a smaller eps is broken at every larger one and is not attacked again.
- ``cells(model, attack, eps, seconds, n_attacked, n_robust)`` — a finished model × attack × eps.
- ``meta(key, value)`` — the run's configuration (JSON).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STORE_FILE = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clean (
    model TEXT NOT NULL, sample_id INTEGER NOT NULL, label INTEGER NOT NULL,
    pred INTEGER NOT NULL, correct INTEGER NOT NULL, PRIMARY KEY (model, sample_id));
CREATE TABLE IF NOT EXISTS adv (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, sample_id INTEGER NOT NULL,
    pred INTEGER NOT NULL, correct INTEGER NOT NULL, pert_norm REAL NOT NULL,
    PRIMARY KEY (model, attack, eps, sample_id));
CREATE TABLE IF NOT EXISTS cells (
    model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, seconds REAL NOT NULL,
    n_attacked INTEGER NOT NULL, n_robust INTEGER NOT NULL, PRIMARY KEY (model, attack, eps));
"""


class Store:
    """Append-only writer of per-sample records (WAL mode, one commit per batch)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def reset(self) -> None:
        """Forget earlier records (a fresh run in an existing ``--out``)."""
        with self._db:
            for table in ("meta", "clean", "adv", "cells"):
                self._db.execute(f"DELETE FROM {table}")

    def put_meta(self, key: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def write_clean(
        self, model: str, ids: Sequence[int], labels: Sequence[int], preds: Sequence[int]
    ) -> None:
        rows = [(model, int(i), int(t), int(p), int(t == p)) for i, t, p in zip(ids, labels, preds)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO clean VALUES (?, ?, ?, ?, ?)", rows)

    def write_adv(
        self,
        model: str,
        attack: str,
        eps: float,
        ids: Sequence[int],
        labels: Sequence[int],
        preds: Sequence[int],
        norms: Sequence[float],
    ) -> None:
        rows = [
            (model, attack, float(eps), int(i), int(p), int(t == p), float(nm))
            for i, t, p, nm in zip(ids, labels, preds, norms)
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO adv VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def write_cell(
        self, model: str, attack: str, eps: float, seconds: float, n_attacked: int, n_robust: int
    ) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                (model, attack, float(eps), float(seconds), int(n_attacked), int(n_robust)),
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
