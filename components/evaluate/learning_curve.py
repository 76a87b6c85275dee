"""Learning curve of the chosen configuration: score against training rows.

Unfitted clones of the evaluated pipeline are fitted on growing subsets of
train+valid with a 3-fold CV (at most 4 sizes x 3 folds = 12 fits), so the
report shows whether more data would likely help. Skipped, with the reason,
when the data is too small to say anything.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.runtime.metrics import Metric, Scorer

MIN_ROWS = 150  # fewer rows in train+valid: skipped
MAX_ROWS = 8000  # more rows are subsampled to this many (seeded), to keep it cheap
FOLDS = 3
FRACTIONS = (0.1, 0.33, 0.66, 1.0)  # of a training fold
MIN_FIT_ROWS = 50


@dataclass
class LearningCurve:
    metric: str = ""
    sizes: list[int] = field(default_factory=list)  # training rows per point
    train_mean: list[float] = field(default_factory=list)
    train_std: list[float] = field(default_factory=list)
    cv_mean: list[float] = field(default_factory=list)  # scored on the held-out fold
    cv_std: list[float] = field(default_factory=list)
    n_rows: int = 0  # rows the curve was computed on
    note: str = ""  # e.g. subsampling
    skipped: str = ""  # why there is no curve


def learning_curve(
    model: Any, data: pd.DataFrame | None, target: str, task: str, metric: Metric, seed: int = 0
) -> LearningCurve:
    """Fit clones of `model` on growing subsets of `data` (train+valid rows)."""
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.model_selection import learning_curve as sk_learning_curve

    if data is None:
        return LearningCurve(metric.name, skipped="no training rows were given to evaluate")
    n_all = len(data)
    if n_all < MIN_ROWS:
        return LearningCurve(
            metric.name,
            n_rows=n_all,
            skipped=f"train+valid has {n_all} rows; a learning curve needs at least {MIN_ROWS}",
        )
    note = ""
    if n_all > MAX_ROWS:
        data = data.sample(MAX_ROWS, random_state=seed)
        note = f"computed on a random {MAX_ROWS:,} of the {n_all:,} train+valid rows"
    X, y = data.drop(columns=[target]), data[target]
    if task == "classification":
        smallest = int(y.value_counts().min())
        if smallest < FOLDS:
            return LearningCurve(
                metric.name,
                n_rows=len(data),
                skipped=f"a class has {smallest} rows in train+valid; {FOLDS}-fold CV needs {FOLDS}",
            )
        cv = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    else:
        cv = KFold(FOLDS, shuffle=True, random_state=seed)
    fold_rows = len(data) * (FOLDS - 1) // FOLDS
    sizes = sorted({max(MIN_FIT_ROWS, int(f * fold_rows)) for f in FRACTIONS})
    sizes = [s for s in sizes if s <= fold_rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; failed fits become nan
        used, train_scores, cv_scores = sk_learning_curve(
            model,
            X,
            y,
            train_sizes=np.array(sizes),
            cv=cv,
            scoring=Scorer(metric),
            shuffle=True,
            random_state=seed,
            error_score=np.nan,
        )
    sign = 1.0 if metric.greater_is_better else -1.0  # Scorer negates losses
    train_scores, cv_scores = sign * train_scores, sign * cv_scores
    keep = ~(np.isnan(cv_scores).any(axis=1) | np.isnan(train_scores).any(axis=1))
    if not keep.any():
        return LearningCurve(metric.name, n_rows=len(data), skipped="every fit of the curve failed")
    if not keep.all():
        # e.g. a small subset missing a class
        dropped = ", ".join(str(s) for s in used[~keep])
        note = "; ".join(x for x in (note, f"sizes {dropped} left out: a fit failed") if x)
    return LearningCurve(
        metric=metric.name,
        sizes=[int(s) for s in used[keep]],
        train_mean=train_scores[keep].mean(axis=1).tolist(),
        train_std=train_scores[keep].std(axis=1).tolist(),
        cv_mean=cv_scores[keep].mean(axis=1).tolist(),
        cv_std=cv_scores[keep].std(axis=1).tolist(),
        n_rows=len(data),
        note=note,
    )
