"""The Ray Tune trainable: fit one configuration on every split, score it, report.

Iterative families (boosting rounds, trees) grow their budget in steps and
report after each, so ASHA can stop a poor trial early; the others report
once, at the last step. The final report carries the trial's predictions on
the kept evaluation rows (for ensemble selection) and where it ran.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from kfp_automl.components.tune.families import (
    FAMILIES,
    PREPROCESSING,
    Family,
    build_model,
    family_params,
)
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.runtime.metrics import METRICS

STEPS = (1, 3, 9)  # budget steps: a step s runs s/9 of the family's rounds or trees
MAX_STEP = STEPS[-1]
# Transformed splits kept per trial process: at most 256 MiB by default (4 trials on a worker
# pod of 8 GiB: 1 GiB), KFP_AUTOML_PREP_CACHE_MB sets it, 0 turns the cache off.
PREP_CACHE_ENV = "KFP_AUTOML_PREP_CACHE_MB"


def prep_cache_bytes() -> int:
    value = os.environ.get(PREP_CACHE_ENV, "256")
    try:
        mib = float(value)
    except ValueError:
        mib = -1.0
    if not mib >= 0:  # also nan
        raise UserError(f"{PREP_CACHE_ENV} must be a number of MiB (0 turns it off), got {value!r}")
    return int(mib * 1024 * 1024)


class PrepCache:
    """Transformed splits kept in a trial worker between trials (Tune reuses the worker).

    The preprocessing depends only on the split, the seed and two searched choices (category
    encoding, numeric scaling), so trials that share them share one fit of it. An entry is
    (fitted-rows matrix, scored-rows matrix), least recently used out first; an entry larger
    than a quarter of the limit is not kept. A new search (a new plan id) empties it.
    """

    def __init__(self, limit_bytes: int | None = None):
        self._limit = limit_bytes  # None: KFP_AUTOML_PREP_CACHE_MB, read at the first use
        self.entries: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self.size = 0
        self.plan = ""
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = prep_cache_bytes()
        return self._limit

    @staticmethod
    def nbytes(matrix: Any) -> int:
        if hasattr(matrix, "indptr"):  # scipy sparse
            return int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)
        return int(getattr(matrix, "nbytes", 0))

    def get(self, plan: str, key: tuple, make: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        if not plan or self.limit <= 0:
            return make()
        with self.lock:
            if plan != self.plan:
                self.entries.clear()
                self.size, self.plan = 0, plan
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                return hit
        value = make()
        size = sum(self.nbytes(m) for m in value)
        with self.lock:
            self.misses += 1
            if plan == self.plan and size <= self.limit // 4 and key not in self.entries:
                self.entries[key] = value
                self.size += size
                while self.size > self.limit:
                    _, old = self.entries.popitem(last=False)
                    self.size -= sum(self.nbytes(m) for m in old)
        return value


PREP_CACHE = PrepCache()


def budgets(family: Family, params: dict[str, Any]) -> list[tuple[int, int | None]]:
    """(step, rounds) pairs to report at; a non-iterative family reports once at MAX_STEP."""
    if family.budget_param is None:
        return [(MAX_STEP, None)]
    full = int(params[family.budget_param])
    out: list[tuple[int, int | None]] = []
    for step in STEPS:
        rounds = max(1, math.ceil(full * step / MAX_STEP))
        if out and rounds <= (out[-1][1] or 0):
            continue
        out.append((step, rounds))
    out[-1] = (MAX_STEP, full)
    return out


def grow(est: Any, family: Family, X, y, rounds: int | None) -> Any:
    """Fit `est` to `rounds`, continuing from what it already has when the family is iterative.

    Returns the fitted estimator: `est` itself, or for CatBoost (whose fitted models take no new
    parameters) a new one that continues from it.
    """
    if rounds is None:
        est.fit(X, y)
    elif family.name == "catboost":
        done = est.tree_count_ if est.is_fitted() else 0
        if not done:
            est.set_params(iterations=rounds)
            est.fit(X, y)
            return est
        from sklearn.base import clone

        more = clone(est).set_params(iterations=rounds - done)
        more.fit(X, y, init_model=est)
        return more
    elif family.name == "lightgbm":
        previous = est.booster_ if hasattr(est, "booster_") else None
        done = previous.current_iteration() if previous is not None else 0
        est.set_params(n_estimators=rounds - done)
        est.fit(X, y, init_model=previous)
    else:
        est.set_params(warm_start=True, **{family.budget_param: rounds})
        est.fit(X, y)
    return est


def predict_output(est: Any, X, task: str, classes: np.ndarray):
    """(pred, proba): classifiers predict the most probable class, as serving does."""
    if task == "classification":
        proba = np.asarray(est.predict_proba(X), dtype=float)
        return classes[np.argmax(proba, axis=1)], proba
    return np.asarray(est.predict(X), dtype=float), None


def node_info() -> dict[str, str]:
    import ray

    return {
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": str(os.getpid()),
    }


def train_fn(
    config: dict[str, Any],
    data,
    schema: Schema,
    metric_name: str,
    seed: int,
    keep: np.ndarray,
    plan_id: str = "",
) -> None:
    """Fit `config` on each split's fit rows, score the split's score rows, report per budget.

    `plan_id` names the search's data and splits: with it, a split's preprocessing is fitted
    once per worker for each choice of encoding and scaling (PREP_CACHE), not once per trial.
    """
    from ray import tune

    X, y, splits = data
    task = schema.task
    metric = METRICS[metric_name]
    family = FAMILIES[config["family"]]
    classes = np.unique(y.to_numpy()) if task == "classification" else np.array([])
    started = time.perf_counter()
    params = {**family.initial, **family_params(config)}
    choices = tuple(params.get(k) for k in PREPROCESSING)
    folds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from linear models
        for i, (fit_rows, score_rows) in enumerate(splits):
            pipe = build_model(schema, config, seed)
            pre, est = pipe[:-1], pipe[-1]
            y_fit = y.iloc[fit_rows].to_numpy()

            def transform(pre=pre, fit_rows=fit_rows, score_rows=score_rows, y_fit=y_fit):
                return pre.fit_transform(X.iloc[fit_rows], y_fit), pre.transform(X.iloc[score_rows])

            Xt_fit, Xt_score = PREP_CACHE.get(plan_id, (i, seed, *choices), transform)
            folds.append((est, Xt_fit, y_fit, Xt_score, y.iloc[score_rows].to_numpy()))
        prep_s = time.perf_counter() - started  # building and fitting the preprocessing
        where = node_info()
        for step, rounds in budgets(family, params):
            outputs, scores = [], []
            for i, (est, Xt_fit, y_fit, Xt_score, y_score) in enumerate(folds):
                est = grow(est, family, Xt_fit, y_fit, rounds)
                folds[i] = (est, Xt_fit, y_fit, Xt_score, y_score)
                pred, proba = predict_output(est, Xt_score, task, classes)
                outputs.append(proba if proba is not None else pred)
                scores.append(float(metric.fn(y_score, pred, proba, list(classes))))
            result = {
                "score": float(np.mean(scores)),
                "step": step,
                "fit_time_s": time.perf_counter() - started,
                "prep_time_s": prep_s,
                "final": step == MAX_STEP,
                "at": time.time(),
                **where,
            }
            if step == MAX_STEP:
                result["preds"] = np.concatenate(outputs)[keep].astype(np.float32)
            tune.report(result)
