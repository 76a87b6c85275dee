"""The prediction and label store that every serving replica shares: PostgreSQL.

Shipped inside every Bento next to service.py; psycopg 3 and its connection pool are
imported only when a server is configured with a store URL (AUTOML_LOG_STORE). It answers
as prediction_store.PredictionStore does (add, label, expire, window), for every pod of
the model at once:

- A prediction is one row keyed by (model, id, owner), written in batches by each worker's
  log thread; its features are in the row too, so `export-feedback --store` builds the
  training table from the database alone (no pod's disk is needed).
- A label joins whichever replica it reaches: the join is one statement per label that locks
  the prediction's row, so the first label of an id wins across every pod, atomically, and
  later ones count as repeats.
- Retention is the store's: unlabelled predictions older than the TTL go, and a model's rows
  stay under `max_rows`; one replica at a time does it (an advisory lock per model), in
  batches that each commit, so the pods never all scan the table at once.
- The schema is versioned in MIGRATIONS below and migrated at first connection, under an
  advisory lock, so replicas starting together apply each migration once.

Every failure to reach or use the database is raised as StoreUnavailable (an OSError), as
the SQLite store's disk errors are, so the log keeps serving and counts what it could not
write.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from kfp_automl.serving.prediction_store import OPEN, LabelOutcome

log = logging.getLogger("kfp_automl.prediction_log")

TABLE = "automl_predictions"
# pg_advisory_lock(CLASS, key): CLASS keeps these locks apart from any other application's
LOCK_CLASS = 0x4B46_5041  # "KFPA"
MIGRATION_LOCK = 0
DELETE_BATCH = 10_000
POOL_TIMEOUT_S = 2.0  # waiting for a connection; then the call fails (counted, retried later)
CONNECT_TIMEOUT_S = 3

# (version, what it does, SQL). Append only: a released migration never changes.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "predictions keyed by (model, id, owner) with their features and labels; model schemas",
        f"""
        CREATE TABLE {TABLE} (
            model text NOT NULL,
            id text NOT NULL,
            owner text NOT NULL,
            version text NOT NULL,
            replica text NOT NULL,
            ts double precision NOT NULL,
            prediction text NOT NULL,
            probabilities text,
            features text,
            label text,
            label_ts double precision,
            labelled_by text,
            repeats integer NOT NULL DEFAULT 0,
            PRIMARY KEY (model, id, owner)
        );
        -- the TTL and the size limit delete the oldest unlabelled predictions first
        CREATE INDEX {TABLE}_unlabelled ON {TABLE} (model, ts) WHERE label_ts IS NULL;
        -- the live quality window of a version (the fleet's) and of one replica
        CREATE INDEX {TABLE}_labelled ON {TABLE} (model, version, label_ts)
            WHERE label_ts IS NOT NULL;
        CREATE INDEX {TABLE}_replica ON {TABLE} (model, version, replica, label_ts)
            WHERE label_ts IS NOT NULL;
        -- retention of labelled rows beyond the window, and export by label time
        CREATE INDEX {TABLE}_labelled_ts ON {TABLE} (model, label_ts)
            WHERE label_ts IS NOT NULL;
        CREATE TABLE automl_models (
            model text NOT NULL,
            version text NOT NULL,
            info text NOT NULL,
            registered_at double precision NOT NULL,
            PRIMARY KEY (model, version)
        );
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_INSERT = f"""
INSERT INTO {TABLE} (owner, id, model, version, ts, prediction, probabilities, features,
    replica)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[],
    %s::text[], %s::text[], %s::text[], %s::text[])
ON CONFLICT DO NOTHING
"""
# One label: lock the caller's prediction of this id, else the OPEN one; set the label if it
# has none (the first label wins: a concurrent one waits for the lock and then sees it set),
# else count a repeat. `t.label_ts` is the row as locked: NULL when this label is the first.
_LABEL = f"""
WITH t AS (
    SELECT owner, ts, label_ts FROM {TABLE}
    WHERE model = %(model)s AND id = %(id)s AND owner IN (%(caller)s, '{OPEN}')
    ORDER BY owner = '{OPEN}' LIMIT 1
    FOR UPDATE
)
UPDATE {TABLE} AS p SET
    label = CASE WHEN p.label_ts IS NULL THEN %(label)s ELSE p.label END,
    labelled_by = CASE WHEN p.label_ts IS NULL THEN %(caller)s ELSE p.labelled_by END,
    repeats = p.repeats + CASE WHEN p.label_ts IS NULL THEN 0 ELSE 1 END,
    label_ts = COALESCE(p.label_ts, %(now)s)
FROM t
WHERE p.model = %(model)s AND p.id = %(id)s AND p.owner = t.owner
RETURNING p.owner, t.ts, t.label_ts IS NULL
"""


class StoreUnavailable(OSError):
    """The database could not be reached or used (the message says why, without secrets)."""


def redact(url: str) -> str:
    """A connection URL as logs and errors show it: without its password."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def _lock_key(model: str) -> int:
    return zlib.crc32(model.encode()) & 0x7FFF_FFFF


class PostgresStore:
    """One worker's view of the shared store of one model: a small connection pool."""

    def __init__(
        self,
        url: str,
        model: str,
        replica: str,
        *,
        max_connections: int = 2,
        max_rows: int = 10_000_000,
        info: dict[str, Any] | None = None,
        timeout_s: float = POOL_TIMEOUT_S,
    ):
        import psycopg
        from psycopg_pool import ConnectionPool

        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self.url, self.model, self.replica, self.max_rows = url, model, replica, max_rows
        self._info = info
        self._ready = False
        self._ready_lock = threading.Lock()
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, max_connections),
            open=False,
            timeout=timeout_s,
            check=ConnectionPool.check_connection,
            # keep trying while the database is away (the default gives up after 5 minutes)
            reconnect_timeout=365 * 86400.0,
            num_workers=1,
            name=f"automl-{model}",
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "application_name": f"kfp-automl {model}"[:63],
            },
        )
        # the pool's own warnings repeat every attempt; the log counts failures and warns once a minute
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self.pool.open(wait=False)  # the server starts whether or not the database is up

    # ---- connections and schema ---------------------------------------------------------

    def _connection(self):
        return self.pool.connection()

    def _call(self, work, *args):
        """`work(conn, *args)` on a pooled connection in one transaction; database failures
        become StoreUnavailable."""
        try:
            self._ensure_ready()
            with self._connection() as conn:
                return work(conn, *args)
        except self._errors as exc:
            raise StoreUnavailable(
                f"the prediction store at {redact(self.url)}: {_first_line(exc)}"
            ) from None

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self._connection() as conn:
                migrate(conn)
                if self._info is not None:
                    conn.execute(
                        "INSERT INTO automl_models (model, version, info, registered_at) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (model, version) DO UPDATE "
                        "SET info = EXCLUDED.info",
                        (self.model, self._info["version"], json.dumps(self._info), time.time()),
                    )
            self._ready = True

    def check(self) -> None:
        """Connect and migrate now (raises StoreUnavailable when that fails)."""
        self._call(lambda conn: conn.execute("SELECT 1"))

    def close(self) -> None:
        self.pool.close(timeout=5)

    # ---- the store's interface ----------------------------------------------------------

    def add(self, rows: Iterable[Sequence[Any]]) -> int:
        """Insert (owner, id, model, version, ts, prediction, probabilities, features) rows;
        a reused (owner, id) keeps its first prediction. Returns how many rows were new."""
        rows = list(rows)
        if not rows:
            return 0
        columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)]
        columns.append([self.replica] * len(rows))

        def work(conn) -> int:
            return conn.execute(_INSERT, columns).rowcount

        return self._call(work)

    def label(self, items: Sequence[tuple[str, str, Any]], now: float) -> list[LabelOutcome]:
        """Join (caller, id, label) triples in one transaction, committed before this
        returns; the first label of a prediction wins across every replica."""
        # rows are locked in id order, so two requests labelling the same ids cannot deadlock
        order = sorted(range(len(items)), key=lambda i: items[i][1])
        params = [
            {
                "model": self.model,
                "caller": items[i][0],
                "id": items[i][1],
                "label": json.dumps(items[i][2]),
                "now": now,
            }
            for i in order
        ]

        def work(conn) -> list[LabelOutcome]:
            out: list[LabelOutcome | None] = [None] * len(items)
            with conn.cursor() as cur:
                cur.executemany(_LABEL, params, returning=True)
                for i in order:
                    row = cur.fetchone()
                    if row is None:
                        out[i] = LabelOutcome("unknown_id")
                    elif row[2]:
                        out[i] = LabelOutcome("matched", max(0.0, now - row[1]), row[0])
                    else:
                        out[i] = LabelOutcome("duplicate", owner=row[0])
                    cur.nextset()
            return [o if o is not None else LabelOutcome("unknown_id") for o in out]

        return self._call(work)

    def window(
        self, version: str, n: int, replica: str | None = None
    ) -> list[tuple[Any, list[float] | None, Any]]:
        """The newest `n` labelled predictions of `version` across the fleet (or of one
        replica): (prediction, probabilities, label)."""
        query = (
            f"SELECT prediction, probabilities, label FROM {TABLE} WHERE model = %s AND "
            "version = %s AND label_ts IS NOT NULL"
        )
        args: list[Any] = [self.model, version]
        if replica is not None:
            query += " AND replica = %s"
            args.append(replica)
        query += " ORDER BY label_ts DESC LIMIT %s"
        args.append(n)

        def work(conn):
            return conn.execute(query, args).fetchall()

        return [
            (json.loads(p), json.loads(pr) if pr is not None else None, json.loads(lab))
            for p, pr, lab in self._call(work)
        ]

    def expire(self, now: float, ttl_s: float, keep_labelled: int) -> int:
        """Retention, by one replica at a time: delete unlabelled predictions older than
        `ttl_s` (returned: how many), labelled ones older than that beyond the newest
        `keep_labelled`. (The size limit is `prune`.)"""
        cutoff = now - ttl_s
        unlabelled = (
            f"DELETE FROM {TABLE} WHERE ctid IN (SELECT ctid FROM {TABLE} WHERE model = %s "
            f"AND label_ts IS NULL AND ts < %s LIMIT {DELETE_BATCH})"
        )

        def work(conn) -> int:
            expired = _batched(conn, unlabelled, (self.model, cutoff))
            _delete_labelled(conn, self.model, keep_labelled, before=cutoff)
            return expired

        return self._maintenance(work)

    def prune(self, keep_labelled: int) -> int:
        """Keep the model's rows within `max_rows`: the oldest unlabelled predictions go
        first, then labelled ones beyond the newest `keep_labelled`. Returns how many."""

        def work(conn) -> int:
            rows = conn.execute(
                f"SELECT count(*) FROM {TABLE} WHERE model = %s", (self.model,)
            ).fetchone()[0]
            excess = rows - self.max_rows
            if excess <= 0:
                return 0
            # to 95% of the limit, so the next batch of inserts does not prune again
            excess += self.max_rows // 20
            gone = 0
            while gone < excess:
                n = min(DELETE_BATCH, excess - gone)
                deleted = conn.execute(
                    f"DELETE FROM {TABLE} WHERE ctid IN (SELECT ctid FROM {TABLE} WHERE "
                    "model = %s AND label_ts IS NULL ORDER BY ts LIMIT %s)",
                    (self.model, n),
                ).rowcount
                conn.commit()
                if not deleted:
                    break
                gone += deleted
            if gone < excess:
                gone += _delete_labelled(conn, self.model, keep_labelled, limit=excess - gone)
            return gone

        return self._maintenance(work)

    def _maintenance(self, work) -> int:
        """`work` under the model's advisory lock, or 0 when another replica holds it."""

        def locked(conn) -> int:
            key = _lock_key(self.model)
            if not conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, key)
            ).fetchone()[0]:
                conn.commit()
                return 0
            try:
                conn.commit()
                return work(conn)
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, key))
                conn.commit()

        return self._call(locked)


def migrate(conn) -> int:
    """Bring the store's schema to SCHEMA_VERSION (each migration once, whichever replica
    gets there first); returns the version it was at. Commits."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, MIGRATION_LOCK))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS automl_schema_migrations (version integer PRIMARY KEY, "
        "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    current = conn.execute(
        "SELECT coalesce(max(version), 0) FROM automl_schema_migrations"
    ).fetchone()[0]
    if current > SCHEMA_VERSION:
        log.warning(
            "prediction store: its schema is version %d, newer than this server's %d; "
            "going on (migrations only add)",
            current,
            SCHEMA_VERSION,
        )
    for version, description, sql in MIGRATIONS:
        if version > current:
            conn.execute(sql)
            conn.execute(
                "INSERT INTO automl_schema_migrations (version, description) VALUES (%s, %s)",
                (version, description),
            )
            log.info("prediction store: applied migration %d (%s)", version, description)
    conn.commit()
    return current


def _batched(conn, statement: str, args: Sequence[Any]) -> int:
    """Run a DELETE of at most DELETE_BATCH rows until it deletes fewer; each batch commits."""
    total = 0
    while True:
        n = conn.execute(statement, args).rowcount
        conn.commit()
        total += n
        if n < DELETE_BATCH:
            return total


def _delete_labelled(
    conn, model: str, keep: int, before: float | None = None, limit: int | None = None
) -> int:
    """Delete labelled predictions beyond the newest `keep` (older than `before`, at most
    `limit`), oldest first."""
    newest_kept = conn.execute(
        f"SELECT label_ts FROM {TABLE} WHERE model = %s AND label_ts IS NOT NULL "
        "ORDER BY label_ts DESC OFFSET %s LIMIT 1",
        (model, max(0, keep - 1)),
    ).fetchone()
    if newest_kept is None:
        return 0
    bound = newest_kept[0] if before is None else min(newest_kept[0], before)
    total = 0
    while limit is None or total < limit:
        n = DELETE_BATCH if limit is None else min(DELETE_BATCH, limit - total)
        deleted = conn.execute(
            f"DELETE FROM {TABLE} WHERE ctid IN (SELECT ctid FROM {TABLE} WHERE model = %s "
            "AND label_ts IS NOT NULL AND label_ts < %s ORDER BY label_ts LIMIT %s)",
            (model, bound, n),
        ).rowcount
        conn.commit()
        total += deleted
        if deleted < n:
            break
    return total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
