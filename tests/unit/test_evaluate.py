"""components/evaluate/evaluate.py: holdout metrics, confusion matrix, ROC points, HTML report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from components.common.metrics import task_metrics
from components.evaluate.evaluate import MAX_ROC_POINTS, evaluate, render_report
from components.tune.families import build_model

from ._data import schema_for, synthetic_frame


def _fit(task: str, n_train: int = 240, family: str = "linear"):
    df = synthetic_frame(n_train, task, seed=11)
    model = build_model(schema_for(task), {"family": family})
    return model.fit(df.drop(columns=["target"]), df["target"])


@pytest.fixture(scope="module")
def binary_model():
    return _fit("classification")


@pytest.fixture(scope="module")
def binary_eval(binary_model):
    test = synthetic_frame(90, "classification", seed=12)
    return evaluate(binary_model, test, schema_for("classification")), test


def test_binary_metrics_and_confusion(binary_eval, binary_model):
    ev, test = binary_eval
    assert ev.task == "classification"
    assert ev.metric == "roc_auc"  # the binary default
    assert set(ev.metrics) == {m.name for m in task_metrics("classification", 2)}
    assert all(math.isfinite(v) for v in ev.metrics.values())
    assert ev.primary_score == ev.metrics["roc_auc"]
    assert ev.metrics["roc_auc"] > 0.8  # a learnable problem: the model is really scored
    assert ev.n_test == len(test) == 90
    assert ev.labels == ["no", "yes"] == list(binary_model.classes_)
    cm = np.array(ev.confusion)
    assert cm.shape == (2, 2)
    assert cm.sum() == len(test)
    # rows are the actual classes
    assert cm.sum(axis=1).tolist() == [int((test["target"] == c).sum()) for c in ev.labels]
    assert np.trace(cm) / cm.sum() == pytest.approx(ev.metrics["accuracy"])


def test_binary_roc_points(binary_eval):
    ev, _ = binary_eval
    roc = ev.roc
    assert roc is not None and set(roc) == {"fpr", "tpr", "threshold"}
    fpr, tpr, thr = (np.array(roc[k]) for k in ("fpr", "tpr", "threshold"))
    assert len(fpr) == len(tpr) == len(thr) <= MAX_ROC_POINTS
    for arr in (fpr, tpr, thr):
        assert np.isfinite(arr).all()
        assert ((arr >= 0) & (arr <= 1)).all()
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    json.dumps(roc)  # stored as KFP metadata / JSON: no inf


def test_roc_is_thinned_to_max_points():
    # many test rows with overlapping classes: the raw curve has far more points than allowed
    model = _fit("classification", n_train=300)
    test = synthetic_frame(4000, "classification", seed=13)
    test["target"] = np.where(
        np.random.default_rng(0).random(len(test)) < 0.3, "yes", test["target"]
    )
    proba = model.predict_proba(test.drop(columns=["target"]))[:, 1]
    raw_fpr, _, _ = roc_curve(test["target"], proba, pos_label="yes")
    assert len(raw_fpr) > MAX_ROC_POINTS
    ev = evaluate(model, test, schema_for("classification"))
    fpr, tpr = np.array(ev.roc["fpr"]), np.array(ev.roc["tpr"])
    assert 0.9 * MAX_ROC_POINTS <= len(fpr) <= MAX_ROC_POINTS
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    # thinned points lie on the raw curve
    assert set(zip(fpr, tpr, strict=True)) <= set(
        zip(*roc_curve(test["target"], proba, pos_label="yes")[:2], strict=True)
    )


def test_evaluate_uses_requested_metric(binary_model):
    test = synthetic_frame(60, "classification", seed=14)
    ev = evaluate(binary_model, test, schema_for("classification"), metric="log_loss")
    assert ev.metric == "log_loss"
    assert ev.primary_score == ev.metrics["log_loss"] > 0


def test_multiclass_has_confusion_but_no_roc():
    model = _fit("multiclass")
    test = synthetic_frame(120, "multiclass", seed=15)
    ev = evaluate(model, test, schema_for("multiclass"))
    assert ev.metric == "f1_macro"
    assert "f1" not in ev.metrics and "roc_auc" in ev.metrics
    assert ev.roc is None
    assert np.array(ev.confusion).shape == (3, 3)
    assert np.array(ev.confusion).sum() == 120


def test_regression_path():
    model = _fit("regression")
    test = synthetic_frame(80, "regression", seed=16)
    ev = evaluate(model, test, schema_for("regression"))
    assert ev.task == "regression"
    assert ev.metric == "rmse"
    assert set(ev.metrics) == {"rmse", "mae", "r2"}
    assert ev.metrics["rmse"] >= ev.metrics["mae"] > 0  # RMSE is never below MAE
    assert ev.metrics["r2"] > 0.5
    assert ev.confusion == [] and ev.labels == [] and ev.roc is None
    assert ev.n_test == 80


# --- report ----------------------------------------------------------------


def _report_schema():
    schema = schema_for("classification")
    schema["features"] = [
        {**schema["features"][0], "min": -1.0, "max": 2.0, "missing_rate": 0.1},
        {"name": "<b>x</b>", "kind": "categorical", "dtype": "str", "n_categories": 3},
    ]
    schema["dropped"] = [
        {"name": "cust_id", "reason": "identifier: a different value in every row"}
    ]
    return schema


def test_render_report_contents(binary_eval):
    ev, _ = binary_eval
    board = pd.DataFrame(
        {"family": ["linear", "hist_gb"], "score": [0.91, 0.88], "status": ["ok", "ok"]}
    )
    info = {"family": "linear", "params": {"C": 1.0}, "valid_score": 0.9123, "n_trials": 2}
    page = render_report(ev, _report_schema(), board, info)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for name, value in ev.metrics.items():
        assert f"<td>{name}</td>" in page
        assert f"{value:.4f}" in page
    assert f"Holdout metrics ({ev.n_test} rows)" in page
    assert "Confusion matrix" in page
    assert "pred no" in page and "pred yes" in page
    for row in ev.confusion:
        for count in row:
            assert f"<td>{count}</td>" in page
    assert "validation roc_auc: 0.9123" in page
    assert "Leaderboard (top 25 of 2 trials)" in page
    assert "Columns dropped" in page and "cust_id" in page


def test_render_report_escapes_html(binary_eval):
    ev, _ = binary_eval
    schema = _report_schema()
    schema["target"] = "<script>alert(1)</script>"
    info = {"family": "<i>fam</i>", "params": {"C": "<img>"}, "valid_score": 0.5, "n_trials": 1}
    page = render_report(ev, schema, None, info)
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<i>fam</i>" not in page and "<img>" not in page


def test_render_report_regression_has_no_confusion_or_leaderboard():
    model = _fit("regression")
    ev = evaluate(model, synthetic_frame(60, "regression", seed=17), schema_for("regression"))
    page = render_report(ev, schema_for("regression"), pd.DataFrame(), {})
    assert "Confusion matrix" not in page
    assert "Leaderboard" not in page
    assert "<td>rmse</td>" in page and f"{ev.metrics['rmse']:.4f}" in page
