"""The Grafana dashboard of served models, as a ConfigMap for Grafana's dashboard sidecar.

Every query names a metric the served Bento really exports (kfp_automl/serving/
monitoring.py: `automl_*`; BentoML 1.4: `bentoml_service_request_*`) or a recording
rule of rules.py, so the dashboard and the alerts read the same series. Rows: traffic and latency, drift per feature, data quality.
"""

from __future__ import annotations

import json
from typing import Any

from kfp_automl.observability.series import ENDPOINT, JS, PSI, RECORDS, SERVICE_NAME
from kfp_automl.runtime import names as n

DASHBOARD_UID = "kfp-automl-serving"
CONFIGMAP_NAME = "automl-serving-dashboard"
# kube-prometheus-stack's Grafana sidecar loads every ConfigMap carrying this label.
SIDECAR_LABEL = "grafana_dashboard"

_REQ = f'runner_name="{SERVICE_NAME}", endpoint="{ENDPOINT}", service_name=~"$model"'
_MV = 'model=~"$model", version=~"$version"'


def _panel(
    pid: int,
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    x: int,
    y: int,
    w: int = 12,
    h: int = 8,
    description: str = "",
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _row(pid: int, title: str, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
    }


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
    }


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels, top to bottom."""
    rate = "$__rate_interval"
    return [
        _row(1, "Traffic and latency", 0),
        _panel(
            2,
            "Requests per second by status",
            [
                (
                    "sum by (service_version, http_response_code) "
                    f"(rate(bentoml_service_request_total{{{_REQ}}}[{rate}]))",
                    "{{service_version}} {{http_response_code}}",
                ),
            ],
            "reqps",
            0,
            1,
        ),
        _panel(
            3,
            "Records scored per second",
            [(f"sum by (version) (rate({n.total(n.RECORDS)}{{{_MV}}}[{rate}]))", "{{version}}")],
            "rps",
            12,
            1,
        ),
        _panel(
            4,
            "Request latency (POST /predict)",
            [
                (
                    f"histogram_quantile({q}, sum by (service_version, le) "
                    f"(rate(bentoml_service_request_duration_seconds_bucket{{{_REQ}}}[{rate}])))",
                    f"p{round(q * 100)} {{{{service_version}}}}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
            "s",
            0,
            9,
        ),
        _panel(
            5,
            "Model time per batch and batch size",
            [
                (
                    "histogram_quantile(0.99, sum by (version, le) "
                    f"(rate({n.INFERENCE_SECONDS}_bucket{{{_MV}}}[{rate}])))",
                    "p99 inference {{version}}",
                ),
                (
                    f"sum by (version) (rate({n.BATCH_RECORDS}_sum{{{_MV}}}[{rate}]))"
                    " / sum by (version) "
                    f"(rate({n.BATCH_RECORDS}_count{{{_MV}}}[{rate}]))",
                    "mean records per batch {{version}}",
                ),
            ],
            "short",
            12,
            9,
        ),
        _panel(
            6,
            "Requests in flight (the autoscaler's metric)",
            [
                (
                    "sum by (pod) (bentoml_service_request_in_progress"
                    f'{{endpoint="{ENDPOINT}", service_name=~"$model"}})',
                    "{{pod}}",
                ),
            ],
            "short",
            0,
            17,
        ),
        _panel(
            7,
            "Rejected requests per second by reason",
            [
                (
                    f"sum by (reason) (rate({n.total(n.REQUESTS_REJECTED)}{{{_MV}}}[{rate}]))",
                    "{{reason}}",
                ),
            ],
            "reqps",
            12,
            17,
        ),
        _row(8, "Drift (recording rules, window of the rules file)", 25),
        _panel(
            9,
            "PSI per feature",
            [(f"{PSI}{{{_MV}}}", "{{feature}}")],
            "short",
            0,
            26,
            description="Population stability index of the window against the reference "
            "shares; the alert fires above the per-feature calibrated threshold.",
        ),
        _panel(
            10,
            "PSI over its calibrated threshold",
            [
                (
                    f"{PSI}{{{_MV}}} / on (model, version, feature) "
                    "max by (model, version, feature) "
                    f'({n.DRIFT_THRESHOLD}{{statistic="psi", {_MV}}})',
                    "{{feature}}",
                ),
            ],
            "percentunit",
            12,
            26,
            description="Above 1 (100%) a feature is over its drift threshold.",
        ),
        _panel(
            11,
            "Jensen-Shannon divergence per feature",
            [(f"{JS}{{{_MV}}}", "{{feature}}")],
            "short",
            0,
            34,
        ),
        _panel(
            12,
            "Records in the drift window",
            [(f'max by (version) ({RECORDS}{{feature="__prediction__", {_MV}}})', "{{version}}")],
            "short",
            12,
            34,
        ),
        _row(13, "Data quality", 42),
        _panel(
            14,
            "Missing values per second by feature",
            [
                (
                    f"sum by (feature) (rate({n.total(n.FEATURE_MISSING)}{{{_MV}}}[{rate}]))",
                    "{{feature}}",
                ),
            ],
            "short",
            0,
            43,
            w=8,
        ),
        _panel(
            15,
            "Out-of-range numbers per second by feature",
            [
                (
                    f"sum by (feature) (rate({n.total(n.FEATURE_OUT_OF_RANGE)}{{{_MV}}}[{rate}]))",
                    "{{feature}}",
                ),
            ],
            "short",
            8,
            43,
            w=8,
        ),
        _panel(
            16,
            "Unseen categories per second by feature",
            [
                (
                    "sum by (feature) "
                    f"(rate({n.total(n.FEATURE_UNSEEN_CATEGORY)}{{{_MV}}}[{rate}]))",
                    "{{feature}}",
                ),
            ],
            "short",
            16,
            43,
            w=8,
        ),
    ]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard model (schema of Grafana 10/11)."""
    return {
        "uid": DASHBOARD_UID,
        "title": "kfp-automl serving",
        "tags": ["kfp-automl"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                },
                _variable("model", f"label_values({n.MODEL_INFO}, model)"),
                _variable("version", f'label_values({n.MODEL_INFO}{{model=~"$model"}}, version)'),
            ]
        },
        "panels": panels(),
    }


def render_configmap() -> dict[str, Any]:
    """The ConfigMap that carries the dashboard JSON."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP_NAME,
            "labels": {"app.kubernetes.io/name": "automl-serving", SIDECAR_LABEL: "1"},
        },
        "data": {"kfp-automl-serving.json": json.dumps(dashboard(), indent=2) + "\n"},
    }
