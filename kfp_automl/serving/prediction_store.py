"""The join state of served predictions and their labels: one SQLite file in WAL mode.

Shipped inside every Bento next to service.py (standard library only). Every
worker process of a server opens the same file, so a label sent to any worker
finds a prediction made by any other, and the state survives a restart. Rows
live on disk, not in memory; unlabelled predictions older than the TTL are
deleted (and counted) by `expire`, and `prune` keeps the rows within a size.

A prediction belongs to an owner (see prediction_log.py): the caller whose token its
/predict request carried, ANONYMOUS for a request without one that sent its own id, or
OPEN for one whose id the server made (128 random bits). Rows are keyed by (owner, id), so
two callers' ids never meet, and a label of caller C joins (C, id), else (OPEN, id).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILE = "feedback.db"
STORE_FILES = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm")
BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 2  # 2: rows keyed by (owner, id); 1 (user_version 0): keyed by id alone
WAL_PAGES = 1000  # a checkpoint runs when the write-ahead log holds this many pages (SQLite's)
ANONYMOUS = ""  # the owner of a prediction whose request had no caller token but its own id
OPEN = "*"  # the owner of a prediction whose id the server made: labelled by whoever holds it

_TABLE = """
CREATE TABLE IF NOT EXISTS predictions (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    ts REAL NOT NULL,
    prediction TEXT NOT NULL,
    probabilities TEXT,
    label TEXT,
    label_ts REAL,
    labelled_by TEXT,
    repeats INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS unlabelled_by_ts ON predictions (ts) WHERE label_ts IS NULL;
CREATE INDEX IF NOT EXISTS labelled_by_ts ON predictions (version, label_ts)
    WHERE label_ts IS NOT NULL;
"""
# a store of schema 1 (rows keyed by id alone): its rows become ANONYMOUS ones
_MIGRATE_1 = f"""
DROP INDEX IF EXISTS unlabelled_by_ts;
DROP INDEX IF EXISTS labelled_by_ts;
ALTER TABLE predictions RENAME TO predictions_1;
{_TABLE}
INSERT INTO predictions (owner, id, model, version, ts, prediction, probabilities, label,
    label_ts, repeats)
SELECT '{ANONYMOUS}', id, model, version, ts, prediction, probabilities, label, label_ts, repeats
FROM predictions_1;
DROP TABLE predictions_1;
"""


@dataclass(frozen=True)
class LabelOutcome:
    """What became of one label: matched (with its delay and the prediction's owner),
    duplicate or unknown_id."""

    status: str
    delay_s: float | None = None
    owner: str | None = None


def store_bytes(directory: str | Path) -> int:
    """Bytes on disk of the store files in `directory` (the database, its WAL and index)."""
    total = 0
    for name in STORE_FILES:
        with contextlib.suppress(FileNotFoundError):
            total += (Path(directory) / name).stat().st_size
    return total


class PredictionStore:
    """Predictions keyed by (owner, id), labels joined to them; safe across threads and
    processes."""

    def __init__(self, directory: str | Path, wal_pages: int = WAL_PAGES):
        """`wal_pages`: the write-ahead log's size (pages of 4 kB) before a checkpoint copies
        it into the database and it is cut back to that size."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.directory = path
        self.path = path / DB_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # before the first table: a new store gives deleted pages back to the file system
        self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable across process crashes
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._db.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        self._db.execute(f"PRAGMA journal_size_limit = {wal_pages * page_size}")
        with self._lock:
            self._transaction(self._create)

    def _create(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(predictions)")]
        if columns and "owner" not in columns:
            for statement in _MIGRATE_1.split(";"):
                if statement.strip():
                    self._db.execute(statement)
        else:
            self._db.execute(_TABLE)
        for statement in _INDEXES.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _transaction(self, work, *args):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(*args)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, rows: Iterable[Sequence[Any]]) -> int:
        """Insert (owner, id, model, version, ts, prediction, probabilities) rows; a reused
        (owner, id) keeps its first prediction. Returns how many rows were new."""
        with self._lock:
            before = self._db.total_changes
            self._transaction(
                self._db.executemany,
                "INSERT OR IGNORE INTO predictions (owner, id, model, version, ts, prediction, "
                "probabilities) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def label(self, items: Sequence[tuple[str, str, Any]], now: float) -> list[LabelOutcome]:
        """Join (caller, id, label) triples in one transaction: a label joins the caller's own
        prediction of that id, else the OPEN one; the first label of a prediction wins, later
        ones only count as repeats. Committed before this returns."""
        with self._lock:
            return self._transaction(self._label, items, now)

    def _label(self, items: Sequence[tuple[str, str, Any]], now: float) -> list[LabelOutcome]:
        outcomes = []
        for caller, pid, label in items:
            row = self._db.execute(
                "SELECT owner, ts, label_ts FROM predictions WHERE id = ? AND owner IN (?, ?) "
                "ORDER BY owner = ? LIMIT 1",
                (pid, caller, OPEN, OPEN),
            ).fetchone()
            if row is None:
                outcomes.append(LabelOutcome("unknown_id"))
            elif row[2] is not None:
                self._db.execute(
                    "UPDATE predictions SET repeats = repeats + 1 WHERE owner = ? AND id = ?",
                    (row[0], pid),
                )
                outcomes.append(LabelOutcome("duplicate", owner=row[0]))
            else:
                self._db.execute(
                    "UPDATE predictions SET label = ?, label_ts = ?, labelled_by = ? "
                    "WHERE owner = ? AND id = ?",
                    (json.dumps(label), now, caller, row[0], pid),
                )
                outcomes.append(LabelOutcome("matched", max(0.0, now - row[1]), row[0]))
        return outcomes

    def expire(self, now: float, ttl_s: float, keep_labelled: int) -> int:
        """Delete unlabelled predictions older than `ttl_s` (returned: how many), and labelled
        ones older than that beyond the newest `keep_labelled` (the quality window)."""
        cutoff = now - ttl_s

        def work() -> int:
            expired = self._db.execute(
                "DELETE FROM predictions WHERE label_ts IS NULL AND ts < ?", (cutoff,)
            ).rowcount
            self._db.execute(
                "DELETE FROM predictions WHERE label_ts IS NOT NULL AND label_ts < ? AND rowid "
                "NOT IN (SELECT rowid FROM predictions WHERE label_ts IS NOT NULL "
                "ORDER BY label_ts DESC LIMIT ?)",
                (cutoff, keep_labelled),
            )
            return expired

        with self._lock:
            expired = self._transaction(work)
        if expired:
            self._give_back()
        return expired

    def usage(self) -> tuple[int, int]:
        """(bytes of the store's files on disk, bytes its rows use: pages minus free pages)."""
        with self._lock:
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return store_bytes(self.directory), (pages - free) * page_size

    def prune(self, target_bytes: int, keep_labelled: int) -> int:
        """Delete the oldest predictions until the rows use at most `target_bytes`: unlabelled
        ones first, then labelled ones beyond the newest `keep_labelled`. Returns how many."""
        deleted = 0
        for _ in range(20):
            _, used = self.usage()
            if used <= target_bytes:
                break
            with self._lock:
                rows = self._db.execute("SELECT count(*) FROM predictions").fetchone()[0]
                n = max(64, math.ceil(rows * (used - target_bytes) / used * 1.05))
                gone = self._transaction(self._prune, n, keep_labelled)
            if not gone:
                break
            deleted += gone
        if deleted:
            self._give_back()
        return deleted

    def _prune(self, n: int, keep_labelled: int) -> int:
        gone = self._db.execute(
            "DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
            "WHERE label_ts IS NULL ORDER BY ts LIMIT ?)",
            (n,),
        ).rowcount
        if gone:
            return gone
        return self._db.execute(
            "DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
            "WHERE label_ts IS NOT NULL ORDER BY label_ts LIMIT min(?, max(0, (SELECT count(*) "
            "FROM predictions WHERE label_ts IS NOT NULL) - ?)))",
            (n, keep_labelled),
        ).rowcount

    def _give_back(self) -> None:
        """Free pages back to the file system (a store made before auto_vacuum keeps them for
        new rows)."""
        with self._lock:
            self._db.execute("PRAGMA incremental_vacuum")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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


def read_labels(directory: str | Path) -> dict[tuple[str, str], tuple[Any, float]]:
    """Every label in a log directory's store: (owner, id) -> (label, label time). Empty
    without a store; a store of schema 1 reads as ANONYMOUS rows."""
    path = Path(directory) / DB_FILE
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        columns = [r[1] for r in db.execute("PRAGMA table_info(predictions)")]
        owner = "owner" if "owner" in columns else f"'{ANONYMOUS}'"
        rows = db.execute(
            f"SELECT {owner}, id, label, label_ts FROM predictions WHERE label_ts IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return {(o, pid): (json.loads(label), ts) for o, pid, label, ts in rows}
