"""Holdout evaluation: metrics with bootstrap intervals, and the diagnostics the report shows.

`evaluate` calls the model once on the holdout; everything else about the
holdout (intervals, curves, slices) is computed from those predictions.
`diagnose` adds what needs the model again: permutation importance, partial
dependence and the learning curve. `run` goes from files to files.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_curve

from kfp_automl.components.evaluate.bootstrap import bootstrap_intervals
from kfp_automl.components.evaluate.importance import (
    PD_FEATURES,
    inspection_model,
    partial_dependence,
    permutation_importance,
)
from kfp_automl.components.evaluate.learning_curve import learning_curve
from kfp_automl.components.evaluate.results import Diagnostics, Evaluation
from kfp_automl.components.evaluate.slices import SliceReport, default_slice_column, slice_metrics
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.drift import prediction_bins
from kfp_automl.runtime.metrics import (
    METRICS,
    Metric,
    default_metric,
    resolve_metric,
    score_defined,
    task_metrics,
)

MAX_ROC_POINTS = 200
N_BOOTSTRAP = 200
MAX_THREADS = 4


def _roc_points(y, proba_pos, pos_label) -> dict[str, list[float]]:
    fpr, tpr, thr = roc_curve(y, proba_pos, pos_label=pos_label)
    thr = np.clip(thr, 0.0, 1.0)  # sklearn's first threshold is +inf; JSON has no inf
    if len(fpr) > MAX_ROC_POINTS:
        idx = np.unique(np.linspace(0, len(fpr) - 1, MAX_ROC_POINTS).round().astype(int))
        fpr, tpr, thr = fpr[idx], tpr[idx], thr[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()}


def evaluate(
    model: Any,
    test: pd.DataFrame,
    schema: Schema,
    metric: str = "",
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> Evaluation:
    """Score the fitted pipeline on the holdout rows with every metric of its task.

    Each defined metric gets a 95 % bootstrap interval from `n_bootstrap`
    resamples of the rows (seeded), computed from the one set of predictions.
    """
    target, task = schema.target, schema.task
    X, y = test.drop(columns=[target]), test[target].to_numpy()
    pred = model.predict(X)
    proba, classes, matrix, roc = None, [], [], None
    if task == "classification":
        classes = list(model.classes_)
        proba = model.predict_proba(X)
        primary = resolve_metric(metric, task, len(classes))
        metrics = task_metrics(task, len(classes))
        matrix = confusion_matrix(y, pred, labels=classes).tolist()
        if len(classes) == 2 and len(set(y)) == 2:
            roc = _roc_points(y, proba[:, 1], classes[1])
    else:
        primary = resolve_metric(metric, task)
        metrics = task_metrics(task)
    values, undefined = score_defined(metrics, y, pred, proba, classes)
    defined = [m for m in metrics if m.name in values]
    intervals = bootstrap_intervals(defined, y, pred, proba, classes, n_bootstrap, seed)
    return Evaluation(
        task=task,
        metric=primary.name,
        metrics=values,
        n_test=len(test),
        labels=classes,
        confusion=matrix,
        roc=roc,
        undefined=undefined,
        intervals=intervals,
        n_bootstrap=n_bootstrap,
        seed=seed,
        y=y,
        pred=pred,
        proba=proba,
    )


def diagnostic_metric(ev: Evaluation) -> Metric:
    """The primary metric, or the task's default when the primary is undefined on the holdout."""
    if ev.metric in ev.metrics:
        return METRICS[ev.metric]
    return METRICS[default_metric(ev.task, len(ev.labels))]


def diagnose(
    model: Any,
    ev: Evaluation,
    test: pd.DataFrame,
    schema: Schema,
    train_valid: pd.DataFrame | None = None,
    slice_column: str = "",
    seed: int = 0,
    fit_s: float = 0.0,
) -> Diagnostics:
    """Permutation importance, partial dependence (top features), learning curve and slices.

    `fit_s`: what refitting the model on train+valid took (tune records it; 0: unknown): a
    model slower to fit than the learning curve's allowance gets no curve."""
    target = schema.target
    X = test.drop(columns=[target])
    metric = diagnostic_metric(ev)
    answering = inspection_model(model, X, schema)
    importance = permutation_importance(answering, X, ev.y, metric, seed)
    top = importance.top(PD_FEATURES)
    dependence = partial_dependence(answering, X, top, schema, seed) if top else []
    column = slice_column or default_slice_column(schema)
    if column:
        slices = slice_metrics(
            X.get(column),
            column,
            metric,
            ev.metrics.get(metric.name),
            ev.y,
            ev.pred,
            ev.proba,
            ev.labels,
        )
    else:
        slices = SliceReport(
            metric=metric.name, skipped="no categorical feature with two or more categories"
        )
    learning = learning_curve(model, train_valid, target, ev.task, metric, seed, fit_s=fit_s)
    return Diagnostics(
        importance=importance,
        dependence=dependence,
        learning=learning,
        slices=slices,
        dependence_skipped="" if dependence else (importance.skipped or "no feature to vary"),
    )


def use_cpus(model: Any, limit: int = MAX_THREADS) -> Any:
    """Let the model's estimator use this process's CPUs (tune fits each trial on one)."""
    n = max(1, min(limit, len(os.sched_getaffinity(0))))
    estimator = getattr(model, "steps", [[None, model]])[-1][1]
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=n)
    return model


def run(
    *,
    model_dir: str,
    model_info: ModelInfo,
    test_path: str,
    schema_path: str,
    leaderboard_path: str,
    report_path: str,
    prediction_reference_path: str = "",
    metric: str = "",
    train_path: str = "",
    valid_path: str = "",
    summary_path: str = "",
    model_card_dir: str = "",
    slice_column: str = "",
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 42,
) -> Evaluation:
    """Load the model (hash-checked), evaluate it on the test rows, write the report.

    Also writes, when their paths are given, the Markdown summary (`summary_path`), the
    model card (`model_card_dir`/model_card.json and .md), and the reference of prediction
    drift: the bins of the model's predictions on the test rows (`prediction_reference_path`).
    Train and valid rows feed the learning curve; without them it is skipped.
    """
    import time
    from pathlib import Path

    from kfp_automl.components.evaluate.model_card import (
        model_card,
        model_card_markdown,
        summary_markdown,
    )
    from kfp_automl.components.evaluate.report import render_report
    from kfp_automl.files import atomic_path
    from kfp_automl.progress import say
    from kfp_automl.runtime.model_file import load_model

    started = time.perf_counter()
    schema = Schema.read(schema_path)
    model = use_cpus(load_model(model_dir, model_info.sha256))
    test = pd.read_parquet(test_path)
    ev = evaluate(model, test, schema, metric or model_info.metric, n_bootstrap, seed)
    if prediction_reference_path:
        prediction_bins(ev.pred, schema.task, schema.classes).write(prediction_reference_path)
    parts = [p for p in (train_path, valid_path) if p and Path(p).exists()]
    train_valid = (
        pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None
    )
    import sklearn

    # permutation importance, partial dependence and the learning curve call sklearn many
    # thousand times with arguments of our own making: no need to check each call's
    with sklearn.config_context(skip_parameter_validation=True):
        diag = diagnose(
            model, ev, test, schema, train_valid, slice_column, seed, fit_s=model_info.refit_s
        )
    board = (
        pd.read_csv(leaderboard_path)
        if leaderboard_path and Path(leaderboard_path).exists()
        else None
    )
    with atomic_path(report_path) as tmp:
        tmp.write_text(render_report(ev, schema, board, model_info, diag))
    if summary_path:
        with atomic_path(summary_path) as tmp:
            tmp.write_text(summary_markdown(ev, schema, model_info, diag))
    if model_card_dir:
        import json

        card = model_card(ev, schema, model_info, diag)
        Path(model_card_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(model_card_dir) / "model_card.json") as tmp:
            tmp.write_text(json.dumps(card, indent=2, default=str) + "\n")
        with atomic_path(Path(model_card_dir) / "model_card.md") as tmp:
            tmp.write_text(model_card_markdown(card))
    interval = ev.intervals.get(ev.metric)
    shown = (
        f" (95% CI {interval.low:.4f}-{interval.high:.4f})"
        if interval is not None and interval.defined
        else ""
    )
    say(
        "evaluate",
        f"holdout {ev.metric}={ev.primary_score:.4f}{shown} on {ev.n_test} rows; "
        f"report in {time.perf_counter() - started:.1f}s",
    )
    return ev
