"""The training pipeline's deploy branch through kfp.local, against the recording stand-in.

With `deploy_namespace` set, a model the gate passes is rolled out first and promoted only
once its rollout succeeded; the deploy step talks to the stand-in API server through a
kubeconfig, exactly as a pod would with its kubeconfig, and the BENTO_URL it applies is the
Bento artifact's URI. Two runs share one registry and one stand-in: the first makes a champion
and serves it, the second passes the gate but its rollout never becomes ready.
A run without `deploy_namespace` sends nothing: tests/integration/test_pipeline_local.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kfp_automl.bentos.lookup import _archive_tag
from kfp_automl.errors import PipelineFailed
from tests.deploy.conftest import FIXTURE
from tests.support.kube_apiserver import StandInApiServer, write_kubeconfig

pytestmark = pytest.mark.slow

DEP = "/apis/apps/v1/namespaces/ml-serving/deployments/automl-serving"


def _served(api) -> tuple[str, str]:
    """(version label, BENTO_URL) of the live Deployment."""
    template = api.state.objects[DEP]["spec"]["template"]
    env = template["spec"]["initContainers"][0]["env"][0]
    return template["metadata"]["labels"]["app.kubernetes.io/version"], env["value"]


@pytest.fixture(scope="module")
def runs(small_churn_csv, tmp_path_factory):
    """Run 1 (rollout ready), then run 2 (passes the gate, rollout never ready): the stand-in,
    the registry root, and what each run left."""
    from kfp_automl.pipelines.local import run_pipeline
    from kfp_automl.registry.registry import Registry

    tmp = tmp_path_factory.mktemp("pipeline-deploy")
    params = dict(
        data=str(small_churn_csv),
        target="churn",
        families="linear",
        time_budget_s=30,
        max_trials=2,
        registry_root=str(tmp / "registry"),  # empty: the first model passes the gate
        deploy_namespace="ml-serving",
        deploy_manifests=str(FIXTURE),
        deploy_timeout_s=2,
    )
    with StandInApiServer() as api, pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(write_kubeconfig(tmp / "kc", api.host)))
        first = run_pipeline(params, tmp / "first")
        served_first = _served(api)
        champion_first = Registry(tmp / "registry").champion(first["model_tag"].split(":")[0])
        api.state.rollout[served_first[0]] = "ready"
        api.state.default_rollout = "never"  # any other version never becomes ready
        second = {**params, "min_improvement": -1.0}  # any challenger passes the gate
        with pytest.raises(PipelineFailed) as failed:
            run_pipeline(second, tmp / "second")
        yield {
            "api": api,
            "registry": tmp / "registry",
            "first": first,
            "first_dir": tmp / "first",
            "served_first": served_first,
            "champion_first": champion_first,
            "error": failed.value,
            "second_dir": tmp / "second",
        }


def test_a_passing_model_is_rolled_out_then_promoted(runs):
    api, summary, out, served = runs["api"], runs["first"], runs["first_dir"], runs["served_first"]
    assert summary["deploy"] is True
    version = summary["bento_tag"].split(":")[1]
    # the URL is the Bento artifact's URI: the archive the package step wrote
    assert served[0] == version and _archive_tag(Path(served[1])) == summary["bento_tag"]
    # with the digest the package step recorded in the registry, which fetch-bento checks
    env = api.state.objects[DEP]["spec"]["template"]["spec"]["initContainers"][0]["env"]
    digest = {e["name"]: e["value"] for e in env}["BENTO_SHA256"]
    assert digest == runs["champion_first"]["bento_sha256"] == summary["bento_sha256"]
    assert digest == hashlib.sha256(Path(served[1]).read_bytes()).hexdigest()
    first_run = [r for r in api.state.calls() if r.method == "PATCH"][:9]
    assert len(first_run) == 9 and first_run[3].path == DEP
    release = next(Path(summary["pipeline_run_dir"]).rglob("deploy-model/release"))
    record = json.loads(release.read_text())
    assert record["deployed"] is True and record["namespace"] == "ml-serving"
    assert runs["champion_first"]["version"] == summary["model_tag"].split(":")[1]
    # promoted only after the rollout succeeded
    log = (out / "run.log").read_text()
    live = log.index(f"version {version} is live in ml-serving/automl-serving")
    assert live < log.index(f"{summary['model_tag']} is the champion")


def test_a_rollout_that_never_becomes_ready_keeps_the_champion_served_and_unchanged(runs):
    from kfp_automl.registry.registry import Registry

    api, first, served_first = runs["api"], runs["first"], runs["served_first"]
    message = str(runs["error"])
    assert message.startswith("step deploy failed: DeployError: deploy of version ")
    assert f"rolled back to version {served_first[0]} (ready again)" in message
    # the registry's champion is still run 1's model; run 2's stays a challenger
    name, v1 = first["model_tag"].split(":")
    registry = Registry(runs["registry"])
    assert registry.champion(name)["version"] == v1
    stages = {v["version"]: v["stage"] for v in registry.versions(name)}
    assert len(stages) == 2 and sorted(stages.values()) == ["challenger", "champion"]
    # the served version is run 1's, as it was
    assert _served(api) == served_first
    # run 2's version was applied, then rolled back
    applied = {
        r.body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"]
        for r in api.state.calls()
        if r.method == "PATCH" and r.path == DEP
    }
    assert len(applied) == 2 and served_first[0] in applied
    assert " is the champion" not in (runs["second_dir"] / "run.log").read_text()  # no promote
