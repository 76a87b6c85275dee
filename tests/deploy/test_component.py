"""deploy_model.python_func with artifacts in a tmp dir, against the stand-in API server."""

from __future__ import annotations

import json

import pytest
from kfp.dsl import Artifact, Model

from kfp_automl.components.deploy.component import deploy_model
from kfp_automl.contracts.decision import GateDecision
from tests.deploy.conftest import FIXTURE
from tests.support.kube_apiserver import write_kubeconfig

pytestmark = pytest.mark.slow  # starts the stand-in server

DEP = "/apis/apps/v1/namespaces/serving/deployments/automl-serving"
DIGEST = "c0ffee" * 10 + "c0ff"


def _artifacts(tmp_path, deploy: bool):
    bento = Model(name="bento", uri="gs://bucket/run-1/package-model/bento", metadata={})
    bento.metadata.update(
        {
            "bento_tag": "automl-churn:abc123",
            "model_tag": "automl-churn:abc123",
            "bento_sha256": DIGEST,  # as the package step records it
        }
    )
    decision = Artifact(name="decision", uri=str(tmp_path / "decision"), metadata={})
    gate = GateDecision(deploy, "better than the champion", "roc_auc", 0.9)
    gate.write(decision.path)  # as the gate step writes it
    decision.metadata.update(gate.metadata())
    release = Artifact(name="release", uri=str(tmp_path / "release"), metadata={})
    return bento, decision, release


def test_component_applies_the_bento_uri_with_kubeconfig_credentials(api, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api.host, "tok-c")))
    bento, decision, release = _artifacts(tmp_path, True)
    deploy_model.python_func(
        bento=bento,
        decision=decision,
        release=release,
        namespace="serving",
        manifests=str(FIXTURE),
        timeout_s=5,
    )
    dep = api.state.objects[DEP]
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert init["env"] == [
        {"name": "BENTO_URL", "value": "gs://bucket/run-1/package-model/bento"},
        {"name": "BENTO_SHA256", "value": DIGEST},
    ]
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "abc123"
    assert {r.authorization for r in api.state.requests} == {"Bearer tok-c"}
    assert release.metadata == {
        "version": "abc123",
        "namespace": "serving",
        "name": "automl-serving",
    }
    assert json.loads((tmp_path / "release").read_text())["previous_version"] is None


def test_component_deploys_nothing_when_the_gate_refused(api, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api.host)))
    bento, decision, release = _artifacts(tmp_path, False)
    deploy_model.python_func(
        bento=bento, decision=decision, release=release, namespace="serving", manifests="/none"
    )
    assert api.state.requests == []
    assert json.loads((tmp_path / "release").read_text())["deployed"] is False


def test_component_deploys_nothing_without_a_namespace_and_says_so(
    api, tmp_path, monkeypatch, capsys
):
    """The pipeline's deploy step runs before promote on every passing model; a run without
    deploy_namespace (a laptop) contacts no cluster and goes on to promote."""
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api.host)))
    bento, decision, release = _artifacts(tmp_path, True)
    deploy_model.python_func(bento=bento, decision=decision, release=release, namespace="")
    assert api.state.requests == []
    record = json.loads((tmp_path / "release").read_text())
    assert record == {"format": 1, "deployed": False, "reason": "deploy_namespace is empty"}
    out = capsys.readouterr().out
    assert "nothing deployed: deploy_namespace is empty" in out and out.count("\n") == 1
