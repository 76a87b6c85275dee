"""Bootstrap confidence intervals for holdout metrics.

Resamples the holdout rows with replacement and recomputes each metric on the
predictions and probabilities already made, so the model is never called
again. An interval is reported missing, with the reason, when the holdout is
too small or the metric is undefined (a class absent) in many resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sklearn

from kfp_automl.runtime.metrics import Metric

MIN_ROWS = 30  # fewer holdout rows: no interval at all
MAX_UNDEFINED_SHARE = 0.1  # metric undefined in more resamples than this: no interval
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A percentile interval, or the reason there is none."""

    low: float | None = None
    high: float | None = None
    reason: str = ""  # why the interval is missing (empty when it is defined)
    n_resamples: int = 0  # resamples the percentiles were taken over

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None


def _encode(y: np.ndarray, pred, classes: Sequence[Any]):
    """Class labels as integer codes (sklearn's metrics are much faster on ints than on strings).

    Returns (y, pred, classes, encoded); unchanged when there are no classes or a
    label is not one of them.
    """
    if not len(classes):
        return y, pred, list(classes), False
    y_codes = pd.Categorical(y, categories=list(classes)).codes
    pred_codes = pd.Categorical(pred, categories=list(classes)).codes
    if (y_codes < 0).any() or (pred_codes < 0).any():
        return y, pred, list(classes), False
    codes = list(range(len(classes)))
    return y_codes.astype(np.int64), pred_codes.astype(np.int64), codes, True


def bootstrap_intervals(
    metrics: Sequence[Metric],
    y,
    pred,
    proba,
    classes: Sequence[Any],
    n_bootstrap: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """A `level` percentile interval per metric from `n_bootstrap` resamples of the rows.

    `pred`/`proba` are the model's outputs for the rows of `y`; metrics
    undefined on the full rows should not be passed.
    """
    y = np.asarray(y)
    n = len(y)
    if n_bootstrap <= 0:
        return {m.name: Interval(reason="bootstrap turned off (n_bootstrap=0)") for m in metrics}
    if n < MIN_ROWS:
        reason = f"the holdout has {n} rows; an interval needs at least {MIN_ROWS}"
        return {m.name: Interval(reason=reason) for m in metrics}
    y_enc, pred_enc, classes_enc, encoded = _encode(y, np.asarray(pred), classes)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    values: dict[str, list[float]] = {m.name: [] for m in metrics}
    failures: dict[str, dict[str, int]] = {m.name: {} for m in metrics}
    # sklearn checks every argument of every call; 200 resamples x 8 metrics are 1,600 calls
    # on the arrays made just above: skipping the checks makes it 3x faster, same values
    with (
        warnings.catch_warnings(),
        sklearn.config_context(skip_parameter_validation=True, assume_finite=True),
    ):
        warnings.simplefilter("ignore")  # sklearn's notes on classes absent from a resample
        for idx in draws:
            y_b, pred_b = y_enc[idx], pred_enc[idx]
            proba_b = None if proba is None else proba[idx]
            for m in metrics:
                try:
                    v = float(m.fn(y_b, pred_b, proba_b, classes_enc))
                except ValueError as exc:  # MetricUndefined, or sklearn's own "only one class"
                    why = str(exc).split("\n")[0]
                    failures[m.name][why] = failures[m.name].get(why, 0) + 1
                    continue
                if np.isfinite(v):
                    values[m.name].append(v)
                else:
                    failures[m.name]["not finite"] = failures[m.name].get("not finite", 0) + 1
    tail = (1 - level) / 2 * 100
    out = {}
    for m in metrics:
        got, failed = values[m.name], sum(failures[m.name].values())
        if failed > MAX_UNDEFINED_SHARE * n_bootstrap:
            why = max(failures[m.name], key=failures[m.name].get)
            if encoded and why.startswith("no row of class"):
                # name the real class, not its integer code
                code = int(why.rsplit(" ", 1)[1])
                why = f"no row of class {classes[code]!r}"
            out[m.name] = Interval(
                reason=f"undefined in {failed} of {n_bootstrap} resamples ({why}): "
                "the holdout is too small for this metric",
                n_resamples=len(got),
            )
            continue
        low, high = np.percentile(got, [tail, 100 - tail])
        out[m.name] = Interval(float(low), float(high), n_resamples=len(got))
    return out
