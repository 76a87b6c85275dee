"""The monitoring manifests: generated from kfp_automl/observability and up to date,
valid for promtool, naming only series that exist, and the autoscaling queries right."""

from __future__ import annotations

import pytest
import yaml

from kfp_automl.observability import render as generate
from kfp_automl.observability import rules, series
from tests.manifests.promql import (
    BENTOML_SERIES,
    as_promql,
    check_rules,
    dashboard_queries,
    evaluate,
    metric_names,
)
from tests.manifests.render import MANIFESTS, ROOT, one, render

GENERATED = {
    "manifests/monitoring/prometheus-rules.yaml": rules.render_rules,
    "manifests/serving/base/prometheusrule.yaml": rules.render_prometheus_rule,
    "manifests/serving/base/grafana-dashboard.yaml": generate.render_dashboard,
}


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_committed_file_is_up_to_date(path):
    assert (ROOT / path).read_text() == GENERATED[path](), f"{path} is stale: run `make rules`"


def test_stale_check_can_fail(tmp_path):
    """What `make rules` writes differs as soon as a setting does."""
    assert (
        rules.render_prometheus_rule(window="5m")
        != (ROOT / "manifests/serving/base/prometheusrule.yaml").read_text()
    )


def test_make_rules_writes_all_three(tmp_path):
    out = {name: tmp_path / name for name in ("rules.yaml", "rule.yaml", "dash.yaml")}
    code = generate.main(
        [
            "--output",
            str(out["rules.yaml"]),
            "--prometheus-rule",
            str(out["rule.yaml"]),
            "--dashboard",
            str(out["dash.yaml"]),
        ]
    )
    assert code == 0
    rule = yaml.safe_load(out["rule.yaml"].read_text())
    assert rule["spec"] == yaml.safe_load(out["rules.yaml"].read_text())
    assert yaml.safe_load(out["dash.yaml"].read_text())["kind"] == "ConfigMap"


def test_prometheus_rule_is_the_single_source_and_passes_promtool(tmp_path):
    rule = one(render("serving/overlays/prod"), "PrometheusRule")
    assert rule["spec"] == rules.rule_groups()
    out = check_rules(rule["spec"], tmp_path)
    assert "SUCCESS" in out and "rules found" in out


def test_dashboard_queries_are_valid_promql(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 15
    groups = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(q)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    check_rules(groups, tmp_path)


def test_dashboard_reads_only_series_that_exist():
    """automl_* from the service's Monitor, automl:* from the rules, bentoml_* from BentoML."""
    from prometheus_client import CollectorRegistry

    from kfp_automl.serving import monitoring

    registry = CollectorRegistry()
    monitoring.Monitor(None, "m", "v", {"task": "classification"}, registry=registry)
    exported = set()
    for family in registry.collect():
        exported |= {s.name for s in family.samples} | {family.name}
    recorded = {
        r["record"] for g in rules.rule_groups()["groups"] for r in g["rules"] if "record" in r
    }
    # histograms and counters with no samples yet: their series names follow the type
    exported |= {
        f"{n}_{suffix}"
        for n in ("automl_inference_duration_seconds", "automl_batch_size_records")
        for suffix in ("bucket", "sum", "count")
    }
    exported |= {
        f"{n}_total"
        for n in (
            "automl_feature_missing",
            "automl_feature_out_of_range",
            "automl_feature_unseen_category",
            "automl_feature_bin",
        )
    }
    names = set().union(*(metric_names(q) for q in dashboard_queries()))
    assert names - exported - recorded - BENTOML_SERIES == set()
    # the drift row reads the recording rules, the quality row the service's counters
    assert {series.PSI, series.JS} <= names
    assert {"automl_feature_missing_total", "automl_feature_unseen_category_total"} <= names


# ---- the autoscalers' queries, evaluated by promtool on synthetic series ----------------------

_SERIES = "bentoml_service_request_in_progress"
_LABELS = 'service_name="automl-churn", service_version="v1", runner_name="kfp-automl"'


def _in_flight(namespace: str, pod: str, endpoint: str, values: str) -> dict:
    return {
        "series": f'{_SERIES}{{namespace="{namespace}", pod="{pod}", container="serving", '
        f'endpoint="{endpoint}", {_LABELS}}}',
        "values": values,
    }


SERIES = [
    _in_flight("kfp-automl", "automl-serving-a", "/predict", "3 3"),
    _in_flight("kfp-automl", "automl-serving-b", "/predict", "5 5"),
    # probes are requests in flight too, and must not count
    _in_flight("kfp-automl", "automl-serving-a", "/readyz", "1 1"),
    # another namespace's replicas of the same app
    _in_flight("kfp-automl-dev", "automl-serving-c", "/predict", "40 40"),
]


def test_prometheus_adapter_query_gives_requests_in_flight_per_pod(tmp_path):
    adapter = yaml.safe_load((MANIFESTS / "monitoring/prometheus-adapter/values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    # what prometheus-adapter sends for the HPA's Pods metric of namespace kfp-automl
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", _SERIES)
        .replace(
            "<<.LabelMatchers>>", 'namespace="kfp-automl",pod=~"automl-serving-a|automl-serving-b"'
        )
        .replace("<<.GroupBy>>", "pod")
    )
    expected = [
        {"labels": '{pod="automl-serving-a"}', "value": 3},
        {"labels": '{pod="automl-serving-b"}', "value": 5},
    ]
    evaluate(query, SERIES, expected, tmp_path)


def test_keda_query_gives_requests_in_flight_of_the_namespace(tmp_path):
    scaled = one(render("serving/overlays/prod-keda"), "ScaledObject")
    trigger = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    evaluate(trigger["metadata"]["query"], SERIES, [{"labels": "{}", "value": 8}], tmp_path)


def test_dashboard_layout_is_consistent():
    """Unique panel ids and refIds, panels inside Grafana's 24 columns, none overlapping."""
    from kfp_automl.observability.dashboard import dashboard

    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(set(refs)) == len(refs)
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("latency", "requests per second", "psi", "missing", "unseen", "in flight"):
        assert topic in titles
