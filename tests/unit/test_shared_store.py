"""The prediction and label store every replica shares, against a real PostgreSQL server
(tests/support/postgres.py), in process: two PredictionLogs with their own directories are
two replicas. (Two real `bentoml serve` replicas: tests/adversarial/test_shared_store_servers.py.)"""

from __future__ import annotations

import collections
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kfp_automl.errors import UserError
from kfp_automl.feedback.export import store_feedback_table
from kfp_automl.serving.postgres_store import (
    SCHEMA_VERSION,
    PostgresStore,
    StoreUnavailable,
    redact,
)
from kfp_automl.serving.prediction_log import LogSettings, PredictionLog
from kfp_automl.serving.prediction_store import OPEN
from kfp_automl.serving.quality import QualityMetrics, live_metrics
from tests.unit.test_prediction_log import EVALUATION, _schema, _value


def _replica(tmp_path: Path, url: str, name: str, **settings):
    registry = CollectorRegistry()
    metrics = QualityMetrics("m", "v1", "classification", "roc_auc", EVALUATION, registry)
    defaults = {
        "mode": "on",
        "directory": str(tmp_path / name),
        "flush_interval_s": 60.0,  # the tests flush themselves
        "store_url": url,
        "replica": name,
        "label_grace_s": 0.0,
        "store_timeout_s": 0.5,
    }
    plog = PredictionLog(LogSettings(**{**defaults, **settings}), "m", "v1", _schema(), metrics)
    return plog, registry


def _submit(plog: PredictionLog, ids: list[str], p_yes: float = 0.8) -> None:
    records = [{"x1": 0.5, "x2": 3, "colour": "red", "ssn": str(i)} for i, _ in enumerate(ids)]
    pred = "yes" if p_yes >= 0.5 else "no"
    answers = [{"prediction": pred, "probabilities": {"no": 1 - p_yes, "yes": p_yes}} for _ in ids]
    plog.submit(ids, records, answers)


def _labels(ids: list[str], label: str = "yes") -> list[dict]:
    return [{"id": i, "label": label} for i in ids]


def test_replicas_starting_together_migrate_the_schema_once(postgres, store_url):
    stores = [PostgresStore(store_url, "m", f"r{i}") for i in range(6)]
    errors: list[BaseException] = []

    def start(store):
        try:
            store.check()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = postgres.sql("SELECT version FROM automl_schema_migrations", store_url)
    assert applied == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    for s in stores:
        s.close()


def test_a_label_joins_on_the_replica_it_reaches_and_nothing_is_on_the_pods_disk(
    tmp_path, store_url
):
    a, reg_a = _replica(tmp_path, store_url, "a")
    b, reg_b = _replica(tmp_path, store_url, "b")
    ids = [f"p{i}" for i in range(40)]
    _submit(a, ids[:20], 0.9)  # replica a predicts "yes" and is right
    _submit(b, ids[20:], 0.2)  # replica b predicts "no" and is wrong
    a.flush()
    b.flush()
    # every label reaches the other replica
    status, report = b.feedback(_labels(ids[:20]), OPEN)
    assert (status, report["matched"]) == (200, 20)
    status, report = a.feedback(_labels(ids[20:]), OPEN)
    assert (status, report["matched"]) == (200, 20)
    for plog in (a, b):
        plog.update_quality()
    fleet = live_metrics(
        "classification",
        ["no", "yes"],
        [("yes", [0.1, 0.9], "yes")] * 20 + [("no", [0.8, 0.2], "yes")] * 20,
    )
    for registry in (reg_a, reg_b):  # both replicas export the fleet's window
        assert _value(registry, "automl_live_metric", metric="accuracy") == fleet["accuracy"] == 0.5
        assert _value(registry, "automl_live_window_labels") == 40
    # and each its own: the bad replica is visible
    assert _value(reg_a, "automl_live_replica_metric", metric="accuracy") == 1.0
    assert _value(reg_b, "automl_live_replica_metric", metric="accuracy") == 0.0
    assert _value(reg_a, "automl_live_replica_window_labels") == 20
    assert _value(reg_a, "automl_prediction_log_records_total") == 20
    assert not list((tmp_path / "a").glob("predictions-*")), "a shared store writes no files"
    a.close()
    b.close()


def test_a_label_for_a_prediction_another_replica_still_holds_waits_for_it(tmp_path, store_url):
    a, _ = _replica(tmp_path, store_url, "a")
    b, reg_b = _replica(tmp_path, store_url, "b", label_grace_s=1.5)
    _submit(a, ["late"])  # answered by a, not yet written by its log thread
    later = threading.Timer(0.6, a.flush)
    later.start()
    started = time.monotonic()
    status, report = b.feedback(_labels(["late"]), OPEN)
    waited = time.monotonic() - started
    later.join()
    assert (status, report["matched"]) == (200, 1)
    assert 0.5 < waited < 1.5
    # an id nobody made is answered unknown_id once the grace is over
    started = time.monotonic()
    status, report = b.feedback(_labels(["never"]), OPEN)
    assert (status, report["unknown_id"]) == (422, 1)
    assert 1.4 < time.monotonic() - started < 4.5
    assert _value(reg_b, "automl_feedback_labels_total", outcome="unknown_id") == 1
    a.close()
    b.close()


def test_many_clients_on_both_replicas_leave_exactly_one_label_per_id(
    tmp_path, postgres, store_url
):
    a, _ = _replica(tmp_path, store_url, "a")
    b, _ = _replica(tmp_path, store_url, "b")
    ids = [f"c{i}" for i in range(300)]
    _submit(a, ids[:150])
    _submit(b, ids[150:])
    a.flush()
    b.flush()
    matched: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def client(plog: PredictionLog, label: str, order: int) -> None:
        shuffled = ids[order:] + ids[:order]  # each client labels the ids in another order
        for start in range(0, len(shuffled), 50):
            _, report = plog.feedback(_labels(shuffled[start : start + 50], label), OPEN)
            with lock:
                for r in report["results"]:
                    if r["status"] == "matched":
                        matched[r["id"]] += 1

    threads = [
        threading.Thread(target=client, args=(plog, label, k * 37))
        for k, (plog, label) in enumerate([(a, "yes"), (b, "no")] * 4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(matched) == set(ids) and set(matched.values()) == {1}
    rows = postgres.sql(
        "SELECT count(*), count(label), sum(repeats) FROM automl_predictions", store_url
    )
    assert rows == [(300, 300, 300 * 7)]  # 8 clients: 1 label and 7 repeats per id
    a.close()
    b.close()


def test_the_database_stopped_mid_traffic_loses_nothing_it_acknowledged(
    tmp_path, postgres, store_url
):
    a, reg = _replica(tmp_path, store_url, "a")
    _submit(a, [f"d{i}" for i in range(50)])
    a.flush()
    assert a.feedback(_labels(["d0"]), OPEN)[0] == 200
    assert a.status()["status"] == "ok" and a.status()["store"] == "postgresql"
    postgres.stop("immediate")
    try:
        _submit(a, [f"d{i}" for i in range(50, 120)])  # predictions go on being answered
        a.flush()
        assert _value(reg, "automl_prediction_log_backlog") == 70
        assert _value(reg, "automl_prediction_log_healthy") == 0
        # GET /status says so (the pod stays ready)
        assert a.status() == {
            "status": "degraded",
            "mode": "on",
            "store": "postgresql",
            "replica": "a",
            "failing": ["store"],
            "backlog": 70,
            "queued": 0,
        }
        started = time.monotonic()
        status, report = a.feedback(_labels(["d1"]), OPEN)
        assert status == 503 and report["error"]["reason"] == "store"
        assert time.monotonic() - started < 3
        assert "***" in report["error"]["problem"] and postgres.password not in str(report)
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while _value(reg, "automl_prediction_log_backlog") and time.monotonic() < deadline:
        time.sleep(0.3)
        a.flush()
    assert _value(reg, "automl_prediction_log_backlog") == 0
    assert _value(reg, "automl_prediction_log_healthy") == 1
    assert a.status()["status"] == "ok" and a.status()["backlog"] == 0
    assert _value(reg, "automl_prediction_log_records_total") == 120
    assert _value(reg, "automl_prediction_log_dropped_total", reason="store_down") == 0
    assert postgres.sql("SELECT count(*), count(label) FROM automl_predictions", store_url) == [
        (120, 1)
    ]
    assert a.feedback(_labels(["d1", "d119"]), OPEN)[1]["matched"] == 2
    a.close()


def test_a_backlog_beyond_its_bound_drops_the_oldest_and_counts_them(tmp_path, postgres, store_url):
    a, reg = _replica(tmp_path, store_url, "a", max_buffered=100)
    a.flush()
    postgres.stop("immediate")
    try:
        for k in range(3):
            _submit(a, [f"e{k}-{i}" for i in range(60)])
            a.flush()
    finally:
        postgres.start()
    deadline = time.monotonic() + 20  # the store is back: what waited is written
    while _value(reg, "automl_prediction_log_backlog") and time.monotonic() < deadline:
        time.sleep(0.3)
        a.flush()
    a.close()
    logged = _value(reg, "automl_prediction_log_records_total")
    dropped = _value(reg, "automl_prediction_log_dropped_total", reason="store_down")
    assert (logged, dropped) == (60, 120)  # each flush's batch merges; the oldest two went
    assert postgres.sql("SELECT min(id) FROM automl_predictions", store_url) == [("e2-0",)]


def test_retention_and_the_row_limit_are_the_stores(tmp_path, postgres, store_url):
    a, reg = _replica(tmp_path, store_url, "a", store_max_rows=100, quality_window=10)
    old = [f"o{i}" for i in range(80)]
    _submit(a, old)
    a.flush()
    postgres.sql("UPDATE automl_predictions SET ts = ts - 100000", store_url)
    assert a.feedback(_labels(old[:15]), OPEN)[0] == 200
    a.settings.label_ttl_s = 1000.0
    assert a.expire() == 65  # unlabelled and past the TTL
    _submit(a, [f"n{i}" for i in range(120)])
    a.flush()
    a._prune_shared()
    rows = postgres.sql("SELECT count(*), count(label) FROM automl_predictions", store_url)
    assert rows[0][0] <= 95 and rows[0][1] == 15  # the labelled window is kept
    assert (
        _value(reg, "automl_prediction_log_dropped_total", reason="store_full") == 135 - rows[0][0]
    )
    a.close()


def test_export_reads_the_training_table_from_the_store(tmp_path, store_url):
    a, _ = _replica(tmp_path, store_url, "a", exclude=("ssn",))
    b, _ = _replica(tmp_path, store_url, "b", exclude=("ssn",))
    _submit(a, ["x1", "x2"])
    _submit(b, ["x3"])
    a.flush()
    b.flush()
    b.feedback([{"id": "x1", "label": "no"}, {"id": "x3", "label": "yes"}], OPEN)
    fresh = store_feedback_table(store_url)
    assert (fresh.predictions, fresh.labelled, fresh.target) == (3, 2, _schema().target)
    assert "ssn" not in fresh.table.columns and fresh.excluded == ["ssn"]
    assert sorted(fresh.table[fresh.target]) == ["no", "yes"]
    assert fresh.table["x1"].dtype == float and list(fresh.table["x1"]) == [0.5, 0.5]
    assert store_feedback_table(store_url, since=time.time() + 60).labelled == 0
    with pytest.raises(UserError, match="--model 'other'"):
        store_feedback_table(store_url, model="other")
    a.close()
    b.close()


def test_an_unreachable_store_is_a_one_line_error_without_its_password(tmp_path):
    url = "postgresql://u:s3cret@127.0.0.1:1/db"
    assert redact(url) == "postgresql://u:***@127.0.0.1:1/db"
    with pytest.raises(UserError) as err:
        store_feedback_table(url)
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)
    store = PostgresStore(url, "m", "r", timeout_s=0.5)
    with pytest.raises(StoreUnavailable) as down:
        store.add([(OPEN, "i", "m", "v1", 1.0, "1", None, None)])
    assert "s3cret" not in str(down.value)
    store.close()
    with pytest.raises(ValueError, match="postgresql://"):
        LogSettings(mode="on", store_url="mysql://x").check()


def test_a_replica_without_a_name_is_its_host_in_the_store_and_its_own_window(
    tmp_path, postgres, store_url
):
    plog, reg = _replica(tmp_path, store_url, "", directory=str(tmp_path / "logs"))
    _submit(plog, ["h1", "h2"], 0.9)
    plog.flush()
    assert plog.feedback(_labels(["h1", "h2"]), OPEN)[0] == 200
    plog.update_quality()
    assert postgres.sql("SELECT DISTINCT replica FROM automl_predictions", store_url) == [
        (socket.gethostname(),)
    ]
    assert _value(reg, "automl_live_replica_metric", metric="accuracy") == 1.0
    plog.close()
