"""Named metrics with a known direction, chosen by task (FLAML-style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from components.common.errors import UserError


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


def _roc_auc(y, pred, proba, classes):
    if len(classes) == 2:
        return skm.roc_auc_score(y, proba[:, 1])
    return skm.roc_auc_score(y, proba, multi_class="ovr", labels=list(classes))


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
        Metric(
            "log_loss",
            "classification",
            False,
            True,
            lambda y, _, pr, c: skm.log_loss(y, pr, labels=list(c)),
        ),
        Metric(
            "rmse",
            "regression",
            False,
            False,
            lambda y, p, _, c: float(np.sqrt(skm.mean_squared_error(y, p))),
        ),
        Metric("mae", "regression", False, False, lambda y, p, _, c: skm.mean_absolute_error(y, p)),
        Metric("r2", "regression", True, False, lambda y, p, _, c: skm.r2_score(y, p)),
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
    """Score a fitted sklearn estimator on (X, y) with `metric`."""
    pred = model.predict(X)
    proba = model.predict_proba(X) if metric.needs_proba else None
    classes = list(getattr(model, "classes_", []))
    return float(metric.fn(np.asarray(y), pred, proba, classes))


def score_all(metrics: list[Metric], y, pred, proba, classes) -> dict[str, float]:
    """Evaluate several metrics on already computed predictions."""
    y = np.asarray(y)
    return {m.name: float(m.fn(y, pred, proba, classes)) for m in metrics}
