"""The Ray Tune trainable: fit one configuration on every split, score it, report.

Iterative families (boosting rounds, trees) grow their budget in steps and
report after each, so ASHA can stop a poor trial early; the others report
once, at the last step. The final report carries the trial's predictions on
the kept evaluation rows (for ensemble selection) and where it ran.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import numpy as np

from kfp_automl.components.tune.families import FAMILIES, Family, build_model, family_params
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.metrics import METRICS

STEPS = (1, 3, 9)  # budget steps: a step s runs s/9 of the family's rounds or trees
MAX_STEP = STEPS[-1]


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


def grow(est: Any, family: Family, X, y, rounds: int | None) -> None:
    """Fit `est`, continuing from what it already has when the family is iterative."""
    if rounds is None:
        est.fit(X, y)
    elif family.name == "lightgbm":
        previous = est.booster_ if hasattr(est, "booster_") else None
        done = previous.current_iteration() if previous is not None else 0
        est.set_params(n_estimators=rounds - done)
        est.fit(X, y, init_model=previous)
    else:
        est.set_params(warm_start=True, **{family.budget_param: rounds})
        est.fit(X, y)


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
) -> None:
    """Fit `config` on each split's fit rows, score the split's score rows, report per budget."""
    from ray import tune

    X, y, splits = data
    task = schema.task
    metric = METRICS[metric_name]
    family = FAMILIES[config["family"]]
    classes = np.unique(y.to_numpy()) if task == "classification" else np.array([])
    started = time.perf_counter()
    folds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from linear models
        for fit_rows, score_rows in splits:
            pipe = build_model(schema, config, seed)
            pre, est = pipe[:-1], pipe[-1]
            y_fit = y.iloc[fit_rows].to_numpy()
            Xt_fit = pre.fit_transform(X.iloc[fit_rows], y_fit)
            Xt_score = pre.transform(X.iloc[score_rows])
            folds.append((est, Xt_fit, y_fit, Xt_score, y.iloc[score_rows].to_numpy()))
        prep_s = time.perf_counter() - started  # building and fitting the preprocessing
        params = {**family.initial, **family_params(config)}
        where = node_info()
        for step, rounds in budgets(family, params):
            outputs, scores = [], []
            for est, Xt_fit, y_fit, Xt_score, y_score in folds:
                grow(est, family, Xt_fit, y_fit, rounds)
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
