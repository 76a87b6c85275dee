"""Prediction logging and label feedback for the served model.

Shipped inside every Bento next to service.py. A prediction costs the request
one append to an in-memory queue; a background thread of each worker turns
the queue into JSON Lines (size-bounded, rotated files, one writer per
process) and rows of the shared join store (prediction_store.py). A full disk
or an unwritable directory is counted in metrics and logged, and predictions
keep being served.

Log directory layout:

    model-<model>-<version>.json                  the schema of the logged records
    predictions-<start ns>-<pid>.active.jsonl     being written by process <pid>
    predictions-<start ns>-<pid>.jsonl            rotated (closed) files
    feedback.db (+ -wal, -shm)                    the join store (SQLite, WAL mode)

Lines are {"kind": "prediction", "id", "ts", "model", "version", "features",
"prediction", "probabilities"} and {"kind": "label", "id", "ts", "label",
"model", "version"}; `kfp-automl export-feedback` joins them into a table.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.records import check_id
from kfp_automl.serving.prediction_store import PredictionStore
from kfp_automl.serving.quality import QualityMetrics, check_label, live_metrics

log = logging.getLogger("kfp_automl.prediction_log")
MODES = ("off", "sampled", "on")
ACTIVE_SUFFIX = ".active.jsonl"
WARN_EVERY_S = 60.0
STORE_RETRY_S = 5.0


@dataclass
class LogSettings:
    """How predictions are logged; the service fills it from AUTOML_* settings."""

    mode: str = "off"  # off | sampled | on
    directory: str = ""
    sample_rate: float = 0.1  # share of records logged with mode "sampled"
    exclude: tuple[str, ...] = ()  # feature columns never written to the log (PII)
    max_file_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    flush_interval_s: float = 0.25
    max_buffered: int = 100_000  # records waiting for the writer; more are dropped and counted
    label_ttl_s: float = 7 * 86400.0
    quality_window: int = 500
    quality_interval_s: float = 0.5
    max_feedback_items: int = 10_000
    expire_interval_s: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"prediction logging must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"the log sample rate must be in (0, 1], got {self.sample_rate}")
        if self.quality_window < 1 or self.label_ttl_s <= 0:
            raise ValueError("the quality window and the label TTL must be positive")


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
        self._store: PredictionStore | None = None
        self._store_tried = 0.0
        self._warned: dict[str, float] = {}
        self._quality_dirty, self._quality_at = True, 0.0
        self._expired_at = time.monotonic()
        self._ok = {"log_file": True, "store": True}
        self.metrics.healthy.set(1)
        self._open_store()
        self._write_schema()
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
                if (
                    self._quality_dirty
                    and now - self._quality_at >= self.settings.quality_interval_s
                ):
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
                return 0
            parts, rows = [], []
            dumps, head, keep = json.dumps, self._head, self._keep
            for ts, ids, records, answers in batches:
                ts_text = f',"ts":{ts!r},"features":'
                for pid, rec, ans in zip(ids, records, answers, strict=True):
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
                    parts.append(
                        f"{head}{dumps(pid)}{ts_text}{dumps(features)}"
                        f',"prediction":{pred_text},"probabilities":{proba_obj}}}\n'
                    )
                    rows.append((pid, self.model, self.version, ts, pred_text, proba_row))
            self._pending = max(0, self._pending - len(parts))
            if self._write_text("".join(parts)):
                self.metrics.logged.inc(len(parts))
            else:
                self.metrics.dropped["write_error"].inc(len(parts))
            self._store_call("add", rows)
            return len(parts)

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
        window = self._store_call("window", self.version, self.settings.quality_window)
        if window is None:
            return
        self._quality_dirty = False
        self.metrics.set_window(live_metrics(self.task, self.classes, window), len(window))

    def close(self) -> None:
        """Stop the writer thread, flush what is queued, close the file and the store."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
        with self._lock:
            self._close_file()
            if self._store is not None:
                self._store.close()
                self._store = None

    # ---- feedback ---------------------------------------------------------------------------

    def feedback(self, items: list[Any]) -> tuple[int, dict[str, Any]]:
        """Join labels to logged predictions: (HTTP status, per-item report)."""
        if self.settings.mode == "off":
            off = "prediction logging is off, so there is nothing to join labels to"
            return 409, {"error": {"field": None, "problem": off, "reason": "logging_off"}}
        self.flush()  # this worker's queued predictions become joinable first
        if self._store is None:
            self._open_store()
            if self._store is None:
                unopened = f"the prediction store in {self.directory} cannot be opened"
                return 503, {"error": {"field": None, "problem": unopened, "reason": "store"}}
        results: list[dict[str, Any]] = []
        to_join: list[tuple[str, Any]] = []
        where: list[int] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                results.append(_result(i, None, "bad_id", 'expected {"id": ..., "label": ...}'))
                continue
            pid = item.get("id")
            problem: str | None = check_id(pid) if "id" in item else "the item has no 'id'"
            if problem:
                results.append(_result(i, pid, "bad_id", problem))
                continue
            if "label" not in item:
                results.append(_result(i, pid, "wrong_type", "the item has no 'label'"))
                continue
            problem = check_label(item["label"], self.task, self.classes)
            if problem:
                results.append(_result(i, pid, "wrong_type", problem))
                continue
            results.append(_result(i, str(pid), "pending"))
            to_join.append((str(pid), item["label"]))
            where.append(i)
        now = time.time()
        if to_join:
            try:
                with self._lock:
                    outcomes = self._store.label(to_join, now)
            except (sqlite3.Error, OSError) as exc:
                self._failed("store", exc)
                unwritten = f"the prediction store cannot be written: {exc}"
                return 503, {"error": {"field": None, "problem": unwritten, "reason": "store"}}
            label_lines = []
            for i, (pid, label), outcome in zip(where, to_join, outcomes, strict=True):
                results[i]["status"] = outcome.status
                if outcome.status == "unknown_id":
                    results[i]["problem"] = "no logged prediction has this id (or it expired)"
                elif outcome.status == "duplicate":
                    results[i]["problem"] = "already labelled; the first label is kept"
                else:
                    self.metrics.delay.observe(outcome.delay_s or 0.0)
                    label_lines.append(
                        {
                            "kind": "label",
                            "id": pid,
                            "ts": now,
                            "label": label,
                            "model": self.model,
                            "version": self.version,
                        }
                    )
            if label_lines:
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
        return status, {
            "matched": counts["matched"],
            "duplicate": counts["duplicate"],
            "unknown_id": counts["unknown_id"],
            "wrong_type": counts["wrong_type"],
            "bad_id": counts["bad_id"],
            "results": results,
        }

    # ---- files and store --------------------------------------------------------------------

    def _open_store(self) -> None:
        self._store_tried = time.monotonic()
        try:
            self._store = PredictionStore(self.directory)
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

    def _write_schema(self) -> None:
        info = {
            "model": self.model,
            "version": self.version,
            "target": self._schema.target,
            "task": self.task,
            "classes": self.classes,
            "features": [f.to_dict() for f in self._schema.features],
            "excluded": list(self.settings.exclude),
        }
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
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"predictions-{time.time_ns()}-{os.getpid()}{ACTIVE_SUFFIX}"
        self._file_path = self.directory / name
        self._file = open(self._file_path, "ab")  # noqa: SIM115 (kept open between flushes)
        self._file_bytes = 0
        return self._file

    def _close_file(self, quiet: bool = False) -> None:
        if self._file is None or self._file_path is None:
            return
        try:
            self._file.close()
            active = self._file_path
            os.replace(active, active.with_name(active.name.replace(ACTIVE_SUFFIX, ".jsonl")))
        except OSError as exc:
            if not quiet:
                self._failed("log_file", exc)
        finally:
            self._file, self._file_path = None, None

    def _enforce_total(self) -> None:
        """Delete the oldest closed log files while the directory holds more than the limit."""
        files = sorted(self.directory.glob("predictions-*.jsonl"))
        sizes = {p: p.stat().st_size for p in files if p.exists()}
        total = sum(sizes.values())
        for path in files:
            if total <= self.settings.max_total_bytes:
                break
            if path.name.endswith(ACTIVE_SUFFIX):
                continue
            path.unlink(missing_ok=True)
            total -= sizes.get(path, 0)

    # ---- health -----------------------------------------------------------------------------

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


def _result(index: int, pid: Any, status: str, problem: str = "") -> dict[str, Any]:
    out = {"index": index, "id": pid, "status": status}
    if problem:
        out["problem"] = problem
    return out
