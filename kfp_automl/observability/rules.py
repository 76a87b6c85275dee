"""Prometheus rules for served models: drift recording rules and alerts.

`render_rules()` returns a Prometheus rules file (YAML) over the metrics the
Bento service exports (`automl_*`) and the request metrics BentoML exports
itself (`bentoml_service_request_*`). The committed copy is
manifests/monitoring/prometheus-rules.yaml; the same rules as a Prometheus Operator
PrometheusRule are manifests/serving/base/prometheusrule.yaml, and the Grafana
dashboard (kfp_automl/observability/dashboard.py) is manifests/serving/base/grafana-dashboard.yaml.
`make rules` refreshes all three:

    python -m kfp_automl.observability.render --output manifests/monitoring/prometheus-rules.yaml \\
        --prometheus-rule manifests/serving/base/prometheusrule.yaml \\
        --dashboard manifests/serving/base/grafana-dashboard.yaml

Recording rules (group `automl-drift`), labels model, version, feature (and bin):

    automl:feature_bin_records:increase_window  records per bin in the window
    automl:feature_records:increase_window      records in the window (sum over the feature's bins)
    automl:feature_bin_share:window             p, the window's share per bin (none without records)
    automl:feature_reference_share:max          q, the reference share per bin (one copy per replica
                                                set: every replica exports the same gauge)
    automl:feature_psi:window                   PSI = sum over bins of (p - q) * ln(p / q)
    automl:feature_js:window                    Jensen-Shannon divergence of p and q (natural log)

`window` in a name stands for the window given to `render_rules` (default 10m);
the names do not change with it, so alerts, dashboards and the retraining
trigger can name the series without knowing the window. In PSI and JS both p
and q are clamped to at least `EPS`, so ln never sees 0: thresholds
calibrated from the reference data must clamp the same way.

Alerts (group `automl-alerts`), each with `for: alert_for`:

    AutomlFeatureDrift      warning   PSI of a feature above its automl_drift_threshold{statistic="psi"},
                                      with at least min_records records in the window; action=retrain
    AutomlPredictionDrift   critical  the same for feature="__prediction__"; action=retrain
    AutomlHighLatencyP99    warning   p99 of POST /predict over the window above latency_p99_s
    AutomlHighErrorRate     critical  share of POST /predict answered 5xx above error_ratio
    AutomlHighRejectedRate  warning   automl_requests_rejected_total / POST /predict requests
                                      above rejected_ratio
    AutomlQualityBelowEvaluation
                            critical  the live value of the primary metric (automl_live_metric,
                                      over the newest labelled predictions) is worse than its
                                      evaluation-time 95% interval (automl_evaluation_metric:
                                      below ci_low, or above ci_high for a loss), with at least
                                      min_labels labels in the window; `for: quality_for`
                                      (labels arrive slowly); action=retrain

BentoML labels its request metrics with `service_name` and `service_version`
(the Bento's name and version), `runner_name` (the service class's name,
"kfp-automl"), `endpoint` and `http_response_code`. The package step names
the Bento after the model and gives it the model's version, so the request
alerts copy service_name into `model` and service_version into `version`, and
every alert speaks of the same (model, version) pairs. Requests that the
service rejects for bad input are counted by BentoML too, so the rejected
share is rejected / all POST /predict requests of that model version.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any

import yaml

from kfp_automl.observability.series import (
    BIN_RECORDS,
    ENDPOINT,
    EPS,
    JS,
    PREDICTION_FEATURE,
    PSI,
    RECORDS,
    REFERENCE_SHARE,
    SERVICE_NAME,
    SHARE,
)
from kfp_automl.runtime import names as n

DRIFT_GROUP = "automl-drift"
ALERT_GROUP = "automl-alerts"

_MVF = "model, version, feature"
_MVFB = "model, version, feature, bin"
_SERVICE = f'runner_name="{SERVICE_NAME}", endpoint="{ENDPOINT}"'
# Prometheus durations: units in this order, each at most once ("1h30m", "90s", "500ms").
_DURATION = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)


class _PromQL(str):
    """An expression; written as a YAML literal block when it spans several lines."""


def _represent_promql(dumper: yaml.SafeDumper, data: _PromQL) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=style)


# Registered for _PromQL alone: every other str still dumps as yaml.safe_dump always does.
yaml.SafeDumper.add_representer(_PromQL, _represent_promql)


def _expr(text: str) -> _PromQL:
    lines = [line.rstrip() for line in textwrap.dedent(text).strip().splitlines()]
    return _PromQL("\n".join(lines))


def _duration_ms(name: str, value: object) -> int:
    match = _DURATION.fullmatch(value) if isinstance(value, str) and value else None
    if match is None:
        raise ValueError(
            f"{name} must be a Prometheus duration such as 10m, 1h30m or 90s, got {value!r}"
        )
    units_ms = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
    return sum(int(n) * unit for n, unit in zip(match.groups(), units_ms, strict=True) if n)


def _check_ratio(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def _check_arguments(
    window: str,
    alert_for: str,
    min_records: int,
    latency_p99_s: float,
    error_ratio: float,
    rejected_ratio: float,
    quality_for: str = "15m",
    min_labels: int = 100,
) -> None:
    if _duration_ms("window", window) == 0:
        raise ValueError(f"window must be longer than 0, got {window!r}")
    _duration_ms("alert_for", alert_for)
    _duration_ms("quality_for", quality_for)
    if isinstance(min_labels, bool) or not isinstance(min_labels, int) or min_labels < 1:
        raise ValueError(f"min_labels must be an integer >= 1, got {min_labels!r}")
    if isinstance(min_records, bool) or not isinstance(min_records, int) or min_records < 1:
        raise ValueError(f"min_records must be an integer >= 1, got {min_records!r}")
    if (
        isinstance(latency_p99_s, bool)
        or not isinstance(latency_p99_s, int | float)
        or not 0 < latency_p99_s < math.inf
    ):
        raise ValueError(f"latency_p99_s must be a number of seconds > 0, got {latency_p99_s!r}")
    _check_ratio("error_ratio", error_ratio)
    _check_ratio("rejected_ratio", rejected_ratio)


def _drift_rules(window: str) -> list[dict[str, Any]]:
    p = f"clamp_min({SHARE}, {EPS!r})"
    q = f"clamp_min({REFERENCE_SHARE}, {EPS!r})"
    on = f"on ({_MVFB})"
    return [
        {
            "record": BIN_RECORDS,
            "expr": _expr(f"sum by ({_MVFB}) (increase({n.total(n.FEATURE_BIN)}[{window}]))"),
        },
        {"record": RECORDS, "expr": _expr(f"sum by ({_MVF}) ({BIN_RECORDS})")},
        {  # `group_left ()`: without the parentheses PromQL reads `(...)` as the label list
            "record": SHARE,
            "expr": _expr(f"""
                {BIN_RECORDS}
                  / ignoring (bin) group_left ()
                ({RECORDS} > 0)
            """),
        },
        {
            "record": REFERENCE_SHARE,
            "expr": _expr(f"max by ({_MVFB}) ({n.REFERENCE_SHARE})"),
        },
        {
            "record": PSI,
            "expr": _expr(f"""
                sum by ({_MVF}) (
                    (
                        {p}
                      - {on}
                        {q}
                    )
                  * {on}
                    ln(
                        {p}
                      / {on}
                        {q}
                    )
                )
            """),
        },
        {
            "record": JS,
            "expr": _expr(f"""
                0.5 * sum by ({_MVF}) (
                    {p}
                  * {on}
                    ln(
                        2 * {p}
                      / {on}
                        ({p} + {on} {q})
                    )
                  + {on}
                    {q}
                  * {on}
                    ln(
                        2 * {q}
                      / {on}
                        ({p} + {on} {q})
                    )
                )
            """),
        },
    ]


def _drift_alert(
    name: str, feature_match: str, severity: str, summary: str, window: str, min_records: int
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": _expr(f"""
            (
                {PSI}{{feature{feature_match}}}
              > on ({_MVF})
                max by ({_MVF}) ({n.DRIFT_THRESHOLD}{{statistic="psi"}})
            )
            and on ({_MVF})
            ({RECORDS} >= {min_records})
        """),
        "labels": {"severity": severity, "action": "retrain"},
        "annotations": {
            "summary": summary,
            "description": f"PSI of {{{{ $labels.feature }}}} for model {{{{ $labels.model }}}} "
            f'version {{{{ $labels.version }}}} is {{{{ $value | printf "%.3f" }}}} over the '
            f"last {window}, above its threshold calibrated on the reference data "
            f'(automl_drift_threshold{{statistic="psi"}}); at least {min_records} records '
            "were scored in that window.",
        },
    }


def _as_model_version(expr: str) -> str:
    """Wrap `expr` so BentoML's service_name/service_version labels are copied to model/version."""
    indented = expr.replace("\n", "\n    ")
    return (
        "label_replace(\n  label_replace(\n"
        f"    {indented},\n"
        '    "model", "$1", "service_name", "(.*)"\n  ),\n'
        '  "version", "$1", "service_version", "(.*)"\n)'
    )


def _service_alerts(
    window: str, latency_p99_s: float, error_ratio: float, rejected_ratio: float
) -> list[dict[str, Any]]:
    by_service = "service_name, service_version"
    requests = f"bentoml_service_request_total{{{_SERVICE}}}"
    errors = f'bentoml_service_request_total{{{_SERVICE}, http_response_code=~"5.."}}'
    buckets = f"bentoml_service_request_duration_seconds_bucket{{{_SERVICE}}}"
    p99 = f"histogram_quantile(0.99, sum by ({by_service}, le) (rate({buckets}[{window}])))"
    error_share = (
        f"sum by ({by_service}) (rate({errors}[{window}]))\n"
        f"  / sum by ({by_service}) (rate({requests}[{window}]))"
    )
    model_version = "model {{ $labels.model }} (Bento version {{ $labels.version }})"
    return [
        {
            "alert": "AutomlHighLatencyP99",
            "expr": _expr(f"{_as_model_version(p99)}\n  > {latency_p99_s!r}"),
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "p99 latency of {{ $labels.model }} version {{ $labels.version }} "
                "is high",
                "description": f"p99 latency of POST {ENDPOINT} for {model_version} is "
                f'{{{{ $value | printf "%.3f" }}}}s over the last {window}, '
                f"above {latency_p99_s!r}s.",
            },
        },
        {
            "alert": "AutomlHighErrorRate",
            "expr": _expr(f"{_as_model_version(error_share)}\n  > {error_ratio!r}"),
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "{{ $labels.model }} version {{ $labels.version }} answers 5xx",
                "description": f"{{{{ $value | humanizePercentage }}}} of POST {ENDPOINT} "
                f"requests to {model_version} got a 5xx answer over the last {window}, "
                f"above {error_ratio:.2%}.",
            },
        },
        {
            "alert": "AutomlHighRejectedRate",
            "expr": _expr(
                f"sum by (model, version) (rate({n.total(n.REQUESTS_REJECTED)}"
                f'{{reason!~"{"|".join(n.CONNECTION_REFUSALS)}"}}[{window}]))\n'
                "  / on (model, version)\n"
                + _as_model_version(f"sum by ({by_service}) (rate({requests}[{window}]))")
                + f"\n  > {rejected_ratio!r}"
            ),
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.model }} version {{ $labels.version }} rejects many "
                "requests",
                "description": f"{{{{ $value | humanizePercentage }}}} of POST {ENDPOINT} "
                "requests to model {{ $labels.model }} version {{ $labels.version }} were "
                f"rejected for bad input over the last {window}, above {rejected_ratio:.2%} "
                "(automl_requests_rejected_total has the reasons).",
            },
        },
    ]


def _evaluation_bound(goal: str, name: str) -> str:
    """The primary metric's evaluation-time `name` bound (ci_low, ci_high) per model, version
    and metric."""
    selector = f'primary="true", goal="{goal}", bound="{name}"'
    return f"max by (model, version, metric) ({n.EVALUATION_METRIC}{{{selector}}})"


def _quality_alert(min_labels: int) -> dict[str, Any]:
    mvm = "model, version, metric"
    live = f"max by ({mvm}) ({n.LIVE_METRIC})"

    return {
        "alert": "AutomlQualityBelowEvaluation",
        "expr": _expr(f"""
            (
                {live}
              < on ({mvm})
                {_evaluation_bound("max", "ci_low")}
            or
                {live}
              > on ({mvm})
                {_evaluation_bound("min", "ci_high")}
            )
            and on (model, version)
            (max by (model, version) ({n.LIVE_WINDOW_LABELS}) >= {min_labels})
        """),
        "labels": {"severity": "critical", "action": "retrain"},
        "annotations": {
            "summary": "Live {{ $labels.metric }} of {{ $labels.model }} version "
            "{{ $labels.version }} is worse than at evaluation",
            "description": "{{ $labels.metric }} of model {{ $labels.model }} version "
            '{{ $labels.version }} is {{ $value | printf "%.3f" }} over its newest labelled '
            "predictions (automl_live_metric), outside the 95% interval measured on the "
            f"holdout at evaluation time (automl_evaluation_metric); at least {min_labels} "
            "labels are in the window.",
        },
    }


def _replica_quality_alert(min_labels: int) -> dict[str, Any]:
    """One replica's own window outside the evaluation interval (a shared store: the fleet's
    window, which the quality alert reads, can hide one bad pod among many good ones)."""
    mvm, each = "model, version, metric", "model, version, metric, instance, pod"
    live = f"max by ({each}) ({n.LIVE_REPLICA_METRIC})"

    return {
        "alert": "AutomlReplicaQualityBelowEvaluation",
        "expr": _expr(f"""
            (
                {live}
              < on ({mvm}) group_left
                {_evaluation_bound("max", "ci_low")}
            or
                {live}
              > on ({mvm}) group_left
                {_evaluation_bound("min", "ci_high")}
            )
            and on (model, version, instance, pod)
            (max by (model, version, instance, pod) ({n.LIVE_REPLICA_WINDOW_LABELS}) >= {min_labels})
        """),
        # no action=retrain: a retrain does not mend one pod (its node, its model files)
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Live {{ $labels.metric }} of {{ $labels.model }} version "
            "{{ $labels.version }} on replica {{ $labels.instance }} is worse than at "
            "evaluation",
            "description": "{{ $labels.metric }} over the newest labelled predictions replica "
            "{{ $labels.instance }} {{ $labels.pod }} made (automl_live_replica_metric) is "
            '{{ $value | printf "%.3f" }}, outside the 95% interval of model '
            "{{ $labels.model }} version {{ $labels.version }} at evaluation time, with at "
            f"least {min_labels} labels; compare it with the fleet's automl_live_metric and "
            "look at that pod (its node, its logs).",
        },
    }


def _prediction_log_alerts(window: str) -> list[dict[str, Any]]:
    """The feedback loop losing data: a replica that cannot write its log or store, and
    predictions dropped from the log."""
    each = "model, version, instance, pod"
    return [
        {
            "alert": "AutomlPredictionLogUnhealthy",
            "expr": _expr(f"min by ({each}) ({n.LOG_HEALTHY}) == 0"),
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Replica {{ $labels.instance }} of {{ $labels.model }} cannot write "
                "its prediction log or label store",
                "description": "The last write of the prediction log or the label store of "
                "model {{ $labels.model }} version {{ $labels.version }} on replica "
                "{{ $labels.instance }} {{ $labels.pod }} failed "
                "(automl_prediction_log_errors_total has which part). Predictions are still "
                "answered; they wait in a bounded backlog (automl_prediction_log_backlog) and "
                "labels for them are refused until the store is back.",
            },
        },
        {
            "alert": "AutomlPredictionsNotLogged",
            "expr": _expr(
                f"sum by (model, version, reason) (increase({n.total(n.LOG_DROPPED)}[{window}]))"
                " > 0"
            ),
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.model }} version {{ $labels.version }} drops predictions "
                "from its log ({{ $labels.reason }})",
                "description": '{{ $value | printf "%.0f" }} predictions of model '
                "{{ $labels.model }} version {{ $labels.version }} were not logged over the "
                f"last {window} (reason {{{{ $labels.reason }}}}): labels for them cannot join, "
                "and live quality and export-feedback miss them.",
            },
        },
    ]


def rule_groups(
    window: str = "10m",
    alert_for: str = "5m",
    min_records: int = 200,
    latency_p99_s: float = 0.5,
    error_ratio: float = 0.01,
    rejected_ratio: float = 0.05,
    quality_for: str = "15m",
    min_labels: int = 100,
) -> dict[str, Any]:
    """The rules file as Python data; see `render_rules`."""
    _check_arguments(
        window,
        alert_for,
        min_records,
        latency_p99_s,
        error_ratio,
        rejected_ratio,
        quality_for,
        min_labels,
    )
    alerts = [
        _drift_alert(
            "AutomlFeatureDrift",
            f'!="{PREDICTION_FEATURE}"',
            "warning",
            "Feature {{ $labels.feature }} of {{ $labels.model }} version {{ $labels.version }} "
            "drifted",
            window,
            min_records,
        ),
        _drift_alert(
            "AutomlPredictionDrift",
            f'="{PREDICTION_FEATURE}"',
            "critical",
            "Predictions of {{ $labels.model }} version {{ $labels.version }} drifted",
            window,
            min_records,
        ),
        *_service_alerts(window, latency_p99_s, error_ratio, rejected_ratio),
        _quality_alert(min_labels),
        _replica_quality_alert(min_labels),
        *_prediction_log_alerts(window),
    ]
    quality_alerts = ("AutomlQualityBelowEvaluation", "AutomlReplicaQualityBelowEvaluation")
    for alert in alerts:
        alert["for"] = quality_for if alert["alert"] in quality_alerts else alert_for
        alert["labels"] = alert.pop("labels")  # key order: alert, expr, for, labels, annotations
        alert["annotations"] = alert.pop("annotations")
    return {
        "groups": [
            {"name": DRIFT_GROUP, "rules": _drift_rules(window)},
            {"name": ALERT_GROUP, "rules": alerts},
        ]
    }


def render_rules(
    window: str = "10m",
    alert_for: str = "5m",
    min_records: int = 200,
    latency_p99_s: float = 0.5,
    error_ratio: float = 0.01,
    rejected_ratio: float = 0.05,
    quality_for: str = "15m",
    min_labels: int = 100,
) -> str:
    """Return the Prometheus rules file (YAML) for served models.

    `window` is the range of every rate/increase (a Prometheus duration),
    `alert_for` how long a condition must hold before its alert fires,
    `min_records` the fewest records in the window for a drift alert,
    `latency_p99_s` the p99 request latency limit in seconds, and
    `error_ratio` / `rejected_ratio` the largest tolerated share of 5xx
    answers / requests rejected for bad input, `quality_for` how long live
    quality must stay outside its evaluation interval before the quality alert
    fires, and `min_labels` the fewest labels in the live window for it. A bad
    value raises ValueError.
    The window should span at least a few scrape intervals: increase() and
    rate() need two samples in it.
    """
    data = rule_groups(
        window,
        alert_for,
        min_records,
        latency_p99_s,
        error_ratio,
        rejected_ratio,
        quality_for,
        min_labels,
    )
    header = "# Generated by `python -m kfp_automl.observability.render`: do not edit by hand.\n"
    return header + yaml.safe_dump(data, sort_keys=False, width=1000)  # no folded templates


PROMETHEUS_RULE_NAME = "automl-serving"


def render_prometheus_rule(**kwargs: Any) -> str:
    """The same rules as `render_rules(**kwargs)`, as a Prometheus Operator PrometheusRule.

    The `release` label is what kube-prometheus-stack's default ruleSelector matches.
    """
    data = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": PROMETHEUS_RULE_NAME,
            "labels": {
                "app.kubernetes.io/name": "automl-serving",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": rule_groups(**kwargs),
    }
    header = (
        "# Generated by `python -m kfp_automl.observability.render` (make rules) from the same\n"
        "# source as manifests/monitoring/prometheus-rules.yaml: do not edit by hand.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, width=1000)
