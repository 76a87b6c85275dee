"""What the evaluate step found: the holdout evaluation and the diagnostics around it.

Made by evaluate.py; read by report.py (the HTML report) and model_card.py (the card and
the Markdown summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfp_automl.components.evaluate.bootstrap import Interval
from kfp_automl.components.evaluate.importance import Dependence, Importance
from kfp_automl.components.evaluate.learning_curve import LearningCurve
from kfp_automl.components.evaluate.slices import SliceReport


@dataclass
class Evaluation:
    task: str
    metric: str  # the primary metric
    metrics: dict[str, float]  # every metric of the task that is defined on the holdout
    n_test: int
    labels: list = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    roc: dict[str, list[float]] | None = None  # fpr, tpr, threshold (binary only)
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value
    intervals: dict[str, Interval] = field(default_factory=dict)
    n_bootstrap: int = 0
    seed: int = 0
    # the holdout truth and the model's outputs, for plots and slices
    y: np.ndarray | None = field(default=None, repr=False, compare=False)
    pred: np.ndarray | None = field(default=None, repr=False, compare=False)
    proba: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def primary_score(self) -> float:
        """The primary metric on the holdout (nan when it is undefined there)."""
        return self.metrics.get(self.metric, float("nan"))

    def per_class(self) -> list[dict[str, Any]]:
        """Rows, precision, recall and F1 of each class, from the confusion matrix."""
        cm = np.asarray(self.confusion, dtype=float)
        out = []
        for i, label in enumerate(self.labels):
            tp, actual, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
            precision = tp / predicted if predicted else 0.0
            recall = tp / actual if actual else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out.append(
                {
                    "class": label,
                    "rows": int(actual),
                    "precision": float(precision),
                    "recall": float(recall),
                    "f1": float(f1),
                }
            )
        return out


@dataclass
class Diagnostics:
    importance: Importance
    dependence: list[Dependence]
    learning: LearningCurve
    slices: SliceReport
    dependence_skipped: str = ""
