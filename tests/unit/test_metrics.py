"""kfp_automl/runtime/metrics.py: metric choice per task, direction, and values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from kfp_automl.errors import UserError
from kfp_automl.runtime.metrics import (
    METRICS,
    MetricUndefined,
    Scorer,
    resolve_metric,
    score,
    score_all,
    score_defined,
    task_metrics,
)

# --- resolve_metric --------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "n_classes", "expected"),
    [
        ("classification", 2, "roc_auc"),
        ("classification", 3, "f1_macro"),
        ("classification", 10, "f1_macro"),
        ("regression", 0, "rmse"),
    ],
)
def test_default_metric_per_task(task, n_classes, expected):
    assert resolve_metric("", task, n_classes).name == expected


@pytest.mark.parametrize(
    ("name", "task", "n_classes", "match"),
    [
        ("auc", "classification", 2, r"unknown metric 'auc'; choose one of .*roc_auc"),
        ("RMSE", "regression", 0, r"unknown metric 'RMSE'"),
        ("rmse", "classification", 2, r"'rmse' does not fit a classification task"),
        ("accuracy", "regression", 0, r"'accuracy' does not fit a regression task"),
        ("f1", "classification", 3, r"'f1' needs a binary target; this one has 3 classes"),
    ],
)
def test_resolve_metric_rejects(name, task, n_classes, match):
    with pytest.raises(UserError, match=match):
        resolve_metric(name, task, n_classes)


def test_wrong_task_message_lists_only_that_tasks_metrics():
    with pytest.raises(UserError) as info:
        resolve_metric("r2", "classification", 2)
    choices = str(info.value).split("choose one of ", 1)[1]
    assert "accuracy" in choices and "roc_auc" in choices
    assert "rmse" not in choices and "mae" not in choices


def test_binary_only_metric_is_allowed_for_two_classes():
    assert resolve_metric("f1", "classification", 2).name == "f1"


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("accuracy", "max"),
        ("roc_auc", "max"),
        ("pr_auc", "max"),
        ("f1_macro", "max"),
        ("r2", "max"),
        ("log_loss", "min"),
        ("brier", "min"),
        ("rmse", "min"),
        ("mae", "min"),
        ("mape", "min"),
    ],
)
def test_mode_and_better(name, mode):
    m = METRICS[name]
    assert m.mode == mode
    high, low = 0.9, 0.1
    if mode == "max":
        assert m.better(high, low) and not m.better(low, high)
    else:
        assert m.better(low, high) and not m.better(high, low)
    assert not m.better(0.5, 0.5)  # strictly better


def test_task_metrics_respects_binary_only():
    binary = {m.name for m in task_metrics("classification", 2)}
    multi = {m.name for m in task_metrics("classification", 3)}
    assert "f1" in binary and "f1" not in multi
    assert binary - {"f1"} == multi
    assert {m.name for m in task_metrics("regression")} == {"rmse", "mae", "r2", "mape"}
    assert {"pr_auc", "brier"} <= multi


@pytest.mark.parametrize(
    ("name", "task", "needs_proba"),
    [
        ("pr_auc", "classification", True),
        ("brier", "classification", True),
        ("mape", "regression", False),
    ],
)
def test_new_metrics_are_registered(name, task, needs_proba):
    m = resolve_metric(name, task, 3 if task == "classification" else 0)
    assert (m.task, m.needs_proba, m.binary_only) == (task, needs_proba, False)


# --- values ----------------------------------------------------------------


def test_binary_values_by_hand():
    classes = ["n", "y"]
    y = np.array(["n", "n", "n", "y", "y"])
    pred = np.array(["n", "y", "n", "y", "n"])
    # proba columns follow `classes`; ranking P(y) is perfect
    p_yes = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    proba = np.column_stack([1 - p_yes, p_yes])
    got = score_all(task_metrics("classification", 2), y, pred, proba, classes)
    # 'y': TP=1 FP=1 FN=1 -> F1 0.5; 'n': TP=2 FP=1 FN=1 -> F1 2/3
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["f1"] == pytest.approx(0.5)  # positive class is classes[1]
    assert got["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert got["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # every 'y' scores above every 'n' except 0.4 < 0.6: 5 of 6 pairs ordered
    assert got["roc_auc"] == pytest.approx(5 / 6)
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.9, 0.4])), rel=1e-9)
    # ranked by P(y): 0.9 (y), 0.6 (n), 0.4 (y), ...: precision 1/1 and 2/3 at the two 'y's
    assert got["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)
    # squared errors of P(y): n 0.1, 0.6, 0.2 -> .01 .36 .04; y 0.9, 0.4 -> .01 .36
    assert got["brier"] == pytest.approx(0.78 / 5)
    assert all(isinstance(v, float) for v in got.values())


def test_multiclass_pr_auc_and_brier_by_hand():
    classes = ["a", "b", "c"]
    y = np.array(["a", "b", "c", "a"])
    proba = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.5, 0.2, 0.3],
            [0.1, 0.3, 0.6],
            [0.3, 0.4, 0.3],
        ]
    )
    pred = np.array(classes)[proba.argmax(axis=1)]
    got = score_all(task_metrics("classification", 3), y, pred, proba, classes)
    # AP per class: a: ranks 1 and 3 -> (1 + 2/3) / 2; b: its row ranks last -> 1/4; c: first -> 1
    assert got["pr_auc"] == pytest.approx((5 / 6 + 1 / 4 + 1) / 3)
    # one-hot distance per row: .16+.09+.01, .25+.64+.09, .01+.09+.16, .49+.16+.09
    assert got["brier"] == pytest.approx((0.26 + 0.98 + 0.26 + 0.74) / 4)


def test_binary_brier_is_sklearns_on_the_positive_class():
    r = np.random.default_rng(3)
    classes = ["no", "yes"]
    y = r.choice(classes, size=80)
    p = r.random(80)
    proba = np.column_stack([1 - p, p])
    got = score_all([METRICS["brier"], METRICS["pr_auc"]], y, None, proba, classes)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p, pos_label="yes"))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y == "yes", p))


def test_mape_by_hand():
    got = score_all([METRICS["mape"]], [1.0, 2.0, 4.0], np.array([1.5, 2.0, 3.0]), None, [])
    assert got["mape"] == pytest.approx((0.5 + 0 + 0.25) / 3)  # a fraction, not a percentage


def test_mape_with_a_zero_target_is_undefined_not_inf():
    y, pred = [0.0, 2.0, 4.0], np.array([0.1, 2.0, 3.0])
    with pytest.raises(MetricUndefined, match="a true value is 0"):
        score_all([METRICS["mape"]], y, pred, None, [])
    values, undefined = score_defined(task_metrics("regression"), y, pred, None, [])
    assert undefined == {"mape": "a true value is 0"}
    assert set(values) == {"rmse", "mae", "r2"}
    assert all(np.isfinite(v) for v in values.values())


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_ranking_metrics_are_undefined_without_every_class():
    classes = ["n", "y"]
    y = np.array(["n", "n", "n"])
    proba = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]])
    values, undefined = score_defined(
        task_metrics("classification", 2), y, np.array(["n", "y", "n"]), proba, classes
    )
    assert undefined == {"roc_auc": "no row of class 'y'", "pr_auc": "no row of class 'y'"}
    assert values["accuracy"] == pytest.approx(2 / 3) and "brier" in values


def test_scorer_negates_losses():
    r = np.random.default_rng(4)
    X = r.normal(size=(100, 2))
    y = np.where(X[:, 0] > 0, "pos", "neg")
    model = LogisticRegression().fit(X, y)
    assert Scorer(METRICS["log_loss"])(model, X, y) == pytest.approx(
        -score(METRICS["log_loss"], model, X, y)
    )
    assert Scorer(METRICS["roc_auc"])(model, X, y) == pytest.approx(
        score(METRICS["roc_auc"], model, X, y)
    )


def test_probability_metric_calls_the_model_once():
    class Counting(LogisticRegression):
        calls = 0

        def predict(self, X):
            Counting.calls += 1
            return super().predict(X)

    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = Counting().fit(X, ["a", "a", "b", "b"])
    score(METRICS["roc_auc"], model, X, ["a", "a", "b", "b"])
    assert Counting.calls == 0  # predict_proba only


def test_binary_values_match_sklearn():
    r = np.random.default_rng(0)
    classes = ["churn", "stay"]
    y = r.choice(classes, size=60)
    p = np.clip(r.random(60) * 0.6 + (y == "stay") * 0.3, 0.01, 0.99)
    proba = np.column_stack([1 - p, p])
    pred = np.where(p > 0.5, "stay", "churn")
    got = score_all(task_metrics("classification", 2), y, pred, proba, classes)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, pos_label="stay"))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y == "stay", p))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=classes))


def test_multiclass_values_match_sklearn():
    r = np.random.default_rng(1)
    classes = [0, 1, 2]
    y = np.repeat(classes, 10)
    raw = r.random((30, 3)) + np.eye(3)[y] * 0.8
    proba = raw / raw.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    got = score_all(task_metrics("classification", 3), y, pred, proba, classes)
    assert "f1" not in got
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_regression_values_by_hand():
    y = [1.0, 2.0, 3.0, 4.0]
    pred = np.array([1.0, 2.0, 3.0, 6.0])
    got = score_all(task_metrics("regression"), y, pred, None, [])
    assert got["mae"] == pytest.approx(0.5)
    assert got["rmse"] == pytest.approx(1.0)  # sqrt(mean([0, 0, 0, 4]))
    assert got["r2"] == pytest.approx(1 - 4 / 5)  # SS_res 4, SS_tot 5


def test_score_uses_model_classes_and_proba():
    r = np.random.default_rng(2)
    X = r.normal(size=(200, 2))
    y = np.where(X[:, 0] + 0.3 * r.normal(size=200) > 0, "pos", "neg")
    model = LogisticRegression().fit(X, y)
    auc = score(METRICS["roc_auc"], model, X, y)
    assert auc == pytest.approx(skm.roc_auc_score(y == "pos", model.predict_proba(X)[:, 1]))
    assert auc > 0.9
    assert score(METRICS["f1"], model, X, y) == pytest.approx(
        skm.f1_score(y, model.predict(X), pos_label="pos")
    )
