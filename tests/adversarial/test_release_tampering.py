"""A tampered release record on the live Deployment never reaches the API server.

The deploy step reads what to roll back to from the annotation `kfp-automl.io/release` on the
live serving Deployment. Anyone who can edit that annotation could otherwise make the next
failed deploy apply whatever it lists with the deploy step's credentials: a cluster-wide
binding, a Secret in another namespace, thousands of objects. The record is validated like a
new render (the serving contract, the deploy namespace, the kinds the serving manifests hold,
no cluster-scoped kind, bounded size and object count); a refused record stops the deploy
before anything is applied, with one line saying why.

Against the recording stand-in API server with the real kubernetes client: after v1 is live,
its record is replaced, then v2 (whose rollout never becomes ready) is deployed.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json

import pytest

from kfp_automl.components.deploy.deploy import deploy
from kfp_automl.contracts.release import RELEASE_ANNOTATION
from kfp_automl.errors import UserError
from tests.deploy.conftest import FIXTURE
from tests.support.kube_apiserver import StandInApiServer

NS = "serving"
DEP = f"/apis/apps/v1/namespaces/{NS}/deployments/automl-serving"
VERSION_LABEL = "app.kubernetes.io/version"


def _url(version: str) -> str:
    return f"s3://models/automl-churn/{version}.bento"


def _digest(version: str) -> str:
    return (version.encode().hex() * 64)[:64]


@pytest.fixture(scope="module")
def server():
    with StandInApiServer() as api:
        yield api


@pytest.fixture
def api(server):
    """The module's stand-in, emptied for each test."""
    with server.state.lock:
        server.state.objects.clear()
        server.state.requests.clear()
        server.state.rollout.clear()
        server.state.gets.clear()
        server.state.failures.clear()
    return server


@pytest.fixture
def cluster(api):
    from kubernetes import client

    from kfp_automl.components.deploy.kube import Cluster

    c = Cluster(client.ApiClient(client.Configuration(host=api.host)))
    yield c
    c.close()


def _deploy(cluster, version: str, timeout_s: float = 0.3):
    return deploy(
        cluster,
        FIXTURE.read_text(),
        _url(version),
        version,
        NS,
        bento_sha256=_digest(version),
        timeout_s=timeout_s,
        poll_s=0.02,
    )


def _record(api) -> dict:
    value = api.state.objects[DEP]["metadata"]["annotations"][RELEASE_ANNOTATION]
    return json.loads(gzip.decompress(base64.b64decode(value)))


def _encode(record: dict | bytes) -> str:
    raw = record if isinstance(record, bytes) else json.dumps(record).encode()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode()


BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "automl-serving-admin"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
    "subjects": [{"kind": "ServiceAccount", "name": "automl-serving", "namespace": NS}],
}
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "stolen", "namespace": "kube-system"},
    "stringData": {"token": "x"},
}


def _add(*objects):
    def edit(record):
        record["objects"] += copy.deepcopy(list(objects))
        return record

    return edit


def _secret_here(record):
    record["objects"].append({**SECRET, "metadata": {"name": "stolen"}})
    return record


def _move_deployment(record):
    dep = next(o for o in record["objects"] if o["kind"] == "Deployment")
    dep["metadata"]["namespace"] = "kube-system"
    return record


def _other_name(record):
    dep = next(o for o in record["objects"] if o["kind"] == "Deployment")
    dep["metadata"]["name"] = record["name"] = "evil"
    return record


def _many(record):
    cm = next(o for o in record["objects"] if o["kind"] == "ConfigMap")
    for i in range(500):
        record["objects"].append({**cm, "metadata": {"name": f"cm-{i}"}})
    return record


def _bad_url(record):
    record["bento_url"] = ""
    return record


def _sneaky_digest(record):
    """The record's digest no longer matches the one its Deployment's init container checks."""
    record["bento_sha256"] = "f" * 64
    return record


TAMPERED = {
    "a cluster-wide binding": (_add(BINDING), "ClusterRoleBinding"),
    "a Secret in another namespace": (_add(SECRET), "Secret"),
    "a Secret in the deploy namespace": (_secret_here, "Secret"),
    "the Deployment moved to another namespace": (_move_deployment, "kube-system"),
    "another Deployment's name": (_other_name, "'evil'"),
    "too many objects": (_many, "objects"),
    "an empty Bento URL": (_bad_url, "the Bento URL is empty"),
    "a digest unlike the Deployment's": (_sneaky_digest, "sha256"),
}


def _assert_refused_and_nothing_sent(api, cluster, mark: int, *phrases: str) -> None:
    with pytest.raises(UserError) as err:
        _deploy(cluster, "v2")
    message = str(err.value)
    assert "\n" not in message, message
    assert RELEASE_ANNOTATION in message and "refused" in message, message
    assert "nothing was applied" in message, message
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    after = api.state.calls()[mark:]
    assert [r for r in after if r.method != "GET"] == [], [(r.method, r.path) for r in after]
    paths = [r.path for r in api.state.requests]
    assert not any("clusterrolebindings" in p or "/kube-system/" in p for p in paths), paths
    assert not any("/secrets/" in p for p in paths), paths
    live = api.state.objects[DEP]["spec"]["template"]["metadata"]["labels"][VERSION_LABEL]
    assert live == "v1"  # the live version is as it was


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_record_is_refused_and_none_of_its_objects_are_sent(api, cluster, case):
    edit, phrase = TAMPERED[case]
    _deploy(cluster, "v1")
    record = edit(_record(api))
    api.state.objects[DEP]["metadata"]["annotations"][RELEASE_ANNOTATION] = _encode(record)
    api.state.rollout["v2"] = "never"
    mark = len(api.state.calls())
    _assert_refused_and_nothing_sent(api, cluster, mark, phrase)


def test_a_tampered_previous_release_is_refused_too(api, cluster):
    """A rerun after an attempt died mid-rollout rolls back to the record's `previous`: it is
    checked like the record itself."""
    _deploy(cluster, "v1")
    v1 = _record(api)
    record = {**copy.deepcopy(v1), "version": "v2", "bento_url": _url("v2")}
    record["bento_sha256"] = _digest("v2")
    dep = next(o for o in record["objects"] if o["kind"] == "Deployment")
    dep["metadata"]["labels"][VERSION_LABEL] = "v2"
    dep["spec"]["template"]["metadata"]["labels"][VERSION_LABEL] = "v2"
    for env in dep["spec"]["template"]["spec"]["initContainers"][0]["env"]:
        if env["name"] == "BENTO_URL":
            env["value"] = _url("v2")
        if env["name"] == "BENTO_SHA256":
            env["value"] = _digest("v2")
    record["previous"] = _add(BINDING)(copy.deepcopy(v1))
    live = api.state.objects[DEP]
    live["metadata"]["annotations"][RELEASE_ANNOTATION] = _encode(record)
    live["spec"]["template"]["metadata"]["labels"][VERSION_LABEL] = "v2"  # applied, not ready
    api.state.rollout["v2"] = "never"
    mark = len(api.state.calls())
    with pytest.raises(UserError) as err:
        _deploy(cluster, "v2")
    assert "ClusterRoleBinding" in str(err.value) and "nothing was applied" in str(err.value)
    assert [r for r in api.state.calls()[mark:] if r.method != "GET"] == []
    assert not any("clusterrolebindings" in r.path for r in api.state.requests)


@pytest.mark.parametrize(
    "value, phrase",
    [
        (_encode(b" " * (32 * 1024 * 1024)), "MiB"),  # a 32 MB record in ~32 KB: a gzip bomb
        (base64.b64encode(b"x" * 300_000).decode(), "KiB"),  # over what an annotation holds
        ("bm90IGd6aXA=", "not a kfp-automl.io/release record"),
        (_encode(b'{"format": 1, "objects": [], "objects": []}'), "twice"),
    ],
    ids=["gzip bomb", "oversized", "not gzip", "duplicate keys"],
)
def test_an_unreadable_record_is_refused_before_anything_is_applied(api, cluster, value, phrase):
    _deploy(cluster, "v1")
    api.state.objects[DEP]["metadata"]["annotations"][RELEASE_ANNOTATION] = value
    api.state.rollout["v2"] = "never"
    mark = len(api.state.calls())
    _assert_refused_and_nothing_sent(api, cluster, mark, phrase)


def test_an_untampered_record_is_still_rolled_back_to(api, cluster):
    from kfp_automl.components.deploy.deploy import DeployError

    _deploy(cluster, "v1")
    api.state.rollout["v2"] = "never"
    with pytest.raises(DeployError, match=r"rolled back to version v1 \(ready again\)"):
        _deploy(cluster, "v2")
    env = api.state.objects[DEP]["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert {e["name"]: e["value"] for e in env}["BENTO_SHA256"] == _digest("v1")
