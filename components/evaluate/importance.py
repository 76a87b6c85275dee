"""Which input columns the model relies on: permutation importance and partial dependence.

Both work on the input columns (before one-hot encoding), on holdout rows,
through the whole fitted pipeline.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.metaestimators import available_if

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.metrics import Metric, Scorer

N_REPEATS = 3
MAX_IMPORTANCE_ROWS = 2000  # permutation importance scores at most this many holdout rows
PD_ROWS = 300  # partial dependence averages over this many holdout rows
PD_GRID = 20  # grid points for a numeric feature
PD_MAX_CATEGORIES = 20  # most frequent categories shown for a categorical feature
PD_FEATURES = 3


@dataclass
class Importance:
    metric: str = ""
    features: list[str] = field(default_factory=list)  # most important first
    mean: list[float] = field(default_factory=list)  # drop in the metric when shuffled
    std: list[float] = field(default_factory=list)
    n_rows: int = 0
    skipped: str = ""

    def top(self, k: int) -> list[str]:
        return self.features[:k]


@dataclass
class Dependence:
    feature: str
    kind: str  # numeric or categorical
    grid: list  # feature values (numbers or category names)
    outputs: list[str]  # what each row of `average` is, e.g. "P(yes)"
    average: list[list[float]]  # len(outputs) x len(grid)


def inspection_model(model: Any, X: pd.DataFrame, schema: Schema) -> Any:
    """`model` for the many calls of permutation importance and partial dependence.

    Through sklearn most of a call on a few hundred rows is fixed cost (the
    ColumnTransformer's column selection and checks, again per ensemble member),
    and these two diagnostics call the model dozens of times. The serving path
    (`kfp_automl/runtime/fast_path.serving_model`) answers the same with less of
    it; it is used only when it gives exactly the model's answers on `X`, the rows
    whose values the diagnostics permute and vary, otherwise the model itself is.
    """
    from kfp_automl.runtime.fast_path import serving_model

    if len(X) == 0:
        return model
    fast = serving_model(model, schema, probe=X)
    return model if fast is model else _Answering(model, fast)


class _Answering(BaseEstimator):
    """A fitted estimator to sklearn's inspection tools: `model`'s tags and classes,
    `fast`'s answers."""

    def __init__(self, model: Any = None, fast: Any = None):
        self.model, self.fast = model, fast

    def __sklearn_tags__(self):
        return self.model.__sklearn_tags__()

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X, y=None):
        raise TypeError("an already fitted model; it is not refitted here")

    @property
    def classes_(self):
        return self.model.classes_

    def predict(self, X):
        return self.fast.predict(X)

    @available_if(lambda self: hasattr(self.model, "predict_proba"))
    def predict_proba(self, X):
        return self.fast.predict_proba(X)


def permutation_importance(
    model: Any, X: pd.DataFrame, y, metric: Metric, seed: int = 0
) -> Importance:
    """Drop in `metric` on (X, y) when each input column is shuffled (N_REPEATS times)."""
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    if len(X) < 2:
        return Importance(metric.name, skipped=f"the holdout has {len(X)} rows")
    max_samples = min(1.0, MAX_IMPORTANCE_ROWS / len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sk_permutation_importance(
            model,
            X,
            np.asarray(y),
            scoring=Scorer(metric),
            n_repeats=N_REPEATS,
            random_state=seed,
            max_samples=max_samples,
        )
    order = np.argsort(-result.importances_mean, kind="stable")
    return Importance(
        metric=metric.name,
        features=[str(X.columns[i]) for i in order],
        mean=[float(result.importances_mean[i]) for i in order],
        std=[float(result.importances_std[i]) for i in order],
        n_rows=int(round(max_samples * len(X))),
    )


def _outputs(model: Any, task: str, target: str) -> list[str]:
    if task != "classification":
        return [f"predicted {target}"]
    classes = list(model.classes_)
    return [f"P({classes[1]})"] if len(classes) == 2 else [f"P({c})" for c in classes]


def _numeric_grid(values: np.ndarray) -> np.ndarray:
    """Every distinct value when there are few, else PD_GRID points from the 5th to 95th percentile."""
    distinct = np.unique(values)
    if len(distinct) <= PD_GRID:
        return distinct
    low, high = np.percentile(values, [5, 95])
    return np.unique(np.linspace(low, high, PD_GRID))


def partial_dependence(
    model: Any,
    X: pd.DataFrame,
    features: list[str],
    schema: Schema,
    seed: int = 0,
) -> list[Dependence]:
    """Average prediction (class probabilities) as each feature in `features` is varied.

    Categorical features are varied over their most frequent observed categories;
    numeric ones over PD_GRID points between their 5th and 95th percentiles.
    """
    from sklearn.inspection import partial_dependence as sk_partial_dependence

    kinds = {f.name: f.kind for f in schema.features}
    rows = X.sample(min(PD_ROWS, len(X)), random_state=seed) if len(X) else X
    rows = rows.copy()
    for col in rows.columns:  # sklearn refuses integer columns (implicit rounding)
        if kinds.get(col) == "numeric":
            rows[col] = rows[col].astype(float)
    outputs = _outputs(model, schema.task, schema.target)
    out = []
    for feature in features:
        values = rows[feature].dropna()
        if values.empty:
            continue
        kind = kinds.get(feature, "numeric")
        # the grid is ours: sklearn's own takes percentiles of a column with missing values as nan
        if kind == "categorical":
            cats = values.astype(str).value_counts().index[:PD_MAX_CATEGORIES].tolist()
            kwargs = {"categorical_features": [feature], "custom_values": {feature: cats}}
        else:
            kwargs = {"custom_values": {feature: _numeric_grid(values.to_numpy(dtype=float))}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sk_partial_dependence(
                model,
                rows,
                [feature],
                kind="average",
                method="brute",
                **kwargs,
            )
        grid = result["grid_values"][0]
        out.append(
            Dependence(
                feature=feature,
                kind=kind,
                grid=[str(g) for g in grid] if kind == "categorical" else grid.tolist(),
                outputs=outputs,
                average=result["average"].tolist(),
            )
        )
    return out
