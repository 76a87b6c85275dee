"""The training pipeline's deploy branch through kfp.local, against the recording stand-in.

With `deploy_namespace` set, the deploy step runs after promote (nested `dsl.If` on the
parameter) and talks to the stand-in API server through a kubeconfig, exactly as a pod would
with its kubeconfig; the BENTO_URL it applies is the Bento artifact's URI.
A run without `deploy_namespace` sends nothing: tests/integration/test_pipeline_local.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfp_automl.bentos.lookup import _archive_tag
from tests.deploy.conftest import FIXTURE
from tests.support.kube_apiserver import write_kubeconfig

pytestmark = pytest.mark.slow

DEP = "/apis/apps/v1/namespaces/ml-serving/deployments/automl-serving"


def test_pipeline_deploys_the_promoted_bento(api, small_churn_csv, tmp_path, monkeypatch):
    from kfp_automl.pipelines.local import run_pipeline

    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api.host)))
    params = dict(
        data=str(small_churn_csv),
        target="churn",
        families="linear",
        time_budget_s=30,
        max_trials=2,
        registry_root=str(tmp_path / "registry"),  # empty: the first model is deployed
        deploy_namespace="ml-serving",
        deploy_manifests=str(FIXTURE),
    )
    summary = run_pipeline(params, tmp_path / "out")
    assert summary["deploy"] is True
    version = summary["bento_tag"].split(":")[1]
    dep = next(r.body for r in api.state.calls() if r.method == "PATCH" and r.path == DEP)
    url = dep["spec"]["template"]["spec"]["initContainers"][0]["env"][0]["value"]
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == version
    # the URL is the Bento artifact's URI: the archive the package step wrote
    assert _archive_tag(Path(url)) == summary["bento_tag"]
    assert sum(r.method == "PATCH" for r in api.state.calls()) == 9
    release = next(Path(summary["pipeline_run_dir"]).rglob("deploy-model/release"))
    record = json.loads(release.read_text())
    assert record["deployed"] is True and record["namespace"] == "ml-serving"
    assert "deploy" in (tmp_path / "out" / "run.log").read_text()
