"""The deploy step's API calls, recorded by a stand-in API server the real kubernetes client uses.

No Kubernetes API server runs here: these tests check the exact requests (order, paths, content
type, field manager, bodies) and the rollout/rollback decisions, not a real cluster's behaviour.
"""

from __future__ import annotations

import json

import pytest

from kfp_automl.components.deploy.deploy import DeployError, deploy, run
from kfp_automl.contracts.decision import GateDecision
from kfp_automl.contracts.release import RELEASE_ANNOTATION, Release
from kfp_automl.errors import UserError

pytestmark = pytest.mark.slow  # each test starts a (small, threaded) HTTP server

NS = "serving"
DEP = f"/apis/apps/v1/namespaces/{NS}/deployments/automl-serving"
APPLY_ORDER = [
    f"/api/v1/namespaces/{NS}/serviceaccounts/automl-serving",
    f"/api/v1/namespaces/{NS}/configmaps/automl-serving-dashboard",
    f"/api/v1/namespaces/{NS}/services/automl-serving",
    DEP,
    f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/automl-serving",
    f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/automl-serving",
    f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/automl-serving",
    f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/prometheusrules/automl-serving",
    f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/servicemonitors/automl-serving",
]


def _decision(deploy: bool, reason: str) -> GateDecision:
    return GateDecision(deploy=deploy, reason=reason, metric="roc_auc", challenger_score=0.8)


def url(v: str) -> str:
    return f"s3://models/automl-churn/{v}.bento"


def digest(v: str) -> str:
    return (v.encode().hex() * 64)[:64]


def _deploy(cluster, text, version, timeout_s=2.0):
    return deploy(
        cluster,
        text,
        url(version),
        version,
        NS,
        timeout_s=timeout_s,
        poll_s=0.02,
        bento_sha256=digest(version),
    )


def _calls(api, start=0):
    return [(r.method, r.path) for r in api.state.calls()[start:]]


def _patches(api, start=0):
    return [r for r in api.state.calls()[start:] if r.method == "PATCH"]


def _template_version(body):
    return body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"]


def _bento_url(body):
    return body["spec"]["template"]["spec"]["initContainers"][0]["env"][0]["value"]


def test_first_deploy_applies_everything_in_order_then_waits(api, cluster, manifests_text):
    outcome = _deploy(cluster, manifests_text, "v1")
    calls = _calls(api)
    # read the live Deployment (none yet), apply in order, then poll until rolled out
    assert calls[0] == ("GET", DEP)
    assert calls[1:10] == [("PATCH", p) for p in APPLY_ORDER]
    assert calls[10:] == [("GET", DEP)]  # ready at the first look
    for req in _patches(api):
        assert req.content_type == "application/apply-patch+yaml"
        assert req.query == {"fieldManager": ["kfp-automl"], "force": ["True"]}
        assert req.body["metadata"]["namespace"] == NS
    dep = next(r.body for r in _patches(api) if r.path == DEP)
    assert _template_version(dep) == "v1" and _bento_url(dep) == url("v1")
    init_env = dep["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert {"name": "BENTO_SHA256", "value": digest("v1")} in init_env  # fetch-bento checks it
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
    record = Release.decode(dep["metadata"]["annotations"][RELEASE_ANNOTATION], NS)
    assert record.version == "v1" and record.bento_url == url("v1")
    assert record.bento_sha256 == digest("v1")
    assert outcome.previous_version is None
    assert outcome.applied[3] == "Deployment/automl-serving" and len(outcome.applied) == 9
    # discovery happened too, through the client's own DynamicClient
    assert any(r.path == "/apis" for r in api.state.requests)


def test_a_slow_rollout_is_waited_for(api, cluster, manifests_text):
    api.state.rollout["v1"] = "slow"  # first status still shows the old generation
    outcome = _deploy(cluster, manifests_text, "v1")
    assert _calls(api)[10:] == [("GET", DEP), ("GET", DEP)]
    assert outcome.rollout.startswith("1/1 updated, 1 available")


def test_timeout_rolls_back_to_the_previous_version_and_fails(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    v1_bodies = [r.body for r in _patches(api)]
    mark = len(api.state.calls())
    api.state.rollout["v2"] = "never"
    with pytest.raises(DeployError) as err:
        _deploy(cluster, manifests_text, "v2", timeout_s=0.3)
    message = str(err.value)
    assert message.startswith("deploy of version v2 to serving/automl-serving failed: ")
    assert "not ready within 0.3s (1/1 updated, 0 available, 1 total)" in message
    assert message.endswith("rolled back to version v1 (ready again)")
    assert "\n" not in message
    calls = _calls(api, mark)
    assert calls[0] == ("GET", DEP)
    assert calls[1:10] == [("PATCH", p) for p in APPLY_ORDER]  # v2
    polls = [c for c in calls[10:] if c != ("GET", DEP)]
    rollback = [r for r in _patches(api, mark)][9:]
    assert [r.path for r in rollback] == APPLY_ORDER and polls == [
        ("PATCH", p) for p in APPLY_ORDER
    ]
    # the rollback re-applies exactly what v1 applied (its record annotation included)
    assert [r.body for r in rollback] == v1_bodies
    v2 = next(r.body for r in _patches(api, mark)[:9] if r.path == DEP)
    assert _template_version(v2) == "v2" and _bento_url(v2) == url("v2")
    live = api.state.objects[DEP]
    assert _template_version(live) == "v1" and _bento_url(live) == url("v1")
    assert calls[-1] == ("GET", DEP)


def test_the_live_record_names_the_release_a_failure_would_roll_back_to(
    api, cluster, manifests_text
):
    """What lets a rerun of a deploy that died mid-rollout find the version live before it."""
    _deploy(cluster, manifests_text, "v1")
    v1_objects = Release.decode(
        api.state.objects[DEP]["metadata"]["annotations"][RELEASE_ANNOTATION], NS
    ).objects
    _deploy(cluster, manifests_text, "v2")
    record = Release.decode(
        api.state.objects[DEP]["metadata"]["annotations"][RELEASE_ANNOTATION], NS
    )
    assert record.version == "v2" and record.previous is not None
    assert (record.previous.version, record.previous.bento_url) == ("v1", url("v1"))
    assert record.previous.objects == v1_objects and record.previous.previous is None


def test_a_deploy_keeps_the_autoscalers_replica_count(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    api.state.objects[DEP]["spec"]["replicas"] = 5  # the HPA scaled up under load
    mark = len(api.state.calls())
    outcome = _deploy(cluster, manifests_text, "v2")
    v2 = next(r.body for r in _patches(api, mark) if r.path == DEP)
    assert "replicas" not in v2["spec"]  # the HPA owns it; applying 2 would scale down
    assert api.state.objects[DEP]["spec"]["replicas"] == 5
    assert outcome.rollout == "5/5 updated, 5 available, 5 total"


def test_progress_deadline_exceeded_fails_before_the_timeout(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    api.state.rollout["v2"] = "deadline"
    with pytest.raises(DeployError, match="ProgressDeadlineExceeded") as err:
        _deploy(cluster, manifests_text, "v2", timeout_s=60)
    assert "rolled back to version v1 (ready again)" in str(err.value)
    assert api.state.gets[DEP] == 1  # one look at the rolled-back Deployment, no 60 s wait


def test_rollback_that_is_not_ready_either_says_so(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    api.state.rollout.update(v1="never", v2="never")
    with pytest.raises(DeployError) as err:
        _deploy(cluster, manifests_text, "v2", timeout_s=0.2)
    assert str(err.value).endswith(
        "rolled back to version v1 (not ready either: not ready within 0.2s (1/1 updated, 0 available, 1 total))"
    )


def test_first_deploy_that_never_gets_ready_fails_with_nothing_to_roll_back(
    api, cluster, manifests_text
):
    api.state.rollout["v1"] = "never"
    with pytest.raises(DeployError) as err:
        _deploy(cluster, manifests_text, "v1", timeout_s=0.2)
    message = str(err.value)
    assert "failed: not ready within 0.2s" in message
    assert "nothing to roll back to" in message and "kubectl -n serving rollout status" in message
    assert len(_patches(api)) == 9  # applied once, no rollback


def test_a_deployment_not_made_by_this_step_is_not_rolled_back(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    del api.state.objects[DEP]["metadata"]["annotations"][RELEASE_ANNOTATION]  # e.g. kubectl apply
    api.state.rollout["v2"] = "never"
    with pytest.raises(DeployError, match="nothing to roll back to"):
        _deploy(cluster, manifests_text, "v2", timeout_s=0.2)


@pytest.mark.parametrize(
    "status, reason, expected",
    [
        (403, "Forbidden", "HTTP 403 Forbidden: Forbidden (stand-in)"),
        (422, "Invalid", "HTTP 422 Unprocessable Entity: Invalid (stand-in)"),
    ],
)
def test_api_errors_on_first_deploy_are_one_clear_line(
    api, cluster, manifests_text, status, reason, expected
):
    api.state.failures[("PATCH", DEP)] = (status, reason)
    with pytest.raises(UserError) as err:
        _deploy(cluster, manifests_text, "v1")
    message = str(err.value)
    assert message == (
        f"deploy to serving/automl-serving: applying Deployment serving/automl-serving: {expected}"
    )
    assert [p.path for p in _patches(api)] == APPLY_ORDER[:4]  # stops at the refused object
    assert err.value.__suppress_context__  # raised `from None`: no chained traceback


def test_an_api_error_mid_apply_re_applies_the_previous_version(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    mark = len(api.state.calls())
    api.state.failures[("PATCH", APPLY_ORDER[4])] = (422, "Invalid", 1)  # the HPA, once
    with pytest.raises(DeployError) as err:
        _deploy(cluster, manifests_text, "v2")
    assert str(err.value) == (
        "deploy of version v2 to serving/automl-serving failed: applying HorizontalPodAutoscaler "
        "serving/automl-serving: HTTP 422 Unprocessable Entity: Invalid (stand-in); "
        "rolled back to version v1 (ready again)"
    )
    calls = _calls(api, mark)
    assert calls[1:6] == [("PATCH", p) for p in APPLY_ORDER[:5]]  # v2 up to the refused HPA
    assert calls[6:15] == [("PATCH", p) for p in APPLY_ORDER]  # all of v1 again
    assert calls[15:] == [("GET", DEP)]
    assert _template_version(api.state.objects[DEP]) == "v1"


def test_a_rollback_refused_too_says_both(api, cluster, manifests_text):
    _deploy(cluster, manifests_text, "v1")
    mark = len(api.state.calls())
    api.state.failures[("PATCH", APPLY_ORDER[4])] = (422, "Invalid")  # the HPA
    with pytest.raises(DeployError) as err:
        _deploy(cluster, manifests_text, "v2")
    assert str(err.value) == (
        "deploy of version v2 to serving/automl-serving failed: applying HorizontalPodAutoscaler "
        "serving/automl-serving: HTTP 422 Unprocessable Entity: Invalid (stand-in); "
        "the rollback to version v1 failed too: applying HorizontalPodAutoscaler "
        "serving/automl-serving: HTTP 422 Unprocessable Entity: Invalid (stand-in)"
    )
    del api.state.failures[("PATCH", APPLY_ORDER[4])]
    assert [r.path for r in _patches(api, mark)] == APPLY_ORDER[:5] + APPLY_ORDER[:5]
    live = api.state.objects[DEP]
    assert _template_version(live) == "v1"  # the Deployment went back before the HPA failed


def test_a_forbidden_read_of_the_live_deployment_stops_before_any_apply(
    api, cluster, manifests_text
):
    api.state.failures[("GET", DEP)] = (403, "Forbidden")
    with pytest.raises(UserError, match="reading Deployment serving/automl-serving: HTTP 403"):
        _deploy(cluster, manifests_text, "v1")
    assert _patches(api) == []


def test_connection_refused_is_one_clear_line(tmp_path, manifests_text):
    import socket

    from kubernetes import client

    from kfp_automl.components.deploy.kube import Cluster

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def factory():
        return Cluster(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}")))

    manifests = tmp_path / "serving.yaml"
    manifests.write_text(manifests_text)
    with pytest.raises(UserError) as err:
        run(
            bento_uri=url("v1"),
            bento_metadata={"bento_tag": "automl-churn:v1", "bento_sha256": digest("v1")},
            decision=_decision(True, "better"),
            release_path=str(tmp_path / "r.json"),
            namespace=NS,
            manifests=str(manifests),
            cluster_factory=factory,
        )
    message = str(err.value)
    assert message.startswith("deploy to serving/automl-serving: API discovery: cannot reach")
    assert "Connection refused" in message and "\n" not in message and "<" not in message
    assert not (tmp_path / "r.json").exists()


def test_run_deploys_and_records_the_release(api, tmp_path, manifests_text):
    from kubernetes import client

    from kfp_automl.components.deploy.kube import Cluster

    manifests = tmp_path / "serving.yaml"
    manifests.write_text(manifests_text)
    out = tmp_path / "release.json"
    outcome = run(
        bento_uri=url("x"),
        bento_metadata={
            "bento_tag": "automl-churn:uwpvhlhgfsxomax4",
            "model_tag": "automl-churn:uwpv",
            "bento_sha256": digest("x"),
        },
        decision=_decision(True, "no champion yet"),
        release_path=str(out),
        namespace=NS,
        manifests=str(manifests),
        timeout_s=2,
        cluster_factory=lambda: Cluster(client.ApiClient(client.Configuration(host=api.host))),
    )
    assert outcome.version == "uwpvhlhgfsxomax4"
    record = json.loads(out.read_text())
    assert record["deployed"] is True and record["version"] == "uwpvhlhgfsxomax4"
    assert record["bento_sha256"] == digest("x")
    assert record["applied"][3] == "Deployment/automl-serving"
    assert _bento_url(api.state.objects[DEP]) == url("x")


def test_run_refuses_a_bento_without_its_digest_before_any_api_call(tmp_path, manifests_text):
    def factory():
        raise AssertionError("no cluster may be contacted")

    manifests = tmp_path / "serving.yaml"
    manifests.write_text(manifests_text)
    with pytest.raises(UserError, match="records no bento_sha256") as err:
        run(
            bento_uri=url("x"),
            bento_metadata={"bento_tag": "automl-churn:v2"},  # as an earlier package step wrote
            decision=_decision(True, "better"),
            release_path=str(tmp_path / "release.json"),
            namespace=NS,
            manifests=str(manifests),
            cluster_factory=factory,
        )
    assert "\n" not in str(err.value)
    assert not (tmp_path / "release.json").exists()


def test_run_deploys_nothing_when_the_gate_said_no(tmp_path):
    def factory():
        raise AssertionError("no cluster may be contacted")

    out = tmp_path / "release.json"
    outcome = run(
        bento_uri=url("x"),
        bento_metadata={"bento_tag": "automl-churn:v2"},
        decision=_decision(False, "not better than the champion"),
        release_path=str(out),
        namespace=NS,
        manifests="/nonexistent.yaml",
        cluster_factory=factory,
    )
    assert not outcome.deployed
    assert json.loads(out.read_text()) == {
        "format": 1,
        "deployed": False,
        "reason": "not better than the champion",
    }


def test_a_rollout_that_fails_names_the_secrets_its_pods_need(api, cluster, manifests_text):
    """The step may not read Secrets; when the pods do not start it names the ones they need
    (the prod overlay's prediction store), as a missing Secret keeps a pod from starting."""
    import yaml

    docs = list(yaml.safe_load_all(manifests_text))
    dep = next(d for d in docs if d and d["kind"] == "Deployment")
    main = dep["spec"]["template"]["spec"]["containers"][0]
    main.setdefault("env", []).append(
        {"name": "AUTOML_LOG_STORE", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
    )
    main["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "opt", "key": "k", "optional": True}}}
    )
    api.state.rollout["v1"] = "never"
    with pytest.raises(DeployError) as err:
        _deploy(cluster, yaml.safe_dump_all(docs), "v1", timeout_s=0.2)
    message = str(err.value)
    assert "the pods start only once the Secret db exists in serving" in message
    assert "opt" not in message.split("(the pods start")[1]


def test_needed_secrets_of_the_shipped_overlays():
    from kfp_automl.components.deploy.deploy import needed_secrets
    from tests.manifests.render import one, render

    def of(name):
        return needed_secrets(one(render(name), "Deployment", "automl-serving"))

    assert of("serving/overlays/prod") == ["kfp-automl-prediction-store"]
    assert of("serving/base") == []  # storage and feedback tokens are optional
