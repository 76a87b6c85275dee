"""Prediction log, join store and live quality, in process (no server)."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kfp_automl.cli.feedback import prediction_log_options, prediction_log_settings
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.runtime.metrics import METRICS
from kfp_automl.serving.callers import Callers, LabelRate, TokenError, read_tokens
from kfp_automl.serving.prediction_log import (
    CALLER_FIELD,
    LogSettings,
    PredictionLog,
    RandomIds,
    disk_warnings,
)
from kfp_automl.serving.prediction_store import (
    ANONYMOUS,
    OPEN,
    PredictionStore,
    read_labels,
    store_bytes,
)
from kfp_automl.serving.quality import (
    FeedbackError,
    QualityMetrics,
    check_label,
    live_metrics,
    parse_feedback,
)
from tests.support.frames import schema_dict

CLASSES = ["no", "yes"]
EVALUATION = {"roc_auc": 0.85, "roc_auc_ci_low": 0.8, "roc_auc_ci_high": 0.9, "accuracy": 0.8}


def _schema() -> Schema:
    return Schema.from_dict({**schema_dict("classification"), "classes": CLASSES})


def _log(tmp_path: Path, registry=None, **settings) -> tuple[PredictionLog, CollectorRegistry]:
    registry = registry or CollectorRegistry()
    metrics = QualityMetrics("m", "v1", "classification", "roc_auc", EVALUATION, registry)
    defaults = {"mode": "on", "directory": str(tmp_path / "logs"), "flush_interval_s": 60.0}
    plog = PredictionLog(LogSettings(**{**defaults, **settings}), "m", "v1", _schema(), metrics)
    return plog, registry


def _value(registry: CollectorRegistry, name: str, **labels) -> float:
    value = registry.get_sample_value(name, {"model": "m", "version": "v1", **labels})
    return math.nan if value is None else value


def _predict(plog: PredictionLog, ids: list[str], p_yes: float = 0.8) -> None:
    records = [{"x1": 0.5, "x2": 3, "colour": "red", "ssn": "123"} for _ in ids]
    pred = "yes" if p_yes >= 0.5 else "no"
    answers = [{"prediction": pred, "probabilities": {"no": 1 - p_yes, "yes": p_yes}} for _ in ids]
    plog.submit(ids, records, answers)


def _lines(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("predictions-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


# ---- the join store -------------------------------------------------------------------------


def test_store_joins_across_connections_and_reopens(tmp_path):
    a, b = PredictionStore(tmp_path), PredictionStore(tmp_path)  # two worker processes
    assert a.add([(OPEN, "p1", "m", "v1", 100.0, '"yes"', "[0.2, 0.8]")]) == 1
    assert a.add([(OPEN, "p1", "m", "v1", 101.0, '"no"', None)]) == 0  # a reused id keeps the first
    outcomes = b.label([("", "p1", "no"), ("", "p1", "yes"), ("", "zz", "no")], now=130.0)
    assert [o.status for o in outcomes] == ["matched", "duplicate", "unknown_id"]
    assert outcomes[0].delay_s == 30.0
    a.close()
    b.close()
    again = PredictionStore(tmp_path)  # after a restart
    assert again.window("v1", 10) == [("yes", [0.2, 0.8], "no")]
    assert again.label([("crm", "p1", "yes")], now=140.0)[0].status == "duplicate"
    again.close()
    assert read_labels(tmp_path) == {(OPEN, "p1"): ("no", 130.0)}


def test_store_keeps_each_callers_ids_apart(tmp_path):
    store = PredictionStore(tmp_path)
    rows = [("crm", "c1", '"yes"'), ("shop", "c1", '"no"'), (ANONYMOUS, "c1", '"no"')]
    assert store.add([(o, i, "m", "v1", 1.0, p, None) for o, i, p in rows]) == 3
    store.add([(OPEN, "f3a9", "m", "v1", 1.0, '"yes"', None)])
    outcomes = store.label(
        [("eve", "c1", "no"), ("shop", "c1", "yes"), ("crm", "c1", "no"), ("eve", "f3a9", "no")],
        now=2.0,
    )
    # eve holds no prediction c1; each caller labels only its own; an OPEN id is anyone's
    assert [(o.status, o.owner) for o in outcomes] == [
        ("unknown_id", None),
        ("matched", "shop"),
        ("matched", "crm"),
        ("matched", OPEN),
    ]
    # the anonymous caller (feedback auth none) labels the anonymous own-id row only
    assert store.label([(ANONYMOUS, "c1", "yes")], now=3.0)[0].owner == ANONYMOUS
    labels = read_labels(tmp_path)
    assert labels[("shop", "c1")] == ("yes", 2.0) and labels[("crm", "c1")] == ("no", 2.0)
    store.close()


def test_a_store_of_the_previous_schema_is_migrated_and_keeps_its_labels(tmp_path):
    old = sqlite3.connect(tmp_path / "feedback.db")
    old.executescript(
        "CREATE TABLE predictions (id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT "
        "NULL, ts REAL NOT NULL, prediction TEXT NOT NULL, probabilities TEXT, label TEXT, "
        "label_ts REAL, repeats INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX unlabelled_by_ts ON predictions (ts) WHERE label_ts IS NULL;"
        """INSERT INTO predictions VALUES ('a', 'm', 'v1', 1.0, '"yes"', NULL, '"no"', 2.0, 0);"""
        """INSERT INTO predictions VALUES ('b', 'm', 'v1', 1.0, '"yes"', NULL, NULL, NULL, 0);"""
    )
    old.commit()
    old.close()
    assert read_labels(tmp_path) == {(ANONYMOUS, "a"): ("no", 2.0)}  # read before migrating
    store, again = PredictionStore(tmp_path), PredictionStore(tmp_path)
    assert store.label([(ANONYMOUS, "b", "yes")], now=5.0)[0].status == "matched"
    assert again.label([("crm", "b", "yes")], now=5.0)[0].status == "unknown_id"
    store.close()
    again.close()
    assert read_labels(tmp_path) == {(ANONYMOUS, "a"): ("no", 2.0), (ANONYMOUS, "b"): ("yes", 5.0)}


def test_store_prune_keeps_the_rows_within_a_size_and_the_newest(tmp_path):
    store = PredictionStore(tmp_path)
    store.add(
        [(OPEN, f"p{i:05d}", "m", "v1", float(i), '"yes"', "[0.1, 0.9]") for i in range(20_000)]
    )
    store.label([(ANONYMOUS, "p00000", "no")], now=1.0)  # labelled: kept (the window)
    disk, used = store.usage()
    assert disk >= used > 1_000_000
    deleted = store.prune(300_000, keep_labelled=10)
    assert 0 < deleted < 20_000
    assert store.usage()[1] <= 300_000
    left = store._db.execute("SELECT min(id), max(id) FROM predictions WHERE label_ts IS NULL")
    assert left.fetchone()[1] == "p19999"  # the oldest went first
    assert read_labels(tmp_path) == {(OPEN, "p00000"): ("no", 1.0)}
    assert store.usage()[0] < disk  # a new store gives the pages back to the file system
    store.close()


def test_store_expires_unlabelled_predictions_and_keeps_the_window(tmp_path):
    store = PredictionStore(tmp_path)
    store.add([(OPEN, f"p{i}", "m", "v1", float(i), '"yes"', None) for i in range(10)])
    store.label([(ANONYMOUS, "p0", "yes"), (ANONYMOUS, "p1", "no")], now=5.0)
    # cutoff 100 - 50 = 50: every unlabelled row is older; labelled ones stay (the window)
    assert store.expire(now=100.0, ttl_s=50.0, keep_labelled=1) == 8
    assert store.expire(now=100.0, ttl_s=50.0, keep_labelled=1) == 0
    assert len(store.window("v1", 10)) == 1  # only the newest labelled row beyond the TTL
    store.close()


# ---- logging --------------------------------------------------------------------------------


def test_logged_predictions_are_written_joined_and_reported(tmp_path):
    plog, reg = _log(tmp_path, exclude=("colour",))
    _predict(plog, ["a", "b", "c"])
    assert plog.flush() == 3
    lines = _lines(tmp_path / "logs")
    assert [ln["id"] for ln in lines] == ["a", "b", "c"]
    assert lines[0]["features"] == {"x1": 0.5, "x2": 3}  # no excluded column, no unknown field
    assert lines[0]["probabilities"] == {"no": pytest.approx(0.2), "yes": 0.8}
    status, report = plog.feedback([{"id": "a", "label": "yes"}, {"id": "b", "label": "no"}])
    assert status == 200 and report["matched"] == 2
    plog.update_quality()
    assert _value(reg, "automl_live_metric", metric="accuracy") == 0.5
    assert _value(reg, "automl_live_window_labels") == 2
    assert _value(reg, "automl_feedback_labels_total", outcome="matched") == 2
    assert _value(reg, "automl_label_delay_seconds_count") == 2
    assert _value(reg, "automl_prediction_log_records_total") == 3
    bound = {"metric": "roc_auc", "goal": "max", "primary": "true"}
    assert _value(reg, "automl_evaluation_metric", bound="ci_low", **bound) == 0.8
    plog.close()
    labels = [ln for ln in _lines(tmp_path / "logs") if ln["kind"] == "label"]
    assert {ln["id"]: ln["label"] for ln in labels} == {"a": "yes", "b": "no"}
    schema_file = json.loads((tmp_path / "logs" / "model-m-v1.json").read_text())
    assert schema_file["target"] == "target" and schema_file["excluded"] == ["colour"]
    assert not list((tmp_path / "logs").glob("*.active.jsonl"))  # closed files are renamed


@pytest.mark.parametrize(
    ("item", "status", "problem"),
    [
        ({"id": "a", "label": "yes"}, "matched", None),
        ({"id": "nobody", "label": "yes"}, "unknown_id", "no logged prediction"),
        ({"id": "a", "label": "maybe"}, "wrong_type", "expected one of the classes"),
        ({"id": "a", "label": 1}, "wrong_type", "expected one of the classes"),
        ({"id": "a", "label": None}, "wrong_type", "expected one of the classes"),
        ({"id": "a"}, "wrong_type", "no 'label'"),
        ({"label": "yes"}, "bad_id", "no 'id'"),
        ({"id": True, "label": "yes"}, "bad_id", "string or an integer"),
        ({"id": ["a"], "label": "yes"}, "bad_id", "string or an integer"),
        ({"id": "", "label": "yes"}, "bad_id", "1 to 128 printable"),
        ({"id": "x" * 129, "label": "yes"}, "bad_id", "1 to 128 printable"),
        ("a:yes", "bad_id", "expected {"),
    ],
)
def test_feedback_items_get_a_report_each(tmp_path, item, status, problem):
    plog, reg = _log(tmp_path)
    _predict(plog, ["a"])
    code, report = plog.feedback([item])
    assert report["results"][0]["status"] == status
    assert (problem is None) == ("problem" not in report["results"][0])
    if problem:
        assert problem in report["results"][0]["problem"]
    assert code == (200 if status == "matched" else 422)
    assert _value(reg, "automl_feedback_labels_total", outcome=status) == 1
    plog.close()


def test_mixed_feedback_is_207_and_the_first_label_wins(tmp_path):
    plog, reg = _log(tmp_path)
    _predict(plog, ["a", "b"])
    code, report = plog.feedback(
        [{"id": "a", "label": "yes"}, {"id": "a", "label": "no"}, {"id": "zz", "label": "no"}]
    )
    assert code == 207
    assert [r["status"] for r in report["results"]] == ["matched", "duplicate", "unknown_id"]
    assert plog.feedback([{"id": "a", "label": "no"}])[0] == 200  # a retry is idempotent
    assert _value(reg, "automl_feedback_labels_total", outcome="duplicate") == 2
    plog.update_quality()
    assert _value(reg, "automl_live_metric", metric="accuracy") == 1.0  # "yes" was kept
    plog.close()


def test_logging_off_answers_409(tmp_path):
    plog, _ = _log(tmp_path, mode="off")
    code, body = plog.feedback([{"id": "a", "label": "yes"}])
    assert code == 409 and body["error"]["reason"] == "logging_off"
    plog.close()


def test_sampled_logging_keeps_about_the_rate(tmp_path):
    plog, reg = _log(tmp_path, mode="sampled", sample_rate=0.2)
    _predict(plog, [f"p{i}" for i in range(2000)])
    n = plog.flush()
    assert 300 < n < 500
    assert _value(reg, "automl_prediction_log_records_total") == n
    plog.close()


def test_a_full_buffer_drops_and_counts(tmp_path):
    plog, reg = _log(tmp_path, max_buffered=5)
    _predict(plog, ["a", "b", "c"])
    _predict(plog, ["d", "e", "f"])  # would make 6 > 5
    assert _value(reg, "automl_prediction_log_dropped_total", reason="buffer_full") == 3
    assert plog.flush() == 3
    plog.close()


def test_files_rotate_and_the_total_with_the_store_stays_bounded(tmp_path):
    limit, file_limit = 1_500_000, 100_000
    plog, _ = _log(tmp_path, max_file_bytes=file_limit, max_total_bytes=limit)
    record = {"x1": 0.5, "x2": 3, "colour": "red" * 700}
    answer = {"prediction": "yes", "probabilities": {"no": 0.2, "yes": 0.8}}
    for i in range(300):
        plog.submit([f"p{i}-{j}" for j in range(3)], [record] * 3, [answer] * 3)
        plog.flush()
        files = list((tmp_path / "logs").glob("predictions-*.jsonl"))
        total = sum(f.stat().st_size for f in files) + store_bytes(tmp_path / "logs")
        # the store counts: the directory never holds more than the limit and one open file
        assert total <= limit + file_limit, (i, total)
    plog.close()
    files = sorted((tmp_path / "logs").glob("predictions-*.jsonl"))
    assert len(files) >= 2  # rotated at 100 kB
    ids = [line["id"] for line in _lines(tmp_path / "logs")]
    assert ids[-1] == "p299-2" and "p0-0" not in ids  # the oldest files went, the newest stay


def test_an_unwritable_directory_is_reported_and_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    plog, reg = _log(tmp_path, directory=str(blocker / "logs"))
    _predict(plog, ["a", "b"])
    assert plog.flush() == 2
    assert _value(reg, "automl_prediction_log_healthy") == 0
    assert _value(reg, "automl_prediction_log_errors_total", kind="log_file") >= 1
    assert _value(reg, "automl_prediction_log_errors_total", kind="store") >= 1
    assert _value(reg, "automl_prediction_log_dropped_total", reason="write_error") == 2
    code, body = plog.feedback([{"id": "a", "label": "yes"}])
    assert code == 503 and body["error"]["reason"] == "store"
    plog.close()


FULL_DISK = """
import json, resource, signal, sys
from prometheus_client import CollectorRegistry
from kfp_automl.serving.prediction_log import LogSettings, PredictionLog
from kfp_automl.serving.quality import QualityMetrics
from kfp_automl.contracts.schema import Schema
schema = Schema.from_dict(json.loads(sys.argv[2]))
reg = CollectorRegistry()
metrics = QualityMetrics("m", "v1", "classification", "roc_auc", None, reg)
plog = PredictionLog(LogSettings(mode="on", directory=sys.argv[1], flush_interval_s=60), "m", "v1",
                     schema, metrics)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # files stop growing: a full disk
rec = {"x1": 1.0, "x2": 2, "colour": "red"}
ans = {"prediction": "yes", "probabilities": {"no": 0.1, "yes": 0.9}}
for i in range(50):
    plog.submit([f"p{i}-{j}" for j in range(20)], [rec] * 20, [ans] * 20)
    plog.flush()
get = lambda n, **l: reg.get_sample_value(n, {"model": "m", "version": "v1", **l})
print(json.dumps({
    "healthy": get("automl_prediction_log_healthy"),
    "dropped": get("automl_prediction_log_dropped_total", reason="write_error"),
    "logged": get("automl_prediction_log_records_total"),
}))
"""


def test_a_full_disk_is_reported_while_logging_goes_on(tmp_path):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path / "logs"), json.dumps(_schema().to_dict())],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cannot write the log file" in done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["healthy"] == 0 and out["dropped"] > 0 and out["logged"] > 0
    assert out["dropped"] + out["logged"] == 1000


def test_unlabelled_predictions_expire_and_are_counted(tmp_path):
    plog, reg = _log(tmp_path, label_ttl_s=0.2)
    _predict(plog, ["a", "b", "c"])
    plog.flush()
    plog.feedback([{"id": "a", "label": "yes"}])
    time.sleep(0.3)
    assert plog.expire() == 2
    assert _value(reg, "automl_predictions_expired_total") == 2
    assert plog.feedback([{"id": "b", "label": "yes"}])[1]["unknown_id"] == 1
    plog.close()


# ---- labels and live metrics ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "task", "classes", "ok"),
    [
        ("yes", "classification", ["no", "yes"], True),
        ("YES", "classification", ["no", "yes"], False),
        (1, "classification", [0, 1], True),
        (True, "classification", [0, 1], False),
        (1.0, "classification", [0, 1], False),
        (False, "classification", [False, True], True),
        (2.5, "regression", None, True),
        (3, "regression", None, True),
        ("2.5", "regression", None, False),
        (True, "regression", None, False),
        (math.inf, "regression", None, False),
        (None, "regression", None, False),
    ],
)
def test_check_label(value, task, classes, ok):
    assert (check_label(value, task, classes) is None) == ok


@pytest.mark.parametrize("n_classes", [2, 3])
def test_live_metrics_equal_the_evaluation_metrics(n_classes):
    rng = np.random.default_rng(n_classes)
    classes = ["a", "b", "c"][:n_classes]
    proba = rng.dirichlet(np.ones(n_classes), size=300)
    y = np.array(classes)[rng.integers(0, n_classes, size=300)]
    pred = np.array(classes)[proba.argmax(axis=1)]
    window = [(p, pr.tolist(), t) for p, pr, t in zip(pred, proba, y, strict=True)]
    live = live_metrics("classification", classes, window)
    for name, value in live.items():
        metric = METRICS[name]
        if metric.binary_only and n_classes != 2:
            assert math.isnan(value)
            continue
        expected = metric.fn(y, pred, proba, classes)
        assert value == pytest.approx(expected, rel=1e-9), name


def test_live_regression_metrics_and_undefined_auc():
    y = np.array([1.0, 2.0, 4.0, 8.0])
    pred = np.array([1.5, 2.0, 3.0, 9.0])
    live = live_metrics("regression", None, [(p, None, t) for p, t in zip(pred, y, strict=True)])
    for name in ("mae", "rmse", "r2", "mape"):
        assert live[name] == pytest.approx(METRICS[name].fn(y, pred, None, [])), name
    one_class = [("yes", [0.3, 0.7], "yes")] * 5
    live = live_metrics("classification", CLASSES, one_class)
    assert math.isnan(live["roc_auc"]) and live["accuracy"] == 1.0


# ---- disk bounds: dead workers' files, the store's share, the volume -------------------------

CRASHING_WRITER = """
import json, os, sys
from prometheus_client import CollectorRegistry
from kfp_automl.contracts.schema import Schema
from kfp_automl.serving.prediction_log import LogSettings, PredictionLog
from kfp_automl.serving.quality import QualityMetrics
schema = Schema.from_dict(json.loads(sys.argv[2]))
metrics = QualityMetrics("m", "v1", "classification", "roc_auc", None, CollectorRegistry())
plog = PredictionLog(LogSettings(mode="on", directory=sys.argv[1], flush_interval_s=60), "m",
                     "v1", schema, metrics)
rec, ans = {"x1": 1.0, "x2": 2, "colour": "red"}, {"prediction": "yes", "probabilities": None}
plog.submit(["a", "b"], [rec, rec], [ans, ans])
plog.flush()
plog._file.write(b'{"kind":"prediction","id":"cut sh')  # a line cut short by the crash
plog._file.flush()
print(plog._file_path, flush=True)
os.kill(os.getpid(), 9)
"""


def _crash_a_writer(directory: Path) -> Path:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(directory), json.dumps(_schema().to_dict())],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return Path(done.stdout.strip())


def test_a_dead_workers_active_file_is_adopted_cut_and_counted(tmp_path):
    orphan = _crash_a_writer(tmp_path / "logs")
    assert orphan.name.endswith(".active.jsonl") and orphan.exists()
    plog, _ = _log(tmp_path)  # a new worker starts
    assert not orphan.exists()
    closed = orphan.with_name(orphan.name.replace(".active.jsonl", ".jsonl"))
    lines = closed.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]  # the cut line is gone
    assert closed.read_bytes().endswith(b"\n")
    plog.close()


def test_an_adopted_file_rotates_away_like_any_other(tmp_path):
    orphan = _crash_a_writer(tmp_path / "logs")
    closed = orphan.with_name(orphan.name.replace(".active.jsonl", ".jsonl"))
    size = orphan.stat().st_size
    # the limit leaves no room for the orphan once the store is counted: it is deleted
    plog, _ = _log(tmp_path, max_total_bytes=store_bytes(tmp_path / "logs") + size - 1)
    assert not orphan.exists() and not closed.exists()
    plog.close()


def test_a_living_workers_active_file_is_left_alone(tmp_path):
    first, _ = _log(tmp_path)
    _predict(first, ["a"])
    first.flush()
    active = first._file_path
    second, _ = _log(tmp_path, registry=CollectorRegistry())  # another worker of the server
    _predict(second, ["b"])
    second.flush()
    assert active.exists()  # it holds a lock on it
    first.close()
    second.close()
    assert sorted(line["id"] for line in _lines(tmp_path / "logs")) == ["a", "b"]


def test_the_store_beyond_its_share_is_pruned_and_counted(tmp_path):
    limit = 1_000_000
    plog, reg = _log(tmp_path, max_total_bytes=limit, max_file_bytes=50_000)
    for i in range(30):
        _predict(plog, [f"p{i}-{j}" for j in range(500)])
        plog.flush()
    pruned = _value(reg, "automl_prediction_log_dropped_total", reason="store_full")
    assert pruned > 0
    assert plog._store.usage()[1] <= limit * 0.5
    status, report = plog.feedback(
        [{"id": "p29-499", "label": "no"}, {"id": "p0-0", "label": "no"}]
    )
    assert [r["status"] for r in report["results"]] == ["matched", "unknown_id"]  # oldest pruned
    plog.close()


def test_disk_warnings_name_the_volume_and_the_free_space(tmp_path):
    ok = LogSettings(mode="on", directory=str(tmp_path), volume_bytes=1024 * 1024 * 1024)
    assert disk_warnings(ok) == []  # the defaults fit a 1 Gi emptyDir with room to spare
    over = LogSettings(
        mode="on", directory=str(tmp_path), max_total_bytes=1024 * 1024 * 1024, workers=2,
        volume_bytes=1024 * 1024 * 1024,
    )  # fmt: skip
    (warning,) = disk_warnings(over)
    assert "1152 MiB" in warning and "1024 MiB (AUTOML_LOG_VOLUME_MB)" in warning
    assert "at most 794" in warning  # 90% of the volume less one file per worker
    huge = LogSettings(mode="on", directory=str(tmp_path / "new"), max_total_bytes=2**62)
    (warning,) = disk_warnings(huge)
    assert "MiB free" in warning and str(tmp_path / "new") in warning


def test_the_service_and_the_cli_default_total_fits_the_serving_volume():
    from kfp_automl.serving.prediction_log import VOLUME_MARGIN

    @prediction_log_options
    def fake(**_):
        return None

    flags = {p.name: p.default for p in fake.__click_params__}
    settings = LogSettings()
    volume = 1024 * 1024 * 1024  # manifests/serving: the prediction-logs emptyDir
    assert flags["log_max_total_mb"] * 1024 * 1024 == settings.max_total_bytes
    assert settings.max_total_bytes + 2 * settings.max_file_bytes <= volume * VOLUME_MARGIN


# ---- ids, owners and labels ----------------------------------------------------------------


def test_server_ids_are_128_random_bits_and_a_forked_worker_draws_its_own():
    ids = RandomIds(batch=64)
    drawn = [ids() for _ in range(10_000)]
    assert len(set(drawn)) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in drawn)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker forked from a parent that had drawn ids
        os.write(write, ids().encode())
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 64).decode() != ids()
    os.close(read)
    os.close(write)


def test_a_label_joins_only_a_prediction_of_its_caller(tmp_path):
    plog, reg = _log(tmp_path, id_field="id")
    rec = {"x1": 0.5, "x2": 3, "colour": "red"}
    answers = [{"prediction": "yes", "probabilities": {"no": 0.2, "yes": 0.8}}] * 4
    records = [
        {**rec, "id": "c1", CALLER_FIELD: "crm"},  # made with crm's token, its own id
        {**rec, "id": "c1", CALLER_FIELD: "shop"},  # the same id from another caller
        {**rec, "id": "c2"},  # an own id without a token
        rec,  # an id the server made
    ]
    plog.submit(["c1", "c1", "c2", "f00d" * 8], records, answers)
    plog.flush()
    lines = _lines(tmp_path / "logs")
    assert [ln["owner"] for ln in lines] == ["crm", "shop", ANONYMOUS, OPEN]
    assert all(CALLER_FIELD not in ln["features"] and "id" not in ln["features"] for ln in lines)
    status, report = plog.feedback(
        [
            {"id": "c1", "label": "no"},
            {"id": "c2", "label": "no"},
            {"id": "f00d" * 8, "label": "no"},
        ],
        caller="eve",
    )
    assert status == 207
    assert [r["status"] for r in report["results"]] == ["unknown_id", "unknown_id", "matched"]
    assert "token" in report["results"][1]["problem"]
    assert plog.feedback([{"id": "c1", "label": "no"}], caller="crm")[0] == 200
    # shop's c1 is still unlabelled: crm's label did not reach it
    assert plog.feedback([{"id": "c1", "label": "yes"}], caller="shop")[1]["matched"] == 1
    plog.close()
    labels = [ln for ln in _lines(tmp_path / "logs") if ln["kind"] == "label"]
    assert [(ln["owner"], ln["by"], ln["label"]) for ln in labels] == [
        (OPEN, "eve", "no"),
        ("crm", "crm", "no"),
        ("shop", "shop", "yes"),
    ]


def test_labels_beyond_any_float_are_refused_not_raised():
    assert check_label(10**1000, "regression", None) == "expected a finite number"
    problem = check_label(10**1000, "classification", ["no", "yes"])
    assert problem is not None and "a very large integer" in problem
    assert len(check_label("x" * 1_000_000, "classification", ["no", "yes"]) or "") < 400


def test_feedback_bodies_nested_deep_are_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(FeedbackError, match="nests"):
        parse_feedback(b'{"labels": [' + b"[" * 200_000 + b"]" * 200_000 + b"]}", 10_000)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(FeedbackError, match="twice"):
        parse_feedback(b'{"labels": [], "labels": [{"id": "a", "label": "no"}]}', 10)


# ---- feedback callers and their tokens -------------------------------------------------------

TOKEN_A, TOKEN_B, TOKEN_NEW = "a" * 32, "b" * 40, "n" * 24


def _bearer(token: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = token if isinstance(token, bytes) else token.encode()
    return [(b"host", b"x"), (b"Authorization", b"Bearer " + raw)]


def test_tokens_come_from_one_file_per_caller_and_rotate_without_a_restart(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "crm").write_text(f"# the CRM's labeller\n{TOKEN_A}\n")
    (secret / "shop").write_text(TOKEN_B)
    (secret / "..data").mkdir()  # a mounted Secret's own bookkeeping
    now = [0.0]
    callers = Callers(secret, reload_s=10, clock=lambda: now[0])
    assert callers.names == ["crm", "shop"]
    assert callers.identify(_bearer(TOKEN_A)) == ("crm", "")
    assert callers.identify(_bearer(TOKEN_B)) == ("shop", "")
    # rotation: the new token is added beside the old, then the old one is removed
    (secret / "crm").write_text(f"{TOKEN_A}\n{TOKEN_NEW}\n")
    now[0] = 10.0
    assert callers.identify(_bearer(TOKEN_NEW)) == ("crm", "")
    assert callers.identify(_bearer(TOKEN_A)) == ("crm", "")
    (secret / "crm").write_text(f"{TOKEN_NEW}\n")
    now[0] = 15.0
    assert callers.identify(_bearer(TOKEN_A)) == ("crm", "")  # read again only every 10 s
    now[0] = 20.0
    assert callers.identify(_bearer(TOKEN_A))[0] is None
    assert callers.identify(_bearer(TOKEN_NEW)) == ("crm", "")


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ([], "send a feedback token"),
        ([(b"authorization", b"Basic " + b"a" * 32)], "not 'Bearer <token>'"),
        ([(b"authorization", b"Bearer")], "not 'Bearer <token>'"),
        ([(b"authorization", "Bearer ä".encode() + b"a" * 32)], "printable ASCII"),
        ([(b"authorization", b"Bearer \xff\xfe" + b"a" * 30)], "printable ASCII"),
        ([(b"authorization", b"Bearer " + b"a" * 32)] * 2, "exactly one"),
        (_bearer("a" * 31 + "b"), "not a feedback token"),
        (_bearer("a" * 33), "not a feedback token"),
    ],
)
def test_a_request_without_a_known_token_is_refused_with_the_reason(tmp_path, headers, words):
    (tmp_path / "crm").write_text(TOKEN_A)
    caller, problem = Callers(tmp_path / "crm").identify(headers)
    assert caller is None and words in problem


def test_bad_token_files_are_named_and_skipped(tmp_path):
    (tmp_path / "short").write_text("abc")
    (tmp_path / "spaced").write_text("a token with spaces in it")
    (tmp_path / "one").write_text(TOKEN_A)
    (tmp_path / "two").write_text(TOKEN_A)  # the same token for two callers
    (tmp_path / "bad name!").write_text(TOKEN_B)
    (tmp_path / "ok").write_text(TOKEN_B)
    found, problems = read_tokens(tmp_path)
    assert sorted(found.values()) == ["ok"]
    text = "\n".join(problems)
    for words in ("'short': a token of 3 characters", "'spaced': a token is not printable",
                  "one and two share a token", "bad name!"):  # fmt: skip
        assert words in text, (words, text)
    with pytest.raises(TokenError, match="neither a directory"):
        read_tokens(tmp_path / "nowhere")
    nobody = Callers("")
    assert nobody.names == [] and nobody.identify(_bearer(TOKEN_A))[0] is None


# ---- `kfp-automl serve` flags for logging and feedback ---------------------------------------


@click.command()
@prediction_log_options
def _serve_flags(**log):
    """The AUTOML_* variables `kfp-automl serve` hands the service for these flags."""
    return prediction_log_settings(None, **log)


def _settings(*flags, env: dict[str, str] | None = None) -> dict[str, str]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("AUTOML_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env or {})
    try:
        return _serve_flags.main(list(flags), standalone_mode=False)
    finally:
        for key in [k for k in os.environ if k.startswith("AUTOML_")]:
            del os.environ[key]
        os.environ.update(saved)


def _one_line_error(*flags, env=None) -> str:
    with pytest.raises(UserError) as refused:
        _settings(*flags, env=env)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_logging_without_a_credential_is_refused():
    message = _one_line_error("--log-predictions", "on")
    assert "--feedback-tokens" in message and "--feedback-auth none" in message
    assert _settings()["AUTOML_LOG_PREDICTIONS"] == "off"  # logging off needs no tokens


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "neither a directory"), ("", "no tokens"), ("short", "a token of 5 characters")],
)
def test_bad_feedback_tokens_are_refused_before_serving(tmp_path, content, words):
    path = tmp_path / "crm"
    if content is not None:
        path.write_text(content)
    message = _one_line_error("--log-predictions", "on", "--feedback-tokens", str(path))
    assert words in message, message


def test_feedback_tokens_reach_the_service_and_serve_names_the_callers(tmp_path, capsys):
    (tmp_path / "crm").write_text(TOKEN_A)
    env = _settings("--log-predictions", "on", "--feedback-tokens", str(tmp_path))
    assert env["AUTOML_FEEDBACK_AUTH"] == "token"
    assert env["AUTOML_FEEDBACK_TOKENS"] == str(tmp_path.resolve())
    assert env["AUTOML_LOG_MAX_TOTAL_MB"] == "512.0"
    assert "1 caller(s): crm" in capsys.readouterr().out


def test_a_pods_token_directory_is_checked_like_the_flag(tmp_path):
    pod = {"AUTOML_LOG_PREDICTIONS": "on", "AUTOML_FEEDBACK_TOKENS": str(tmp_path)}
    assert "no tokens" in _one_line_error(env=pod)  # a Secret that is not there
    (tmp_path / "crm").write_text(TOKEN_A)
    assert "AUTOML_FEEDBACK_TOKENS" not in _settings(env=pod)  # the pod's own value stays


def test_feedback_auth_none_is_said_at_start_up(capsys):
    env = _settings("--log-predictions", "on", "--feedback-auth", "none")
    assert env["AUTOML_FEEDBACK_AUTH"] == "none"
    assert "anyone who can reach the server can label" in capsys.readouterr().err


def test_each_caller_has_its_own_label_rate():
    rate = LabelRate(per_s=100, burst=1000)
    assert rate.take("crm", 1000, now=0.0) == 0.0  # one full request at once
    assert rate.take("crm", 1, now=0.0) == pytest.approx(0.01)
    assert rate.take("shop", 1000, now=0.0) == 0.0  # another caller's bucket is full
    assert rate.take("crm", 500, now=2.0) == pytest.approx(3.0)  # 200 back after 2 s
    assert rate.take("crm", 200, now=2.0) == 0.0  # a refused request spent nothing
    # a request over the burst takes a full bucket, then waits for one
    assert rate.take("crm", 5000, now=100.0) == 0.0
    assert rate.take("crm", 5000, now=104.0) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        LabelRate(per_s=0, burst=10)
