"""Prediction log, join store and live quality, in process (no server)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.metrics import METRICS
from kfp_automl.serving.prediction_log import LogSettings, PredictionLog
from kfp_automl.serving.prediction_store import PredictionStore, read_labels
from kfp_automl.serving.quality import QualityMetrics, check_label, live_metrics
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
    assert a.add([("p1", "m", "v1", 100.0, '"yes"', "[0.2, 0.8]")]) == 1
    assert a.add([("p1", "m", "v1", 101.0, '"no"', None)]) == 0  # a reused id keeps the first
    outcomes = b.label([("p1", "no"), ("p1", "yes"), ("zz", "no")], now=130.0)
    assert [o.status for o in outcomes] == ["matched", "duplicate", "unknown_id"]
    assert outcomes[0].delay_s == 30.0
    a.close()
    b.close()
    again = PredictionStore(tmp_path)  # after a restart
    assert again.window("v1", 10) == [("yes", [0.2, 0.8], "no")]
    assert again.label([("p1", "yes")], now=140.0)[0].status == "duplicate"
    again.close()
    assert read_labels(tmp_path) == {"p1": ("no", 130.0)}


def test_store_expires_unlabelled_predictions_and_keeps_the_window(tmp_path):
    store = PredictionStore(tmp_path)
    store.add([(f"p{i}", "m", "v1", float(i), '"yes"', None) for i in range(10)])
    store.label([("p0", "yes"), ("p1", "no")], now=5.0)
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


def test_files_rotate_and_the_total_stays_bounded(tmp_path):
    plog, _ = _log(tmp_path, max_file_bytes=2000, max_total_bytes=6000)
    for i in range(40):
        _predict(plog, [f"p{i}-{j}" for j in range(3)])
        plog.flush()
    plog.close()
    files = sorted((tmp_path / "logs").glob("predictions-*.jsonl"))
    assert len(files) >= 2  # rotated at 2000 bytes
    assert sum(f.stat().st_size for f in files) <= 6000 + 2000  # one file may pass the limit
    ids = [line["id"] for line in _lines(tmp_path / "logs")]
    assert ids[-1] == "p39-2" and "p0-0" not in ids  # the oldest files went, the newest stay


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
