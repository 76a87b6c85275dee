"""Learning curve of the chosen configuration: score against training rows.

Unfitted clones of the evaluated pipeline are fitted on growing subsets of
train+valid with a 3-fold CV (at most 4 sizes x 3 folds = 12 fits), so the
report shows whether more data would likely help. Skipped, with the reason,
when the data is too small to say anything.

It is time-boxed: the sizes are computed smallest first, and a size whose
fits would end past `ALLOWANCE_S` (estimated from the size before it) is left
out, saying so; a model that took longer than the allowance to refit gets no
curve at all. Small fits cost more than their share of rows (boosting rounds,
encoders' own folds), so no estimate from the refit alone sizes it well.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
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
ALLOWANCE_S = 6.0  # the curve's wall clock: sizes that would end past it are left out


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


def _expected_s(last: tuple[int, float], size: int, fit_s: float, n_fit: int) -> float:
    """What the next size's fits should take: a line through the last size's fits and the
    refit (`fit_s` on `n_fit` rows), or proportional to rows when the refit is unknown."""
    last_size, last_s = last
    if fit_s <= 0 or n_fit <= last_size:
        return last_s * size / last_size
    per_fit = last_s / FOLDS
    slope = max(0.0, (fit_s - per_fit) / (n_fit - last_size))
    return FOLDS * (per_fit + slope * (size - last_size))


def learning_curve(
    model: Any,
    data: pd.DataFrame | None,
    target: str,
    task: str,
    metric: Metric,
    seed: int = 0,
    *,
    fit_s: float = 0.0,
    allowance_s: float = ALLOWANCE_S,
    clock: Callable[[], float] = time.monotonic,
) -> LearningCurve:
    """Fit clones of `model` on growing subsets of `data` (train+valid rows).

    `fit_s`: what fitting `model` on all of `data` took (0: unknown); above `allowance_s`
    the curve is skipped.
    """
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold

    if data is None:
        return LearningCurve(metric.name, skipped="no training rows were given to evaluate")
    n_all = len(data)
    if n_all < MIN_ROWS:
        return LearningCurve(
            metric.name,
            n_rows=n_all,
            skipped=f"train+valid has {n_all} rows; a learning curve needs at least {MIN_ROWS}",
        )
    if fit_s > allowance_s:
        return LearningCurve(
            metric.name,
            n_rows=n_all,
            skipped=(
                f"the model took {fit_s:.0f}s to fit on {n_all:,} rows, more than the "
                f"curve's {allowance_s:.0f}s allowance"
            ),
        )
    notes = []
    if n_all > MAX_ROWS:
        data = data.sample(MAX_ROWS, random_state=seed)
        notes.append(f"computed on a random {MAX_ROWS:,} of the {n_all:,} train+valid rows")
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
    folds = list(cv.split(X, y))
    rng = np.random.default_rng(seed)
    # each fold's training rows in one seeded order: a size takes the first rows of it
    orders = [rng.permutation(train) for train, _ in folds]
    fold_rows = min(len(train) for train, _ in folds)
    sizes = sorted({max(MIN_FIT_ROWS, int(f * fold_rows)) for f in FRACTIONS})
    sizes = [s for s in sizes if s <= fold_rows]
    scorer = Scorer(metric)
    model = clone(model)
    final = getattr(model, "steps", [[None, model]])[-1][1]
    if hasattr(final, "estimators") and "n_jobs" in final.get_params(deep=False):
        # its members' fits in worker processes: for the curve's small fits the processes'
        # start and the data's pickling cost more than the parallel fits save
        final.set_params(n_jobs=1)
    sign = 1.0 if metric.greater_is_better else -1.0  # Scorer negates losses
    started = clock()
    used, train_scores, cv_scores, failed = [], [], [], []
    last: tuple[int, float] | None = None  # (size, seconds) of the last size computed
    for size in sizes:
        if last is not None:
            expected = _expected_s(last, size, fit_s, n_all)
            if clock() - started + expected > allowance_s:
                left = ", ".join(f"{s:,}" for s in sizes[sizes.index(size) :])
                notes.append(f"sizes {left} left out: past the {allowance_s:.0f}s allowance")
                break
        size_started = clock()
        row_train, row_cv = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; failed fits become nan
            for order, (_, held) in zip(orders, folds, strict=True):
                rows = order[:size]
                try:
                    fitted = clone(model).fit(X.iloc[rows], y.iloc[rows])
                    row_train.append(sign * scorer(fitted, X.iloc[rows], y.iloc[rows]))
                    row_cv.append(sign * scorer(fitted, X.iloc[held], y.iloc[held]))
                except Exception:  # e.g. a small subset missing a class
                    row_train.append(np.nan)
                    row_cv.append(np.nan)
        last = (size, clock() - size_started)
        if np.isnan(row_train).any() or np.isnan(row_cv).any():
            failed.append(size)
            continue
        used.append(size)
        train_scores.append(row_train)
        cv_scores.append(row_cv)
    if failed:
        notes.append(f"sizes {', '.join(str(s) for s in failed)} left out: a fit failed")
    if not used:
        return LearningCurve(metric.name, n_rows=len(data), skipped="every fit of the curve failed")
    if len(used) < 2:
        took = f" in {last[1]:.1f}s" if last is not None else ""
        return LearningCurve(
            metric.name,
            n_rows=len(data),
            skipped=(
                f"only its smallest size ({used[0]:,} rows, {FOLDS} fits{took}) fitted within "
                f"the {allowance_s:.0f}s allowance"
            ),
        )
    train_arr, cv_arr = np.array(train_scores), np.array(cv_scores)
    return LearningCurve(
        metric=metric.name,
        sizes=[int(s) for s in used],
        train_mean=train_arr.mean(axis=1).tolist(),
        train_std=train_arr.std(axis=1).tolist(),
        cv_mean=cv_arr.mean(axis=1).tolist(),
        cv_std=cv_arr.std(axis=1).tolist(),
        n_rows=len(data),
        note="; ".join(notes),
    )
