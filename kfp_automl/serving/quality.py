"""Live model quality: checking labels, scoring the labelled window, and its metrics.

prometheus_client is imported when QualityMetrics is created, inside the BentoML worker.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from kfp_automl.runtime import names
from kfp_automl.runtime.jsonbody import JsonBodyError, loads

# direction of each metric the service can compute live ("max": greater is better)
GOALS = {
    "accuracy": "max",
    "balanced_accuracy": "max",
    "f1": "max",
    "f1_macro": "max",
    "roc_auc": "max",
    "pr_auc": "max",
    "log_loss": "min",
    "brier": "min",
    "mae": "min",
    "rmse": "min",
    "r2": "max",
    "mape": "min",
}
CLASSIFICATION = (
    *("accuracy", "balanced_accuracy", "f1", "f1_macro", "roc_auc", "pr_auc"),
    *("log_loss", "brier"),
)
REGRESSION = ("mae", "rmse", "r2", "mape")
__all__ = ["check_label", "live_metrics", "parse_feedback", "QualityMetrics"]
OUTCOMES = ("matched", "duplicate", "unknown_id", "wrong_type", "bad_id")
# why a whole /feedback request was refused (automl_feedback_rejected_total{reason})
REFUSALS = (
    *("unauthorized", "bad_json", "too_large", "unsupported_media_type", "bad_framing"),
    "method",
    "rate_limited",
)
DROP_REASONS = ("buffer_full", "write_error", "store_full", "store_down")


class FeedbackError(ValueError):
    """A /feedback body that cannot be read at all (the whole request is refused)."""


def check_label(value: Any, task: str, classes: list[Any] | None) -> str | None:
    """The problem with a label for this model, or None when it can be joined."""
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {_shown(value)}"
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an integer beyond any float
            finite = False
        return None if finite else "expected a finite number"
    for cls in classes or []:
        if type(value) is type(cls) and value == cls:
            return None
    return f"expected one of the classes {json.dumps(classes)[:200]}, got {_shown(value)}"


def _shown(value: Any) -> str:
    """A label as an error message quotes it: short, whatever its size."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a very large integer"
    if isinstance(value, str):
        value = value[:41]
    return json.dumps(value)[:40]


def parse_feedback(body: bytes, max_items: int) -> list[Any]:
    """The `labels` list of a /feedback body, or a FeedbackError naming what is wrong.

    The body is parsed by kfp_automl.runtime.jsonbody: bounded nesting, no duplicate keys,
    no NaN, UTF-8 only.
    """
    try:
        payload = loads(body)
    except JsonBodyError as exc:
        raise FeedbackError(str(exc)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("labels"), list):
        raise FeedbackError('expected an object {"labels": [{"id": ..., "label": ...}, ...]}')
    labels = payload["labels"]
    if not labels:
        raise FeedbackError('\'labels\' is empty: send at least one {"id": ..., "label": ...}')
    if len(labels) > max_items:
        raise FeedbackError(
            f"'labels' has {len(labels)} items; send at most {max_items} per request"
        )
    return labels


def live_metrics(
    task: str, classes: list[Any] | None, window: list[tuple[Any, Any, Any]]
) -> dict[str, float]:
    """Every live metric of the task over (prediction, probabilities, label) rows; NaN where
    a metric is not defined for the window (AUC with one class present, MAPE with a 0)."""
    from sklearn import metrics as skm

    names = REGRESSION if task == "regression" else CLASSIFICATION
    out = dict.fromkeys(names, math.nan)
    if not window:
        return out
    pred = [w[0] for w in window]
    y = [w[2] for w in window]
    if task == "regression":
        yt, yp = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
        out["mae"] = float(np.mean(np.abs(yt - yp)))
        out["rmse"] = float(np.sqrt(np.mean((yt - yp) ** 2)))
        if len(yt) > 1 and np.var(yt) > 0:
            out["r2"] = float(skm.r2_score(yt, yp))
        if not np.any(yt == 0):
            out["mape"] = float(np.mean(np.abs((yt - yp) / yt)))
        return out
    classes = list(classes or [])
    index = {json.dumps(c): i for i, c in enumerate(classes)}
    yi = np.array([index[json.dumps(v)] for v in y])
    pi = np.array([index.get(json.dumps(v), -1) for v in pred])
    out["accuracy"] = float(np.mean(yi == pi))
    out["balanced_accuracy"] = float(np.mean([np.mean(pi[yi == k] == k) for k in np.unique(yi)]))
    out["f1_macro"] = float(skm.f1_score(yi, pi, average="macro", zero_division=0))
    proba = np.array([w[1] for w in window if w[1] is not None], dtype=float)
    if len(proba) != len(window) or proba.ndim != 2 or proba.shape[1] != len(classes):
        return out
    proba = np.clip(proba, 1e-15, 1)
    proba = proba / proba.sum(axis=1, keepdims=True)
    onehot = np.eye(len(classes))[yi]
    out["log_loss"] = float(-np.mean(np.log(proba[np.arange(len(yi)), yi])))
    present = len(np.unique(yi)) == len(classes)
    if len(classes) == 2:
        out["f1"] = float(skm.f1_score(yi, pi, pos_label=1, zero_division=0))
        out["brier"] = float(np.mean((proba[:, 1] - (yi == 1)) ** 2))
        if present:
            out["roc_auc"] = float(skm.roc_auc_score(yi, proba[:, 1]))
            out["pr_auc"] = float(skm.average_precision_score(yi == 1, proba[:, 1]))
    else:
        out["brier"] = float(np.mean(np.sum((onehot - proba) ** 2, axis=1)))
        if present:
            labels = list(range(len(classes)))
            out["roc_auc"] = float(skm.roc_auc_score(yi, proba, multi_class="ovr", labels=labels))
            out["pr_auc"] = float(skm.average_precision_score(onehot, proba, average="macro"))
    return out


def evaluation_bounds(evaluation: dict[str, Any], metric: str) -> dict[str, float]:
    """value / ci_low / ci_high of `metric` in the evaluate step's metrics (those present)."""
    out = {}
    for bound, key in (("value", metric), ("ci_low", f"{metric}_ci_low")):
        if isinstance(evaluation.get(key), int | float):
            out[bound] = float(evaluation[key])
    if isinstance(evaluation.get(f"{metric}_ci_high"), int | float):
        out["ci_high"] = float(evaluation[f"{metric}_ci_high"])
    return out


class QualityMetrics:
    """Prometheus metrics of prediction logging, label feedback and live quality."""

    def __init__(
        self,
        model: str,
        version: str,
        task: str,
        primary: str,
        evaluation: dict[str, Any] | None,
        registry=None,
    ):
        import prometheus_client as pc

        kw = {"registry": registry} if registry is not None else {}
        base = ["model", "version"]
        ids = (model, version)
        self.names = REGRESSION if task == "regression" else CLASSIFICATION
        self.logged = pc.Counter(
            names.LOG_RECORDS, "Predictions written to the log", base, **kw
        ).labels(*ids)
        dropped = pc.Counter(
            names.LOG_DROPPED,
            "Predictions not logged (buffer_full, write_error), not written to the label store "
            "while it was unreachable for longer than the backlog holds (store_down), or pruned "
            "from it to keep it within its size limit (store_full)",
            [*base, "reason"],
            **kw,
        )
        self.dropped = {r: dropped.labels(*ids, r) for r in DROP_REASONS}
        errors = pc.Counter(
            names.LOG_ERRORS,
            "Failed writes of the prediction log (log_file) or the join store (store)",
            [*base, "kind"],
            **kw,
        )
        self.errors = {k: errors.labels(*ids, k) for k in ("log_file", "store")}
        self.healthy = pc.Gauge(
            names.LOG_HEALTHY,
            "1 when the last write of the prediction log and store succeeded",
            base,
            multiprocess_mode="min",  # 0 when any worker cannot write
            **kw,
        ).labels(*ids)
        labels = pc.Counter(
            names.FEEDBACK_LABELS,
            "Labels received, by outcome",
            [*base, "outcome"],
            **kw,
        )
        self.labels = {o: labels.labels(*ids, o) for o in OUTCOMES}
        rejected = pc.Counter(
            names.FEEDBACK_REJECTED,
            "Requests to /feedback refused whole, by reason (apart from /predict's rejections)",
            [*base, "reason"],
            **kw,
        )
        self.rejected = {r: rejected.labels(*ids, r) for r in REFUSALS}
        self.expired = pc.Counter(
            names.PREDICTIONS_EXPIRED,
            "Logged predictions deleted unlabelled after the label TTL",
            base,
            **kw,
        ).labels(*ids)
        self.delay = pc.Histogram(
            names.LABEL_DELAY_SECONDS,
            "Time from a prediction to its label",
            base,
            buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400),
            **kw,
        ).labels(*ids)
        # Every worker computes the window from the shared store; the latest computation wins.
        live = pc.Gauge(
            names.LIVE_METRIC,
            "Quality over the newest labelled predictions (NaN where undefined)",
            [*base, "metric"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        self.live = {n: live.labels(*ids, n) for n in self.names}
        self.window_labels = pc.Gauge(
            names.LIVE_WINDOW_LABELS,
            "Labelled predictions in the live quality window",
            base,
            multiprocess_mode="mostrecent",
            **kw,
        ).labels(*ids)
        replica_live = pc.Gauge(
            names.LIVE_REPLICA_METRIC,
            "Quality over the newest labelled predictions this replica made (NaN where "
            "undefined); automl_live_metric is the fleet's",
            [*base, "metric"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        self.replica_live = {n: replica_live.labels(*ids, n) for n in self.names}
        self.replica_window_labels = pc.Gauge(
            names.LIVE_REPLICA_WINDOW_LABELS,
            "Labelled predictions of this replica in its live quality window",
            base,
            multiprocess_mode="mostrecent",
            **kw,
        ).labels(*ids)
        self.backlog = pc.Gauge(
            names.LOG_BACKLOG,
            "Logged predictions waiting to be written to the label store (it is unreachable)",
            base,
            multiprocess_mode="livesum",
            **kw,
        ).labels(*ids)
        evaluation_metric = pc.Gauge(
            names.EVALUATION_METRIC,
            "Holdout metric at evaluation time, with its 95% bootstrap interval",
            [*base, "metric", "bound", "goal", "primary"],
            multiprocess_mode="max",  # the same value in every worker
            **kw,
        )
        for name in self.names:
            for bound, value in evaluation_bounds(evaluation or {}, name).items():
                evaluation_metric.labels(
                    *ids, name, bound, GOALS[name], str(name == primary).lower()
                ).set(value)

    def set_window(
        self,
        values: dict[str, float],
        n_labels: int,
        replica: tuple[dict[str, float], int] | None = None,
    ) -> None:
        """The fleet's window (`values` over `n_labels` labels) and this replica's own
        (`replica`: its values and labels; the same as the fleet's when None: one host)."""
        own, n_own = (values, n_labels) if replica is None else replica
        for name, gauge in self.live.items():
            gauge.set(values.get(name, math.nan))
        for name, gauge in self.replica_live.items():
            gauge.set(own.get(name, math.nan))
        self.window_labels.set(n_labels)
        self.replica_window_labels.set(n_own)
