"""Prediction logging and label feedback for the served model.

Shipped inside every Bento next to service.py. A prediction costs the request
one append to an in-memory queue; a background thread of each worker turns
the queue into JSON Lines (size-bounded, rotated files, one writer per
process) and rows of the shared join store (prediction_store.py). A full disk
or an unwritable directory is counted in metrics and logged, and predictions
keep being served.

Log directory layout:

    model-<model>-<version>.json                  the schema of the logged records
    predictions-<start ns>-<pid>.active.jsonl     being written by process <pid> (which holds
                                                  a lock on it while it lives)
    predictions-<start ns>-<pid>.jsonl            rotated (closed) files
    feedback.db (+ -wal, -shm)                    the join store (SQLite, WAL mode)

Lines are {"kind": "prediction", "id", "owner", "ts", "model", "version", "features",
"prediction", "probabilities"} and {"kind": "label", "id", "owner", "by", "ts", "label",
"model", "version"}; `kfp-automl export-feedback` joins them into a table.

Owners: a prediction belongs to the caller whose feedback token its /predict request
carried (the service puts the name in CALLER_FIELD of each record); without one, to OPEN
when the server made its id (128 random bits: whoever holds the id may label it), or to
ANONYMOUS when the record sent its own id (then only `--feedback-auth none` labels it).

Disk: everything in the directory (log files, active ones too, and the store) is kept
within `max_total_bytes`. The store may use `store_share` of it; beyond that its oldest
predictions are pruned (counted as dropped, reason store_full). Then the oldest rotated
files are deleted. At start-up, and whenever the limit is enforced, the active files of
workers that died (no lock on them) are adopted: cut after their last whole line and
closed, so they count and rotate like any other.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.records import check_id
from kfp_automl.serving.prediction_store import (
    ANONYMOUS,
    OPEN,
    PredictionStore,
    store_bytes,
)
from kfp_automl.serving.quality import QualityMetrics, check_label, live_metrics

log = logging.getLogger("kfp_automl.prediction_log")
MODES = ("off", "sampled", "on")
ACTIVE_SUFFIX = ".active.jsonl"
WARN_EVERY_S = 60.0
STORE_RETRY_S = 5.0
MIB = 1024 * 1024
# the key under which the service hands a record's caller to the log (never a feature name)
CALLER_FIELD = "\x00caller"
VOLUME_MARGIN = 0.9  # the log's worst case must fit in this share of its volume


class RandomIds:
    """Prediction ids of 128 random bits (32 hex digits) from os.urandom.

    The bytes are drawn `batch` ids at a time, so an id costs a slice, not a system call;
    a forked child draws its own (os.register_at_fork), so two workers never share ids.
    """

    def __init__(self, batch: int = 256):
        self._batch, self._lock = batch, threading.Lock()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._hex, self._next = "", 0

    def __call__(self) -> str:
        with self._lock:
            if self._next >= len(self._hex):
                self._hex, self._next = os.urandom(16 * self._batch).hex(), 0
            start = self._next
            self._next += 32
        return self._hex[start : start + 32]


new_id = RandomIds()


@dataclass
class LogSettings:
    """How predictions are logged; the service fills it from AUTOML_* settings."""

    mode: str = "off"  # off | sampled | on
    directory: str = ""
    sample_rate: float = 0.1  # share of records logged with mode "sampled"
    exclude: tuple[str, ...] = ()  # feature columns never written to the log (PII)
    max_file_bytes: int = 64 * MIB
    max_total_bytes: int = 512 * MIB  # log files and the store together
    store_share: float = 0.5  # of max_total_bytes the join store may use
    volume_bytes: int = 0  # the size limit of the volume (an emptyDir's sizeLimit); 0: unknown
    workers: int = 1  # processes writing the directory (each has one active file)
    id_field: str | None = None  # the records' own id field (else every id is server-made)
    flush_interval_s: float = 0.25
    max_buffered: int = 100_000  # records waiting for the writer; more are dropped and counted
    label_ttl_s: float = 7 * 86400.0
    quality_window: int = 500
    quality_interval_s: float = 0.5
    max_feedback_items: int = 10_000
    expire_interval_s: float = 60.0
    # the join store: "" for SQLite in `directory` (one host); a postgresql:// URL for the
    # store every replica shares (postgres_store.py: then no log files, nothing on the pod's disk)
    store_url: str = ""
    replica: str = ""  # this server's name in the shared store (default: the host's name)
    store_max_rows: int = 10_000_000  # a model's predictions in the shared store, at most
    store_connections: int = 2  # per worker process
    store_timeout_s: float = 2.0  # waiting for a connection before a write counts as failed
    # a label whose prediction is not in the shared store yet (another replica's log thread
    # has it queued) is tried again for this long before it is answered unknown_id
    label_grace_s: float = 2.0
    quality_refresh_s: float = 5.0  # shared store: the fleet's window is read this often
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        return bool(self.store_url)

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"prediction logging must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"the log sample rate must be in (0, 1], got {self.sample_rate}")
        if self.quality_window < 1 or self.label_ttl_s <= 0:
            raise ValueError("the quality window and the label TTL must be positive")
        if not 0 < self.store_share < 1:
            raise ValueError(f"the store's share must be in (0, 1), got {self.store_share}")
        if self.store_url and not self.store_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "the prediction store must be a postgresql:// URL (or empty for SQLite in the "
                "log directory)"
            )
        if self.store_max_rows < self.quality_window:
            raise ValueError("the store's row limit must be at least the quality window")


def disk_warnings(settings: LogSettings) -> list[str]:
    """Why the log's disk limit may not hold on this machine: the worst case (the total plus
    one active file per worker) against the volume's size limit and the free space. (A shared
    store writes nothing to the pod's disk.)"""
    if settings.shared:
        return []
    need = settings.max_total_bytes + settings.workers * settings.max_file_bytes
    worst = (
        f"the prediction log may take {need / MIB:.0f} MiB (--log-max-total-mb "
        f"{settings.max_total_bytes / MIB:.0f} plus one {settings.max_file_bytes / MIB:.0f} MiB "
        f"file per worker, {settings.workers})"
    )
    out = []
    volume = settings.volume_bytes
    if volume and need > volume * VOLUME_MARGIN:
        fits = volume * VOLUME_MARGIN - settings.workers * settings.max_file_bytes
        out.append(
            f"{worst} but its volume holds {volume / MIB:.0f} MiB (AUTOML_LOG_VOLUME_MB): lower "
            f"--log-max-total-mb to at most {max(0.0, fits) / MIB:.0f}, or the pod is evicted "
            "when the volume fills"
        )
    directory = Path(settings.directory)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None:
        try:
            free = shutil.disk_usage(existing).free
            used = store_bytes(directory) + sum(
                p.stat().st_size for p in directory.glob("predictions-*.jsonl")
            )
        except OSError:
            return out
        if need > free + used:
            out.append(
                f"{worst} but the file system of {directory} has {free / MIB:.0f} MiB free: "
                "lower --log-max-total-mb or free space"
            )
    return out


class PredictionLog:
    """One worker's prediction log writer, feedback joiner and live-quality updater."""

    def __init__(
        self,
        settings: LogSettings,
        model: str,
        version: str,
        schema: Schema,
        metrics: QualityMetrics,
    ):
        settings.check()
        self.settings, self.model, self.version = settings, model, version
        self.task = schema.task
        self.classes = None if schema.classes is None else list(schema.classes)
        self.features = [n for n in schema.names if n not in set(settings.exclude)]
        self.metrics = metrics
        self.directory = Path(settings.directory)
        self._keep = frozenset(self.features)
        self._head = (
            f'{{"kind":"prediction","model":{json.dumps(model)},"version":{json.dumps(version)},'
            '"id":'
        )
        self._proba_keys = [str(c) for c in self.classes or []]
        self._proba_heads = [json.dumps(k) + ":" for k in self._proba_keys]
        self._predictions: dict[tuple[type, Any], str] = {}
        self._schema = schema
        self._queue: collections.deque = collections.deque()
        self._pending = 0
        self._lock = threading.RLock()  # file writes and store inserts
        self._wake, self._stop = threading.Event(), threading.Event()
        self._file: BinaryIO | None = None
        self._file_path: Path | None = None
        self._file_bytes = 0
        self._store: Any = None  # PredictionStore, or postgres_store.PostgresStore
        self._files = not settings.shared  # JSON Lines files and the disk limit
        self.replica = settings.replica or socket.gethostname()  # its name in a shared store
        # store rows not written yet (the store was unreachable): retried by the next flush
        self._unwritten: collections.deque[list[tuple]] = collections.deque()
        self._unwritten_n = 0
        self._refreshed_at = 0.0
        self._store_tried = 0.0
        self._warned: dict[str, float] = {}
        self._quality_dirty, self._quality_at = True, 0.0
        self._expired_at = time.monotonic()
        self._ok = {"log_file": True, "store": True}
        self._owners: dict[str, str] = {}
        self.metrics.healthy.set(1)
        for warning in disk_warnings(settings):
            log.warning("prediction log: %s", warning)
        self._open_store()
        if self._files:
            self._write_schema()
            with self._lock:
                self._enforce_total()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # ---- the request path -----------------------------------------------------------------

    def submit(self, ids: list[str], records: list[dict], answers: list[dict]) -> None:
        """Queue scored records for the log; O(1) unless sampling picks a subset."""
        if self.settings.mode == "sampled":
            rate = self.settings.sample_rate
            keep = [i for i in range(len(ids)) if random.random() < rate]
            if not keep:
                return
            ids = [ids[i] for i in keep]
            records = [records[i] for i in keep]
            answers = [answers[i] for i in keep]
        n = len(ids)
        if self._pending + n > self.settings.max_buffered:
            self.metrics.dropped["buffer_full"].inc(n)
            self._warn("buffer_full", f"log buffer full: {n} predictions not logged")
            return
        self._pending += n
        self._queue.append((time.time(), ids, records, answers))

    # ---- background work --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
                now = time.monotonic()
                if now - self._expired_at >= self.settings.expire_interval_s:
                    self._expired_at = now
                    self.expire()
                    if self._files:
                        with self._lock:
                            self._enforce_total()
                    else:
                        self._prune_shared()
                # a shared store: other replicas' labels move the fleet's window too
                stale = self.settings.shared and (
                    now - self._refreshed_at >= self.settings.quality_refresh_s
                )
                if (
                    self._quality_dirty or stale
                ) and now - self._quality_at >= self.settings.quality_interval_s:
                    self._quality_at = now
                    self.update_quality()
            except Exception:  # never let the writer thread die
                log.exception("prediction log: unexpected error in the writer thread")

    def flush(self) -> int:
        """Write everything queued so far to the log file and the store; returns the count.

        Lines are assembled from pre-encoded parts: JSON encoding is most of the
        writer's cost, and the writer shares the CPU with the model.
        """
        with self._lock:
            batches = []
            while self._queue:
                batches.append(self._queue.popleft())
            if not batches:
                if self._unwritten:  # what the store could not take before
                    self._write_rows([])
                return 0
            parts, rows = [], []
            dumps, head, keep = json.dumps, self._head, self._keep
            own_id, owners = self.settings.id_field, self._owners
            files, shared = self._files, self.settings.shared
            for ts, ids, records, answers in batches:
                ts_text = f',"ts":{ts!r},"features":'
                for pid, rec, ans in zip(ids, records, answers, strict=True):
                    owner = rec.get(CALLER_FIELD)
                    if owner is None:
                        owner = ANONYMOUS if own_id and rec.get(own_id) is not None else OPEN
                    owner_text = owners.get(owner)
                    if owner_text is None:
                        owner_text = owners[owner] = f',"owner":{dumps(owner)}'
                    features = rec if rec.keys() <= keep else {k: rec.get(k) for k in self.features}
                    pred_text = self._encode_prediction(ans["prediction"])
                    probabilities = ans.get("probabilities")
                    if probabilities:
                        values = [repr(float(probabilities[k])) for k in self._proba_keys]
                        proba_row = "[" + ",".join(values) + "]"
                        proba_obj = (
                            "{"
                            + ",".join(map("".join, zip(self._proba_heads, values, strict=True)))
                            + "}"
                        )
                    else:
                        proba_row, proba_obj = None, "null"
                    features_text = dumps(features)
                    if files:
                        parts.append(
                            f"{head}{dumps(pid)}{owner_text}{ts_text}{features_text}"
                            f',"prediction":{pred_text},"probabilities":{proba_obj}}}\n'
                        )
                    row = (owner, pid, self.model, self.version, ts, pred_text, proba_row)
                    rows.append((*row, features_text) if shared else row)
            self._pending = max(0, self._pending - len(rows))
            if files:
                if self._write_text("".join(parts)):
                    self.metrics.logged.inc(len(parts))
                else:
                    self.metrics.dropped["write_error"].inc(len(parts))
            self._write_rows(rows)
            if files:
                self._enforce_total()
            return len(rows)

    def _write_rows(self, rows: list[tuple]) -> None:
        """Add `rows` to the store after the rows it could not take before (oldest first). What
        it cannot take waits for the next flush, up to `max_buffered` rows; beyond that the
        oldest are dropped (counted, reason store_down)."""
        backlog = self._unwritten
        if rows:
            if backlog and len(backlog[-1]) < 5000:
                backlog[-1].extend(rows)
            else:
                backlog.append(list(rows))
            self._unwritten_n += len(rows)
        while backlog:
            if self._store_call("add", backlog[0]) is None:
                break  # unreachable or failing: counted in errors, tried again next flush
            batch = backlog.popleft()
            self._unwritten_n -= len(batch)
            if not self._files:  # the store is the log
                self.metrics.logged.inc(len(batch))
        dropped = 0
        while self._unwritten_n > self.settings.max_buffered:
            batch = backlog.popleft()
            self._unwritten_n -= len(batch)
            dropped += len(batch)
        if dropped:
            self.metrics.dropped["store_down"].inc(dropped)
            self._warn(
                "store_down",
                f"prediction log: the label store is unreachable and {self._unwritten_n} "
                f"predictions wait for it; {dropped} older ones were dropped",
            )
        self.metrics.backlog.set(self._unwritten_n)

    def _encode_prediction(self, value: Any) -> str:
        key = (type(value), value)  # True and 1 are equal keys but different JSON
        text = self._predictions.get(key)
        if text is None:
            text = json.dumps(value)
            if len(self._predictions) < 1000:  # class labels; regression values rarely repeat
                self._predictions[key] = text
        return text

    def expire(self) -> int:
        n = self._store_call(
            "expire", time.time(), self.settings.label_ttl_s, self.settings.quality_window
        )
        if n:
            self.metrics.expired.inc(n)
        return n or 0

    def update_quality(self) -> None:
        """Live quality over the newest labelled predictions of this version: the fleet's
        (every replica's, in a shared store) and this replica's own."""
        n = self.settings.quality_window
        window = self._store_call("window", self.version, n)
        if window is None:
            return
        own = None
        if self.settings.shared:
            mine = self._store_call("window", self.version, n, self.replica)
            if mine is not None:
                own = (live_metrics(self.task, self.classes, mine), len(mine))
        self._quality_dirty = False
        self._refreshed_at = time.monotonic()
        self.metrics.set_window(live_metrics(self.task, self.classes, window), len(window), own)

    def _prune_shared(self) -> None:
        """Keep the model's rows in the shared store within its row limit."""
        pruned = self._store_call("prune", self.settings.quality_window)
        if pruned:
            self.metrics.dropped["store_full"].inc(pruned)
            self._warn(
                "store_full",
                f"prediction log: the shared store holds over {self.settings.store_max_rows} "
                f"predictions of {self.model}: {pruned} oldest deleted before their TTL",
            )

    def close(self) -> None:
        """Stop the writer thread, flush what is queued, close the file and the store."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
        with self._lock:
            if self._unwritten_n:  # the store is still unreachable: these are lost
                self.metrics.dropped["store_down"].inc(self._unwritten_n)
                log.warning(
                    "prediction log: %d predictions were not written to the unreachable label "
                    "store before the server stopped",
                    self._unwritten_n,
                )
                self._unwritten.clear()
                self._unwritten_n = 0
            self._close_file()
            if self._store is not None:
                self._store.close()
                self._store = None

    # ---- feedback ---------------------------------------------------------------------------

    def feedback(self, items: list[Any], caller: str = ANONYMOUS) -> tuple[int, dict[str, Any]]:
        """Join `caller`'s labels to logged predictions: (HTTP status, per-item report).

        A label joins the caller's own prediction of its id, else the OPEN one (an id the
        server made); `caller` is ANONYMOUS when /feedback takes labels from anyone.
        """
        if self.settings.mode == "off":
            off = "prediction logging is off, so there is nothing to join labels to"
            return 409, {"error": _error(off, "logging_off")}
        if self._ok["store"] or not self.settings.shared:
            self.flush()  # this worker's queued predictions become joinable first
        if self._store is None:
            self._open_store()
            if self._store is None:
                unopened = f"the prediction store in {self.directory} cannot be opened"
                return 503, {"error": _error(unopened, "store")}
        results: list[dict[str, Any]] = []
        to_join: list[tuple[str, str, Any]] = []
        where: list[int] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                results.append(_result(i, None, "bad_id", 'expected {"id": ..., "label": ...}'))
                continue
            pid = item.get("id")
            problem: str | None = check_id(pid) if "id" in item else "the item has no 'id'"
            if problem:
                results.append(_result(i, _shown_id(pid), "bad_id", problem))
                continue
            if "label" not in item:
                results.append(_result(i, pid, "wrong_type", "the item has no 'label'"))
                continue
            problem = check_label(item["label"], self.task, self.classes)
            if problem:
                results.append(_result(i, pid, "wrong_type", problem))
                continue
            results.append(_result(i, str(pid), "pending"))
            to_join.append((caller, str(pid), item["label"]))
            where.append(i)
        now = time.time()
        if to_join:
            try:
                outcomes = self._join(to_join, now)
            except (sqlite3.Error, OSError) as exc:
                self._failed("store", exc)
                unwritten = f"the prediction store cannot be written: {exc}"
                return 503, {"error": _error(unwritten, "store")}
            self._recovered("store")
            label_lines = []
            for i, (_, pid, label), outcome in zip(where, to_join, outcomes, strict=True):
                results[i]["status"] = outcome.status
                if outcome.status == "unknown_id":
                    results[i]["problem"] = _UNKNOWN if caller == ANONYMOUS else _UNKNOWN_OF_CALLER
                elif outcome.status == "duplicate":
                    results[i]["problem"] = "already labelled; the first label is kept"
                else:
                    self.metrics.delay.observe(outcome.delay_s or 0.0)
                    label_lines.append(
                        {
                            "kind": "label",
                            "id": pid,
                            "owner": outcome.owner,
                            "by": caller,
                            "ts": now,
                            "label": label,
                            "model": self.model,
                            "version": self.version,
                        }
                    )
            if label_lines:
                if self._files:  # a shared store holds the label in the prediction's row
                    text = "".join(
                        json.dumps(line, separators=(",", ":")) + "\n" for line in label_lines
                    )
                    with self._lock:
                        self._write_text(text)
                self._quality_dirty = True
                self._wake.set()
        counts = collections.Counter(r["status"] for r in results)
        for status, n in counts.items():
            self.metrics.labels[status].inc(n)
        accepted = counts["matched"] + counts["duplicate"]
        status = 200 if accepted == len(results) else 207 if accepted else 422
        report: dict[str, Any] = {}
        if status == 422:  # refused: the error as every refusal has it, then the report
            first = results[0]
            problem = (
                f"none of the {len(results)} labels was joined; `results` says why for each "
                f"(item 0: {first['status']}: {first.get('problem', '')})"
            )
            report["error"] = _error(problem, "no_label_joined")
        return status, {
            **report,
            "matched": counts["matched"],
            "duplicate": counts["duplicate"],
            "unknown_id": counts["unknown_id"],
            "wrong_type": counts["wrong_type"],
            "bad_id": counts["bad_id"],
            "results": results,
        }

    def _join(self, items: list[tuple[str, str, Any]], now: float) -> list:
        """The store's outcome of each label. A shared store: labels of ids it does not hold
        are tried again for up to `label_grace_s` (another replica's log thread writes its
        predictions a flush interval after answering them)."""
        with self._lock:
            outcomes = self._store.label(items, now)
        if not self.settings.shared:
            return outcomes
        deadline = time.monotonic() + self.settings.label_grace_s
        while time.monotonic() < deadline:
            unknown = [i for i, o in enumerate(outcomes) if o.status == "unknown_id"]
            if not unknown:
                break
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            again = self._store.label([items[i] for i in unknown], now)
            for i, outcome in zip(unknown, again, strict=True):
                outcomes[i] = outcome
        return outcomes

    # ---- files and store --------------------------------------------------------------------

    def _open_store(self) -> None:
        self._store_tried = time.monotonic()
        if self.settings.shared:
            from kfp_automl.serving.postgres_store import PostgresStore

            # the pool connects in the background: the server starts with the database down
            self._store = PostgresStore(
                self.settings.store_url,
                self.model,
                self.replica,
                max_connections=self.settings.store_connections,
                max_rows=self.settings.store_max_rows,
                info=self._model_info(),
                timeout_s=self.settings.store_timeout_s,
            )
            return
        try:
            # the write-ahead log takes at most 1/64 of the limit (SQLite's 1000 pages at most)
            pages = min(1000, max(16, self.settings.max_total_bytes // 64 // 4096))
            self._store = PredictionStore(self.directory, wal_pages=pages)
            self._recovered("store")
        except (sqlite3.Error, OSError) as exc:
            self._store = None
            self._failed("store", exc)

    def _store_call(self, method: str, *args):
        with self._lock:
            if self._store is None:
                if time.monotonic() - self._store_tried < STORE_RETRY_S:
                    return None
                self._open_store()
                if self._store is None:
                    return None
            try:
                result = getattr(self._store, method)(*args)
            except (sqlite3.Error, OSError) as exc:
                self._failed("store", exc)
                return None
            self._recovered("store")
            return result

    def _model_info(self) -> dict[str, Any]:
        """What export-feedback needs to know of the logged model: its target and features."""
        return {
            "model": self.model,
            "version": self.version,
            "target": self._schema.target,
            "task": self.task,
            "classes": self.classes,
            "features": [f.to_dict() for f in self._schema.features],
            "excluded": list(self.settings.exclude),
        }

    def _write_schema(self) -> None:
        info = self._model_info()
        path = self.directory / f"model-{self.model}-{self.version}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            self._failed("log_file", exc)

    def _write_text(self, text: str) -> bool:
        data = text.encode()
        try:
            file = self._file if self._file is not None else self._open_file()
            file.write(data)
            file.flush()
            self._file_bytes += len(data)
            if self._file_bytes >= self.settings.max_file_bytes:
                self._close_file()
                self._enforce_total()
        except OSError as exc:
            self._failed("log_file", exc)
            self._close_file(quiet=True)
            return False
        self._recovered("log_file")
        return True

    def _open_file(self) -> BinaryIO:
        """A new active file, locked before it appears under its name (see _adopt_orphans)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"predictions-{time.time_ns()}-{os.getpid()}{ACTIVE_SUFFIX}"
        hidden = self.directory / f".{name}.new"
        file = open(hidden, "ab")  # noqa: SIM115 (kept open between flushes)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(hidden, self.directory / name)
        except OSError:
            file.close()
            hidden.unlink(missing_ok=True)
            raise
        self._file, self._file_path = file, self.directory / name
        self._file_bytes = 0
        return self._file

    def _close_file(self, quiet: bool = False) -> None:
        if self._file is None or self._file_path is None:
            return
        try:
            active = self._file_path
            # renamed while still open and locked: no other worker takes it for an orphan
            os.replace(active, active.with_name(active.name.replace(ACTIVE_SUFFIX, ".jsonl")))
        except OSError as exc:
            if not quiet:
                self._failed("log_file", exc)
        finally:
            try:
                self._file.close()
            except OSError as exc:
                if not quiet:
                    self._failed("log_file", exc)
            self._file, self._file_path = None, None

    def _adopt_orphans(self) -> int:
        """Close the active files of workers that died: no process holds their lock. Each is
        cut after its last whole line and renamed like a rotated file. Returns how many."""
        adopted = 0
        for path in sorted(self.directory.glob(f"predictions-*{ACTIVE_SUFFIX}")):
            if path == self._file_path:
                continue
            try:
                with open(path, "r+b") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its writer is alive
                    if not path.exists():
                        continue  # its writer closed it after we opened it
                    fh.truncate(_whole_lines(fh))
                    os.replace(path, path.with_name(path.name.replace(ACTIVE_SUFFIX, ".jsonl")))
                    adopted += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._failed("log_file", exc)
        if adopted:
            log.warning("prediction log: closed %d log files of workers that stopped", adopted)
        return adopted

    def _prune_store(self) -> None:
        """Keep the store's rows within its share of the total: the oldest predictions go."""
        cap = int(self.settings.max_total_bytes * self.settings.store_share)
        usage = self._store_call("usage")
        if usage is None or usage[1] <= cap:
            return
        pruned = self._store_call("prune", int(cap * 0.9), self.settings.quality_window)
        if pruned:
            self.metrics.dropped["store_full"].inc(pruned)
            self._warn(
                "store_full",
                f"prediction log: the label store is over {cap / MIB:.1f} MiB (its share of "
                f"--log-max-total-mb): {pruned} oldest predictions deleted before their TTL",
            )

    def _enforce_total(self) -> None:
        """Keep the directory within the limit: adopt dead workers' files, prune the store
        over its share, then delete the oldest closed log files while the total (every log
        file and the store's files) is over the limit."""
        try:
            self._adopt_orphans()
            self._prune_store()
            files = sorted(self.directory.glob("predictions-*.jsonl"))
            sizes = {}
            for p in files:
                try:
                    sizes[p] = p.stat().st_size
                except FileNotFoundError:
                    continue
            total = sum(sizes.values()) + store_bytes(self.directory)
            for path in files:
                if total <= self.settings.max_total_bytes:
                    break
                if path.name.endswith(ACTIVE_SUFFIX) or path not in sizes:
                    continue
                path.unlink(missing_ok=True)
                total -= sizes[path]
        except OSError as exc:
            self._failed("log_file", exc)
            return
        if total > self.settings.max_total_bytes:
            self._warn(
                "over_limit",
                f"prediction log: {self.directory} holds {total / MIB:.1f} MiB, over "
                f"--log-max-total-mb {self.settings.max_total_bytes / MIB:.1f}, in files that are "
                "still being written and the label store",
            )

    # ---- health -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This worker's view of the log for GET /status: "degraded" while a part cannot be
        written or rows wait for the store (predictions still flow meanwhile)."""
        failing = sorted(k for k, ok in self._ok.items() if not ok)
        return {
            "status": "degraded" if failing or self._unwritten_n else "ok",
            "mode": self.settings.mode,
            "store": "postgresql" if self.settings.shared else "sqlite",
            "replica": self.replica,
            "failing": failing,
            "backlog": self._unwritten_n,
            "queued": self._pending,
        }

    def _failed(self, kind: str, exc: BaseException) -> None:
        self.metrics.errors[kind].inc()
        self._ok[kind] = False
        self.metrics.healthy.set(0)
        self._warn(kind, f"prediction log: cannot write the {kind.replace('_', ' ')}: {exc}")

    def _recovered(self, kind: str) -> None:
        if not self._ok[kind]:
            self._ok[kind] = True
            log.warning("prediction log: the %s is writable again", kind.replace("_", " "))
            if all(self._ok.values()):
                self.metrics.healthy.set(1)

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[kind] = now
            log.warning(message)


_UNKNOWN = "no logged prediction has this id (or it expired)"
_UNKNOWN_OF_CALLER = (
    "no logged prediction of this caller has this id (or it expired); a prediction with the "
    "record's own id is the caller's only when /predict carried the caller's token too"
)


def _shown_id(pid: Any) -> Any:
    """A refused id as the report echoes it: a long one cut short, a non-id as None."""
    if isinstance(pid, str):
        return pid if len(pid) <= 128 else pid[:64] + "..."
    if isinstance(pid, int) and not isinstance(pid, bool) and pid.bit_length() <= 256:
        return pid
    return None


def _error(problem: str, reason: str) -> dict[str, Any]:
    return {"record": None, "field": None, "problem": problem, "reason": reason}


def _whole_lines(fh: BinaryIO, chunk: int = 1 << 16) -> int:
    """The length of a file up to and including its last newline (0 without one)."""
    end = fh.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        fh.seek(start)
        data = fh.read(pos - start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


def _result(index: int, pid: Any, status: str, problem: str = "") -> dict[str, Any]:
    out = {"index": index, "id": pid, "status": status}
    if problem:
        out["problem"] = problem
    return out
