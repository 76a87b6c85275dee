"""The retrain-from-feedback pipeline (pipelines/feedback.py) under kfp.local: labelled
predictions in a real PostgreSQL store (written by two replicas) are exported by the
export-feedback step and trained on by the training pipeline nested after it."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from kfp_automl.errors import UserError
from kfp_automl.serving.prediction_store import OPEN
from tests.unit.test_shared_store import _replica

pytestmark = pytest.mark.slow


def _log_labelled(tmp_path, store_url, n: int) -> None:
    """`n` predictions over two replicas, each labelled: yes when x1 > 0.5."""
    rng = random.Random(0)
    replicas = [_replica(tmp_path, store_url, name)[0] for name in ("a", "b")]
    labels = []
    for i in range(n):
        x1 = rng.random()
        record = {"x1": x1, "x2": rng.randint(0, 9), "colour": rng.choice(["red", "blue"])}
        answer = {"prediction": "yes", "probabilities": {"no": 0.4, "yes": 0.6}}
        replicas[i % 2].submit([f"p{i}"], [record], [answer])
        labels.append({"id": f"p{i}", "label": "yes" if x1 > 0.5 else "no"})
    for plog in replicas:
        plog.flush()
    status, report = replicas[0].feedback(labels, OPEN)
    assert status == 200 and report["matched"] == n, report
    for plog in replicas:
        plog.close()


def test_a_retrain_starts_from_the_stores_labelled_predictions(tmp_path, store_url, monkeypatch):
    from kfp_automl.pipelines.feedback import feedback_retrain
    from kfp_automl.pipelines.local import run_pipeline

    _log_labelled(tmp_path, store_url, 240)
    monkeypatch.setenv("AUTOML_LOG_STORE", store_url)  # the Secret's variable on a cluster
    params = {
        "model_name": "m",
        "since": "1d",
        "min_labels": 200,
        "families": "linear",
        "time_budget_s": 15,
        "max_trials": 3,
        "registry_root": str(tmp_path / "registry"),
    }
    summary = run_pipeline(params, tmp_path / "run", pipeline=feedback_retrain)
    (table,) = (tmp_path / "run" / "pipeline_root").rglob("table.parquet")
    exported = pd.read_parquet(table)
    assert list(exported.columns) == ["x1", "x2", "colour", "target"] and len(exported) == 240
    assert summary["target"] == "target" and summary["bento_tag"].startswith("m:")
    assert summary["test_metrics"]["roc_auc"] > 0.8  # it learnt the labels, not the answers

    # too few labels: the export step refuses, the training steps never run
    params["min_labels"] = 1000
    with pytest.raises(UserError, match=r"240 labelled predictions .* fewer than the 1000"):
        run_pipeline(params, tmp_path / "run-2", pipeline=feedback_retrain)
