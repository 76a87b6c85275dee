"""The join state of served predictions and their labels: one SQLite file in WAL mode.

Shipped inside every Bento next to service.py (standard library only). Every
worker process of a server opens the same file, so a label sent to any worker
finds a prediction made by any other, and the state survives a restart. Rows
live on disk, not in memory; unlabelled predictions older than the TTL are
deleted (and counted) by `expire`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILE = "feedback.db"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    ts REAL NOT NULL,
    prediction TEXT NOT NULL,
    probabilities TEXT,
    label TEXT,
    label_ts REAL,
    repeats INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS unlabelled_by_ts ON predictions (ts) WHERE label_ts IS NULL;
CREATE INDEX IF NOT EXISTS labelled_by_ts ON predictions (version, label_ts)
    WHERE label_ts IS NOT NULL;
"""


@dataclass(frozen=True)
class LabelOutcome:
    """What became of one label: matched (with its delay), duplicate or unknown_id."""

    status: str
    delay_s: float | None = None


class PredictionStore:
    """Predictions keyed by id, labels joined to them; safe across threads and processes."""

    def __init__(self, directory: str | Path):
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / DB_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable across process crashes
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, rows: Iterable[Sequence[Any]]) -> int:
        """Insert (id, model, version, ts, prediction, probabilities) rows; a reused id keeps
        its first prediction. Returns how many rows were new."""
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO predictions (id, model, version, ts, prediction, "
                    "probabilities) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def label(self, items: Sequence[tuple[str, Any]], now: float) -> list[LabelOutcome]:
        """Join (id, label) pairs in one transaction: the first label of an id wins, later
        ones only count as repeats. Committed before this returns."""
        outcomes = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for pid, label in items:
                    row = self._db.execute(
                        "SELECT ts, label_ts FROM predictions WHERE id = ?", (pid,)
                    ).fetchone()
                    if row is None:
                        outcomes.append(LabelOutcome("unknown_id"))
                    elif row[1] is not None:
                        self._db.execute(
                            "UPDATE predictions SET repeats = repeats + 1 WHERE id = ?", (pid,)
                        )
                        outcomes.append(LabelOutcome("duplicate"))
                    else:
                        self._db.execute(
                            "UPDATE predictions SET label = ?, label_ts = ? WHERE id = ?",
                            (json.dumps(label), now, pid),
                        )
                        outcomes.append(LabelOutcome("matched", max(0.0, now - row[0])))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcomes

    def expire(self, now: float, ttl_s: float, keep_labelled: int) -> int:
        """Delete unlabelled predictions older than `ttl_s` (returned: how many), and labelled
        ones older than that beyond the newest `keep_labelled` (the quality window)."""
        cutoff = now - ttl_s
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                expired = self._db.execute(
                    "DELETE FROM predictions WHERE label_ts IS NULL AND ts < ?", (cutoff,)
                ).rowcount
                self._db.execute(
                    "DELETE FROM predictions WHERE label_ts IS NOT NULL AND label_ts < ? AND id "
                    "NOT IN (SELECT id FROM predictions WHERE label_ts IS NOT NULL "
                    "ORDER BY label_ts DESC LIMIT ?)",
                    (cutoff, keep_labelled),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return expired

    def window(self, version: str, n: int) -> list[tuple[Any, list[float] | None, Any]]:
        """The newest `n` labelled predictions of `version`: (prediction, probabilities, label)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT prediction, probabilities, label FROM predictions "
                "WHERE version = ? AND label_ts IS NOT NULL ORDER BY label_ts DESC LIMIT ?",
                (version, n),
            ).fetchall()
        return [
            (json.loads(p), json.loads(pr) if pr is not None else None, json.loads(lab))
            for p, pr, lab in rows
        ]


def read_labels(directory: str | Path) -> dict[str, tuple[Any, float]]:
    """Every label in a log directory's store: id -> (label, label time). Empty without one."""
    path = Path(directory) / DB_FILE
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        rows = db.execute(
            "SELECT id, label, label_ts FROM predictions WHERE label_ts IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return {pid: (json.loads(label), ts) for pid, label, ts in rows}
