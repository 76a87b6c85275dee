"""A binary classifier's decision threshold: tuned on out-of-fold predictions, kept in the model.

A classifier answers its most probable class by default, which is the threshold 0.5 on the
positive class's probability. For metrics that score the labels and weigh the classes
unlike accuracy (f1, balanced accuracy, macro f1) another threshold is often better: on an
imbalanced target, the best f1 usually sits well below 0.5. `tune` picks it from the
search's out-of-fold (or validation) predictions of the chosen model, and the shipped model
is scikit-learn's `FixedThresholdClassifier` around the fitted pipeline, so `predict`,
batch scoring, serving, the evaluation and the gate all answer with that threshold.

`labels` is how every caller that already holds a model's probabilities turns them into
labels (serving asks a classifier once, for probabilities): the most probable class, or the
positive class at or above the model's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kfp_automl.runtime.metrics import Metric, MetricUndefined

# label metrics that weigh the classes unlike accuracy; for accuracy, the most probable
# class is already the best answer a calibrated model can give
THRESHOLD_METRICS = frozenset({"f1", "balanced_accuracy", "f1_macro"})
CANDIDATES = 201  # thresholds tried: quantiles of the out-of-fold probabilities, and 0.5
# the least gain over 0.5 (these metrics lie in [0, 1]) for a threshold to be kept: below
# it, the gain is about one row's worth on a small table, luck of the folds
MIN_GAIN = 0.002


@dataclass(frozen=True)
class Tuned:
    threshold: float  # the positive class's probability at or above which it is answered
    pos_label: Any  # the positive class: the second of the sorted classes
    score: float  # the metric at `threshold` on the rows it was tuned on
    at_half: float  # ... and for the most probable class (0.5)

    def describe(self, metric: str) -> str:
        return (
            f"decision threshold {self.threshold:.3f} on P({self.pos_label}): {metric}="
            f"{self.score:.4f} on the out-of-fold rows it was tuned on, vs {self.at_half:.4f} "
            "for the most probable class"
        )


def applies(metric: Metric, n_classes: int) -> bool:
    return metric.name in THRESHOLD_METRICS and n_classes == 2


def tune(y: np.ndarray, proba: np.ndarray, metric: Metric, classes: np.ndarray) -> Tuned | None:
    """The threshold on P(classes[1]) that scores best on (y, proba), or None when the metric
    does not take one, the target is not binary, or no threshold beats 0.5 by MIN_GAIN.

    Among thresholds that score alike, the one nearest 0.5 wins (the least change from the
    most probable class).
    """
    import sklearn

    if metric.name not in THRESHOLD_METRICS or len(classes) != 2:
        return None
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[1] != 2 or len(proba) != len(y) or not len(y):
        return None
    positive = proba[:, 1]
    candidates = np.union1d(np.quantile(positive, np.linspace(0.0, 1.0, CANDIDATES)), [0.5])
    labels_of = np.asarray(classes)

    def at(t: float) -> float:
        return float(metric.fn(y, labels_of[(positive >= t).astype(int)], proba, list(classes)))

    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        try:
            half = at(0.5)
            scores = np.array([at(t) for t in candidates])
        except (MetricUndefined, ValueError):
            return None
    best = scores.max() if metric.greater_is_better else scores.min()
    tied = candidates[np.isclose(scores, best, rtol=0, atol=1e-12)]
    threshold = float(tied[np.argmin(np.abs(tied - 0.5))])
    gain = float(best) - half if metric.greater_is_better else half - float(best)
    if gain < MIN_GAIN or threshold == 0.5:
        return None
    pos_label = labels_of[1].item() if isinstance(labels_of[1], np.generic) else labels_of[1]
    return Tuned(threshold, pos_label, float(best), half)


def with_threshold(model: Any, tuned: Tuned | None) -> Any:
    """`model` answering the positive class at or above `tuned.threshold` (unchanged for None)."""
    if tuned is None:
        return model
    from sklearn.model_selection import FixedThresholdClassifier

    return FixedThresholdClassifier(
        model, threshold=tuned.threshold, pos_label=tuned.pos_label, response_method="predict_proba"
    )


def threshold_of(model: Any) -> tuple[float, Any] | None:
    """(threshold, positive class) when `model` answers with a tuned threshold, else None."""
    from sklearn.model_selection import FixedThresholdClassifier

    if isinstance(model, FixedThresholdClassifier):
        if isinstance(model.threshold, str):  # "auto": the estimator's own rule
            return None
        return float(model.threshold), model.pos_label
    found = getattr(model, "decision_threshold", None)  # ServingModel keeps the wrapped one's
    return found if isinstance(found, tuple) else None


def inner(model: Any) -> Any:
    """The fitted model a FixedThresholdClassifier wraps (`model` itself otherwise)."""
    from sklearn.model_selection import FixedThresholdClassifier

    if isinstance(model, FixedThresholdClassifier):
        return getattr(model, "estimator_", model.estimator)
    return model


def labels(model: Any, proba: np.ndarray, classes: Any = None) -> np.ndarray:
    """`model`'s answers for its probabilities `proba`: what its `predict` returns."""
    classes = np.asarray(model.classes_ if classes is None else classes)
    found = threshold_of(model)
    if found is None or len(classes) != 2:
        return classes[np.argmax(proba, axis=1)]
    threshold, pos_label = found
    pos = int(np.flatnonzero(classes == pos_label)[0])
    return classes[np.where(np.asarray(proba)[:, pos] >= threshold, pos, 1 - pos)]
