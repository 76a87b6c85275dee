"""Holdout metrics per slice of one column, from predictions already made.

A slice is flagged when its primary metric is much worse than on all rows:
by more than RELATIVE_GAP of the overall value (ABSOLUTE_GAP for r2, whose
scale has no natural zero), and only when the slice has at least
MIN_FLAG_ROWS rows, below which the difference is mostly noise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.metrics import Metric, MetricUndefined

RELATIVE_GAP = 0.10
ABSOLUTE_GAP = 0.05  # for r2
MIN_FLAG_ROWS = 30
MAX_SLICES = 20  # the most frequent values; the rest are pooled as "(other)"
NUMERIC_BINS = 4  # a numeric column with many values is cut into quartiles
MISSING = "(missing)"
OTHER = "(other)"


@dataclass
class Slice:
    value: str
    rows: int
    score: float | None  # None when the metric is undefined on the slice
    undefined: str = ""  # why there is no score
    flagged: bool = False


@dataclass
class SliceReport:
    column: str = ""
    metric: str = ""
    overall: float | None = None
    slices: list[Slice] = field(default_factory=list)
    skipped: str = ""

    @property
    def flagged(self) -> list[Slice]:
        return [s for s in self.slices if s.flagged]


def default_slice_column(schema: Schema) -> str:
    """The categorical feature with the fewest (>= 2) categories; empty when there is none."""
    cats = [f for f in schema.features if not f.numeric and f.n_categories >= 2]
    if not cats:
        return ""
    return min(cats, key=lambda f: f.n_categories).name  # ties: the first in the schema


def much_worse(metric: Metric, value: float, overall: float) -> bool:
    gap = value - overall if metric.greater_is_better else overall - value  # < 0: worse
    if metric.name == "r2":
        return gap < -ABSOLUTE_GAP
    return gap < -RELATIVE_GAP * abs(overall)


def _slice_values(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's slice name, and the slices in display order."""
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and column.nunique() > MAX_SLICES:
        bins = pd.qcut(column, NUMERIC_BINS, duplicates="drop")
        values = bins.astype(str).where(bins.notna(), MISSING)
        order = [str(c) for c in bins.cat.categories] + [MISSING]  # low to high
    else:
        values = column.astype(str).where(column.notna(), MISSING)
        if values.nunique() > MAX_SLICES:
            top = values.value_counts().index[: MAX_SLICES - 1]
            values = values.where(values.isin(top), OTHER)
        order = list(values.value_counts().index)  # most rows first
        if numeric:
            order = sorted(order, key=lambda v: (v == MISSING, float(v) if v != MISSING else 0))
    present = set(values)
    return values.to_numpy(), [v for v in order if v in present]


def slice_metrics(
    column: pd.Series | None,
    name: str,
    metric: Metric,
    overall: float | None,
    y,
    pred,
    proba,
    classes: list,
) -> SliceReport:
    """`metric` on the rows of each value of `column` (aligned with y/pred/proba)."""
    if column is None:
        return SliceReport(name, metric.name, overall, skipped=f"{name!r} is not an input column")
    if overall is None:
        return SliceReport(name, metric.name, None, skipped=f"{metric.name} is not defined")
    values, order = _slice_values(column.reset_index(drop=True))
    y, pred = np.asarray(y), np.asarray(pred)
    out = []
    for value in order:
        mask = values == value
        p = proba[mask] if proba is not None else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class absent from the slice
                score = float(metric.fn(y[mask], pred[mask], p, classes))
            why = ""
        except (MetricUndefined, ValueError) as exc:
            score, why = None, str(exc).split("\n")[0]
        flagged = (
            score is not None
            and int(mask.sum()) >= MIN_FLAG_ROWS
            and much_worse(metric, score, overall)
        )
        out.append(Slice(str(value), int(mask.sum()), score, why, flagged))
    return SliceReport(name, metric.name, overall, out)
