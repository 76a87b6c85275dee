"""Holdout evaluation: metrics, confusion matrix, ROC curve, and an HTML report."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_curve

from components.common.metrics import resolve_metric, score_all, task_metrics

MAX_ROC_POINTS = 200


@dataclass
class Evaluation:
    task: str
    metric: str  # the primary metric
    metrics: dict[str, float]
    n_test: int
    labels: list = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    roc: dict[str, list[float]] | None = None  # fpr, tpr, threshold (binary only)

    @property
    def primary_score(self) -> float:
        return self.metrics[self.metric]


def _roc_points(y, proba_pos, pos_label) -> dict[str, list[float]]:
    fpr, tpr, thr = roc_curve(y, proba_pos, pos_label=pos_label)
    thr = np.clip(thr, 0.0, 1.0)  # sklearn's first threshold is +inf; JSON has no inf
    if len(fpr) > MAX_ROC_POINTS:
        idx = np.unique(np.linspace(0, len(fpr) - 1, MAX_ROC_POINTS).round().astype(int))
        fpr, tpr, thr = fpr[idx], tpr[idx], thr[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()}


def evaluate(
    model: Any, test: pd.DataFrame, schema: dict[str, Any], metric: str = ""
) -> Evaluation:
    """Score the fitted pipeline on the holdout rows with every metric of its task."""
    target, task = schema["target"], schema["task"]
    X, y = test.drop(columns=[target]), test[target].to_numpy()
    pred = model.predict(X)
    if task == "classification":
        classes = list(model.classes_)
        proba = model.predict_proba(X)
        n = len(classes)
        primary = resolve_metric(metric, task, n)
        values = score_all(task_metrics(task, n), y, pred, proba, classes)
        matrix = confusion_matrix(y, pred, labels=classes).tolist()
        roc = _roc_points(y, proba[:, 1], classes[1]) if n == 2 else None
        return Evaluation(task, primary.name, values, len(test), classes, matrix, roc)
    primary = resolve_metric(metric, task)
    values = score_all(task_metrics(task), y, pred, None, [])
    return Evaluation(task, primary.name, values, len(test))


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, classes="table", float_format=lambda v: f"{v:.4f}")


def render_report(
    ev: Evaluation,
    schema: dict[str, Any],
    leaderboard: pd.DataFrame | None,
    model_info: dict[str, Any],
) -> str:
    """A self-contained HTML page the Kubeflow dashboard can show."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>kfp-automl report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "th{background:#f4f4f4}</style></head><body>",
        f"<h1>Model report: {html.escape(str(schema['target']))} ({html.escape(ev.task)})</h1>",
        "<h2>Chosen model</h2><ul>",
        f"<li>family: <b>{html.escape(str(model_info.get('family', '')))}</b></li>",
        f"<li>parameters: <code>{html.escape(str(model_info.get('params', {})))}</code></li>",
        f"<li>validation {html.escape(ev.metric)}: {model_info.get('valid_score', float('nan')):.4f}</li>",
        f"<li>trials: {model_info.get('n_trials', 0)}</li></ul>",
        f"<h2>Holdout metrics ({ev.n_test} rows)</h2>",
        _table(pd.DataFrame({"metric": list(ev.metrics), "value": list(ev.metrics.values())})),
    ]
    if ev.confusion:
        labels = [str(c) for c in ev.labels]
        cm = pd.DataFrame(ev.confusion, columns=[f"pred {c}" for c in labels])
        cm.insert(0, "actual", labels)
        parts += ["<h2>Confusion matrix</h2>", _table(cm)]
    feats = pd.DataFrame(schema["features"])
    cols = [
        c
        for c in ["name", "kind", "dtype", "missing_rate", "min", "max", "n_categories"]
        if c in feats
    ]
    parts += ["<h2>Features used</h2>", _table(feats[cols])]
    if schema.get("dropped"):
        parts += ["<h2>Columns dropped</h2>", _table(pd.DataFrame(schema["dropped"]))]
    if leaderboard is not None and len(leaderboard):
        parts += [
            f"<h2>Leaderboard (top 25 of {len(leaderboard)} trials)</h2>",
            _table(leaderboard.head(25)),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def run(
    model_dir: str,
    sha256: str,
    model_info: dict[str, Any],
    test_path: str,
    schema_path: str,
    leaderboard_path: str,
    report_path: str,
    metric: str = "",
) -> Evaluation:
    """Load the model (hash-checked), evaluate it on the test rows and write the HTML report."""
    from pathlib import Path

    from components.common.io import atomic_path, read_json
    from components.common.model_io import load_model
    from components.common.progress import say

    schema = read_json(schema_path)
    model = load_model(model_dir, sha256)
    ev = evaluate(model, pd.read_parquet(test_path), schema, metric or model_info.get("metric", ""))
    board = (
        pd.read_csv(leaderboard_path)
        if leaderboard_path and Path(leaderboard_path).exists()
        else None
    )
    with atomic_path(report_path) as tmp:
        tmp.write_text(render_report(ev, schema, board, model_info))
    say("evaluate", f"holdout {ev.metric}={ev.primary_score:.4f} on {ev.n_test} rows")
    return ev
