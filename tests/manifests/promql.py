"""Small helpers for the PromQL the manifests carry: metric names and promtool runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from kfp_automl.observability import dashboard as grafana_dashboard
from tests.manifests.render import one, render

# The request series BentoML 1.4 exports (bentoml/_internal/server/http/instruments.py,
# namespace bentoml_service); tests/integration/test_fetch_bento.py reads them from a
# live server.
BENTOML_SERIES = {
    "bentoml_service_request_total",
    "bentoml_service_request_duration_seconds_bucket",
    "bentoml_service_request_in_progress",
}
_NAME = re.compile(r"\b(automl_[a-z_]+|automl:[a-z_:]+|bentoml_[a-z_]+)\b")
# Grafana's template variables, replaced by values that keep the query's PromQL valid.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$version": ".*"}


def metric_names(expr: str) -> set[str]:
    """The kfp-automl and BentoML series an expression reads."""
    return set(_NAME.findall(expr))


def as_promql(grafana_query: str) -> str:
    """A Grafana query as plain PromQL: variables filled in, label_values(X, l) -> X."""
    for var, value in GRAFANA_VARIABLES.items():
        grafana_query = grafana_query.replace(var, value)
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", grafana_query, flags=re.S)
    return match.group(1) if match else grafana_query


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError(
            "promtool is not on PATH: install the Debian package prometheus (make system-deps)"
        )
    return path


def run_promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def check_rules(groups: dict, workdir: Path) -> str:
    path = workdir / "rules.yaml"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return run_promtool("check", "rules", str(path), cwd=workdir)


def evaluate(expr: str, series: list[dict], expected: list[dict], workdir: Path) -> None:
    """promtool test rules: `expr` over `series` (constant values) equals `expected` at 1m."""
    (workdir / "empty.yaml").write_text("groups: []\n")
    test = {
        "rule_files": ["empty.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": expr, "eval_time": "1m", "exp_samples": expected},
                ],
            }
        ],
    }
    (workdir / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    run_promtool("test", "rules", "test.yaml", cwd=workdir)


def dashboard_queries() -> list[str]:
    """Every query of the rendered dashboard ConfigMap (panels and variables)."""
    configmap = one(render("serving/base"), "ConfigMap", grafana_dashboard.CONFIGMAP_NAME)
    assert configmap["metadata"]["labels"][grafana_dashboard.SIDECAR_LABEL] == "1"
    (text,) = configmap["data"].values()
    board = json.loads(text)
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs
