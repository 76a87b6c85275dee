"""Named metrics with a known direction, chosen by task (FLAML-style).

A metric that has no value for the rows it is given (MAPE with a true value
of 0, ROC AUC when a class is absent) raises `MetricUndefined` instead of
returning inf or nan; `score_defined` collects those as reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from kfp_automl.errors import UserError


class MetricUndefined(ValueError):
    """The metric has no value for these rows; the message says why."""


@dataclass(frozen=True)
class Metric:
    name: str
    task: str  # "classification" or "regression"
    greater_is_better: bool
    needs_proba: bool
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None, Sequence[Any]], float]
    binary_only: bool = False

    @property
    def mode(self) -> str:
        """Ray Tune's `mode` for this metric."""
        return "max" if self.greater_is_better else "min"

    def better(self, a: float, b: float) -> bool:
        """True when score `a` is strictly better than `b`."""
        return a > b if self.greater_is_better else a < b


def _require_every_class(y, classes) -> None:
    missing = [c for c in classes if not np.any(y == c)]
    if missing:
        raise MetricUndefined(f"no row of class {missing[0]!r}")


def _roc_auc(y, pred, proba, classes):
    _require_every_class(y, classes)
    if len(classes) == 2:
        return skm.roc_auc_score(y, proba[:, 1])
    return skm.roc_auc_score(y, proba, multi_class="ovr", labels=list(classes))


def _pr_auc(y, pred, proba, classes):
    """Average precision of the positive class (binary) or its macro mean over classes."""
    _require_every_class(y, classes)
    if len(classes) == 2:
        return skm.average_precision_score(y == classes[1], proba[:, 1])
    onehot = np.column_stack([y == c for c in classes])
    return skm.average_precision_score(onehot, proba, average="macro")


def _brier(y, pred, proba, classes):
    """Binary: brier_score_loss on the positive class. Multiclass: mean over rows of the
    squared distance between the one-hot truth and the probabilities (in [0, 2])."""
    if len(classes) == 2:
        return skm.brier_score_loss(y == classes[1], proba[:, 1])
    onehot = np.column_stack([y == c for c in classes]).astype(float)
    return float(np.mean(np.sum((onehot - proba) ** 2, axis=1)))


def _mape(y, pred, proba, classes):
    """Mean absolute percentage error as a fraction (0.1 is 10 %); undefined when a true value is 0."""
    y = np.asarray(y, dtype=float)
    if np.any(y == 0):
        raise MetricUndefined("a true value is 0")
    return float(np.mean(np.abs((y - np.asarray(pred, dtype=float)) / y)))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            "accuracy", "classification", True, False, lambda y, p, _, c: skm.accuracy_score(y, p)
        ),
        Metric(
            "balanced_accuracy",
            "classification",
            True,
            False,
            lambda y, p, _, c: skm.balanced_accuracy_score(y, p),
        ),
        Metric(
            "f1",
            "classification",
            True,
            False,
            lambda y, p, _, c: skm.f1_score(y, p, pos_label=c[1]),
            binary_only=True,
        ),
        Metric(
            "f1_macro",
            "classification",
            True,
            False,
            lambda y, p, _, c: skm.f1_score(y, p, average="macro"),
        ),
        Metric("roc_auc", "classification", True, True, _roc_auc),
        Metric("pr_auc", "classification", True, True, _pr_auc),
        Metric(
            "log_loss",
            "classification",
            False,
            True,
            lambda y, _, pr, c: skm.log_loss(y, pr, labels=list(c)),
        ),
        Metric("brier", "classification", False, True, _brier),
        Metric(
            "rmse",
            "regression",
            False,
            False,
            lambda y, p, _, c: float(np.sqrt(skm.mean_squared_error(y, p))),
        ),
        Metric("mae", "regression", False, False, lambda y, p, _, c: skm.mean_absolute_error(y, p)),
        Metric("r2", "regression", True, False, lambda y, p, _, c: skm.r2_score(y, p)),
        Metric("mape", "regression", False, False, _mape),
    ]
}


def default_metric(task: str, n_classes: int = 0) -> str:
    if task == "regression":
        return "rmse"
    return "roc_auc" if n_classes == 2 else "f1_macro"


def resolve_metric(name: str, task: str, n_classes: int = 0) -> Metric:
    """Return the metric called `name` (empty: the task's default), checked against the task."""
    name = name or default_metric(task, n_classes)
    metric = METRICS.get(name)
    if metric is None:
        raise UserError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    if metric.task != task:
        choices = ", ".join(n for n, m in METRICS.items() if m.task == task)
        raise UserError(f"metric {name!r} does not fit a {task} task; choose one of {choices}")
    if metric.binary_only and n_classes != 2:
        raise UserError(f"metric {name!r} needs a binary target; this one has {n_classes} classes")
    return metric


def task_metrics(task: str, n_classes: int = 0) -> list[Metric]:
    """Every metric that applies to the task (for holdout evaluation)."""
    return [
        m for m in METRICS.values() if m.task == task and not (m.binary_only and n_classes != 2)
    ]


def score(metric: Metric, model: Any, X, y) -> float:
    """Score a fitted sklearn estimator on (X, y) with `metric` (one model call)."""
    proba = model.predict_proba(X) if metric.needs_proba else None
    classes = list(getattr(model, "classes_", []))
    # a metric of probabilities does not read the predictions: an empty array stands for them
    pred = np.empty(0) if metric.needs_proba else np.asarray(model.predict(X))
    return float(metric.fn(np.asarray(y), pred, proba, classes))


@dataclass(frozen=True)
class Scorer:
    """`metric` as an sklearn scorer (estimator, X, y) -> float, greater is better.

    Loss metrics are negated, as sklearn's `neg_*` scorers are.
    """

    metric: Metric

    def __call__(self, estimator: Any, X, y) -> float:
        value = score(self.metric, estimator, X, y)
        return value if self.metric.greater_is_better else -value


def score_all(metrics: list[Metric], y, pred, proba, classes) -> dict[str, float]:
    """Evaluate several metrics on already computed predictions (undefined ones raise)."""
    y = np.asarray(y)
    return {m.name: float(m.fn(y, pred, proba, classes)) for m in metrics}


def score_defined(
    metrics: list[Metric], y, pred, proba, classes
) -> tuple[dict[str, float], dict[str, str]]:
    """Like `score_all`, but a metric without a value lands in the second dict with the reason."""
    y = np.asarray(y)
    values, undefined = {}, {}
    for m in metrics:
        try:
            values[m.name] = float(m.fn(y, pred, proba, classes))
        except MetricUndefined as exc:
            undefined[m.name] = str(exc)
    return values, undefined
