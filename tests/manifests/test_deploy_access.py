"""manifests/deploy-access: the deploy step's Role and RoleBinding in the serving namespace.

The package renders with the real `kubectl kustomize` and validates strictly; it holds a Role
and a RoleBinding only, with no wildcard, no Secret and no cluster-wide permission. Then the
real deploy code (components/deploy, on the real `kubernetes` client) deploys the real
rendered serving manifests (images/rendered/serving.yaml) to the stand-in API server of
tests/support/kube_apiserver.py, once successfully and once with a rollback, and every
request it recorded is turned into what Kubernetes authorizes (verb, API group, resource,
name) by Kubernetes' URL conventions: each must be allowed by the Role, and each permission
the Role grants must be used by one of them.

No real API server runs here: the RBAC matching below is written from Kubernetes' rule
semantics (k8s.io/kubernetes plugin/pkg/auth/authorizer/rbac: apiGroups, resources, verbs,
resourceNames), and the `create` check of a server-side apply that creates an object from
the API server's PATCH handler (k8s.io/apiserver pkg/endpoints/handlers/patch.go authorizes
`create` with the object's name). The package was never applied to a cluster.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, replace
from urllib.parse import parse_qs

import pytest
import yaml

from tests.manifests.render import ROOT, render

BASE = "deploy-access/base"
EXAMPLE = "deploy-access/overlays/example"
KEDA = "deploy-access/overlays/keda"
SERVING = ROOT / "images" / "rendered" / "serving.yaml"
# each Role with the serving manifests it is for, and the kinds the deploy step applies of them
_COMMON_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceMonitor",
    "PrometheusRule",
}
PAIRS = {
    "prod": (BASE, None, _COMMON_KINDS | {"HorizontalPodAutoscaler"}),
    "prod-keda": (KEDA, "serving/overlays/prod-keda", _COMMON_KINDS | {"ScaledObject"}),
}
APPLY = "application/apply-patch+yaml"
K8S_VERSIONS = ("1.30.0", "1.37.0")


@dataclass(frozen=True, order=True)
class Access:
    """One authorization check of a namespaced request: what RBAC rules are matched against."""

    verb: str
    group: str
    resource: str  # plural, "resource/subresource" for a subresource
    name: str  # "" when the request names no object (a collection, a POST)
    namespace: str


# /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] and /apis/GROUP/VERSION/namespaces/NS/...
_NAMESPACED = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)"
    r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
# What API discovery reads: /version, /api, /api/v1, /apis, /apis/GROUP[/VERSION].
_DISCOVERY = re.compile(r"^/(?:version|api(?:/v1)?|apis(?:/[^/]+(?:/[^/]+)?)?)/?$")
# Subresources of the cluster-scoped Namespace object, not namespaced requests.
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


def _truthy(query: dict[str, list[str]], key: str) -> bool:
    return any(v.lower() in ("true", "1") for v in query.get(key, []))


def namespaced_access(method: str, path: str, query: dict[str, list[str]]) -> Access | None:
    """The (verb, group, resource, name) Kubernetes authorizes a request as; None when the
    request is not a namespaced resource request (discovery, cluster-scoped objects).

    GET of a named object is `get`, of a collection `list`, either with watch=true `watch`;
    POST is `create`, PUT `update`, PATCH `patch`, DELETE of a named object `delete`, of a
    collection `deletecollection`.
    """
    m = _NAMESPACED.match(path)
    if m is None:
        return None
    group = m["group"] or ""
    resource, name, sub = m["resource"], m["name"] or "", m["sub"]
    if not group and not name and resource in _NAMESPACE_SUBRESOURCES:
        return None  # /api/v1/namespaces/NAME/status: the Namespace object's subresource
    if sub:
        resource = f"{resource}/{sub}"
    if method in ("GET", "HEAD"):
        verb = "watch" if _truthy(query, "watch") else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
    return Access(verb, group, resource, name, m["ns"])


def accesses(requests) -> list[Access]:
    """Every authorization check of the recorded namespaced requests, in order.

    A server-side apply (PATCH, application/apply-patch+yaml) is checked as `patch`; when the
    object does not exist yet the API server creates it and checks `create` too, with the
    name. The stand-in starts empty and no request here is refused, so the first apply of a
    path is the one that creates the object.
    """
    out, existing = [], set()
    for r in requests:
        access = namespaced_access(r.method, r.path, r.query)
        if access is None:
            continue
        out.append(access)
        if r.method == "PATCH" and r.content_type == APPLY:
            if r.path not in existing:
                out.append(replace(access, verb="create"))
            existing.add(r.path)
    return out


def _matches(values: list[str], value: str) -> bool:
    return "*" in values or value in values


def allows(role: dict, access: Access) -> bool:
    """RBAC: some rule of the Role (in the request's namespace) matches the request."""
    if role["metadata"]["namespace"] != access.namespace:
        return False
    for rule in role.get("rules", []):
        names = rule.get("resourceNames") or []
        if (
            _matches(rule.get("apiGroups", []), access.group)
            and _matches(rule.get("resources", []), access.resource)
            and _matches(rule.get("verbs", []), access.verb)
            and (not names or access.name in names)  # a nameless request never matches names
        ):
            return True
    return False


def granted(role: dict) -> set[Access]:
    """Every (verb, group, resource, name) the Role allows; finite, as every rule names names."""
    ns = role["metadata"]["namespace"]
    return {
        Access(verb, group, resource, name, ns)
        for rule in role["rules"]
        for group, resource, verb, name in itertools.product(
            rule["apiGroups"], rule["resources"], rule["verbs"], rule["resourceNames"]
        )
    }


def _one(objects, kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request) -> str:
    """The serving overlay whose render is deployed: prod (the HPA) or prod-keda (KEDA)."""
    return request.param


@pytest.fixture(scope="module")
def role(pair) -> dict:
    return _one(render(PAIRS[pair][0]), "Role")


@pytest.fixture(scope="module")
def serving_text(pair) -> str:
    """What the deploy step is given: images/rendered/serving.yaml, or the KEDA overlay's
    render (`kubectl kustomize manifests/serving/overlays/prod-keda`)."""
    overlay = PAIRS[pair][1]
    if overlay is None:
        return SERVING.read_text()
    return yaml.safe_dump_all(render(overlay))


@pytest.fixture(scope="module")
def recorded(role, serving_text):
    """The requests of the real deploy code: version v1 deployed (ready), then v2 not ready in
    time and rolled back to v1, into the Role's namespace, on the stand-in API server."""
    from kubernetes import client

    from kfp_automl.components.deploy.deploy import DeployError, deploy
    from kfp_automl.components.deploy.kube import Cluster
    from tests.support.kube_apiserver import StandInApiServer

    namespace = role["metadata"]["namespace"]
    text = serving_text
    with StandInApiServer() as api:
        cluster = Cluster(client.ApiClient(client.Configuration(host=api.host)))
        try:
            first = deploy(
                cluster,
                text,
                "s3://models/v1.bento",
                "v1",
                namespace,
                poll_s=0.02,
                bento_sha256="1" * 64,
            )
            assert first.deployed and first.previous_version is None
            api.state.rollout["v2"] = "never"
            with pytest.raises(DeployError, match=r"rolled back to version v1 \(ready again\)"):
                deploy(
                    cluster,
                    text,
                    "s3://models/v2.bento",
                    "v2",
                    namespace,
                    timeout_s=0.3,
                    poll_s=0.02,
                    bento_sha256="2" * 64,
                )
        finally:
            cluster.close()
        assert not api.state.failures  # nothing refused: every apply below succeeded
        requests = list(api.state.requests)
        stored = set(api.state.objects)
    patched = {r.path for r in requests if r.method == "PATCH"}
    assert patched and patched <= stored
    return requests


# ---- the package ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [BASE, EXAMPLE, KEDA])
def test_renders_a_namespaced_role_and_its_binding_only(name):
    objects = render(name)
    assert sorted(o["kind"] for o in objects) == ["Role", "RoleBinding"]
    role, binding = _one(objects, "Role"), _one(objects, "RoleBinding")
    assert role["apiVersion"] == binding["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    [subject] = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and subject["name"] == "default-editor"
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfp-automl"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", [BASE, EXAMPLE, KEDA])
def test_validates_strictly(name, version):
    import kubernetes_validate

    for o in render(name):
        kubernetes_validate.validate(o, version, strict=True)


def test_defaults_and_the_example_overlay_set_namespace_and_subject():
    base = _one(render(BASE), "RoleBinding")
    assert base["metadata"]["namespace"] == "kfp-automl"  # manifests/serving's namespace
    assert base["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "default-editor",
            "namespace": "kubeflow-user-example-com",
        }
    ]
    example = render(EXAMPLE)
    assert {o["metadata"]["namespace"] for o in example} == {"ml-serving"}
    assert _one(example, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "default-editor", "namespace": "team-a"}
    ]
    assert _one(example, "Role")["rules"] == _one(render(BASE), "Role")["rules"]


def test_no_wildcard_no_secret_no_cluster_permission(role):
    assert role["kind"] == "Role"  # never a ClusterRole
    assert role["rules"]
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "resourceNames", "verbs"}, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert rule[field] and not any("*" in v for v in rule[field]), (field, rule)
        assert "secrets" not in rule["resources"]  # the deploy step reads no Secret
        # escalate/bind/impersonate and friends are never needed to deploy
        assert set(rule["verbs"]) <= {"get", "patch", "create"}, rule
        # any apply may be the one that creates the object: patch and create go together
        assert {"patch", "create"} <= set(rule["verbs"]), rule


def test_the_serving_manifests_kinds_are_all_covered(pair, role, serving_text):
    """Every object the deploy step applies from the serving manifests (images/rendered/
    serving.yaml, or the prod-keda render) may be applied (patch, and create for a first
    deploy) under its own name; the Namespace is the one kind left out, because the deploy
    step drops it (the namespace must exist)."""
    from kfp_automl.components.deploy.render import parse_manifests
    from kfp_automl.components.deploy.render import render as render_release
    from tests.support.kube_apiserver import RESOURCES

    plural = {
        (f"{g}/{v}" if g else v, kind): (g, p)
        for (g, v), listed in RESOURCES.items()
        for p, kind, _ in listed
        if "/" not in p
    }
    objects = parse_manifests(serving_text)
    ns = role["metadata"]["namespace"]
    applied = render_release(
        copy.deepcopy(objects), "s3://m/v.bento", "v1", ns, bento_sha256="1" * 64
    ).objects
    assert {o["kind"] for o in objects} - {o["kind"] for o in applied} == {"Namespace"}
    kinds = set()
    for o in applied:
        group, resource = plural[(o["apiVersion"], o["kind"])]
        for verb in ("patch", "create"):
            access = Access(verb, group, resource, o["metadata"]["name"], ns)
            assert allows(role, access), f"the Role cannot apply {o['kind']}: {access}"
        kinds.add(o["kind"])
    assert kinds == PAIRS[pair][2]


# ---- the Role against the requests of the real deploy code ------------------------------------


@pytest.mark.slow  # starts the (small, threaded) stand-in API server, as tests/deploy does
def test_every_request_of_a_deploy_and_a_rollback_is_allowed(role, recorded):
    checks = accesses(recorded)
    assert {a.verb for a in checks} == {"get", "patch", "create"}
    refused = [a for a in checks if not allows(role, a)]
    assert refused == [], f"the Role refuses requests the deploy step makes: {refused}"
    assert {a.namespace for a in checks} == {role["metadata"]["namespace"]}


@pytest.mark.slow
def test_every_permission_of_the_role_is_used(role, recorded):
    """The converse: nothing granted that a deploy and a rollback do not use."""
    used = set(accesses(recorded))
    unused = granted(role) - used
    assert unused == set(), f"the Role grants what the deploy step never does: {sorted(unused)}"


@pytest.mark.slow
def test_outside_the_namespace_the_deploy_step_reads_discovery_only(recorded):
    """Discovery is allowed to every authenticated user (ClusterRole system:discovery): the
    deploy step needs no ClusterRole as long as it makes no other request."""
    others = [
        (r.method, r.path) for r in recorded if namespaced_access(r.method, r.path, r.query) is None
    ]
    assert others, "no discovery recorded"
    assert all(m == "GET" and _DISCOVERY.match(p) for m, p in others), others


@pytest.mark.slow
def test_both_checks_can_fail(role, recorded):
    """Without any one verb of any rule some request is refused; with one more verb (or name)
    in any rule something granted is never used."""
    checks = accesses(recorded)
    used = set(checks)
    for i, rule in enumerate(role["rules"]):
        for verb in rule["verbs"]:
            smaller = copy.deepcopy(role)
            smaller["rules"][i]["verbs"].remove(verb)
            assert any(not allows(smaller, a) for a in checks), (verb, rule)
        for field, extra in (("verbs", "list"), ("verbs", "update"), ("resourceNames", "x")):
            larger = copy.deepcopy(role)
            larger["rules"][i][field].append(extra)
            assert granted(larger) - used, (field, extra, rule)


def test_request_to_access_follows_the_url_conventions():
    ns = "ml-serving"
    dep = f"/apis/apps/v1/namespaces/{ns}/deployments"
    cases = {
        ("GET", f"{dep}/automl-serving", ""): Access(
            "get", "apps", "deployments", "automl-serving", ns
        ),
        ("GET", dep, ""): Access("list", "apps", "deployments", "", ns),
        ("GET", dep, "watch=true"): Access("watch", "apps", "deployments", "", ns),
        ("GET", f"{dep}/automl-serving", "watch=1"): Access(
            "watch", "apps", "deployments", "automl-serving", ns
        ),
        ("POST", dep, ""): Access("create", "apps", "deployments", "", ns),
        ("PUT", f"{dep}/a", ""): Access("update", "apps", "deployments", "a", ns),
        ("PATCH", f"{dep}/a/status", ""): Access("patch", "apps", "deployments/status", "a", ns),
        ("DELETE", f"{dep}/a", ""): Access("delete", "apps", "deployments", "a", ns),
        ("DELETE", dep, ""): Access("deletecollection", "apps", "deployments", "", ns),
        ("GET", f"/api/v1/namespaces/{ns}/secrets/s", ""): Access("get", "", "secrets", "s", ns),
    }
    for (method, path, query), expected in cases.items():
        assert namespaced_access(method, path, parse_qs(query)) == expected, (method, path)
    for path in ("/apis", "/api/v1", "/apis/apps/v1", f"/api/v1/namespaces/{ns}", "/version"):
        assert namespaced_access("GET", path, {}) is None, path
    assert namespaced_access("PUT", f"/api/v1/namespaces/{ns}/finalize", {}) is None


def test_the_rbac_matching_refuses_what_the_role_does_not_grant(role):
    ns = role["metadata"]["namespace"]
    allowed = Access("patch", "apps", "deployments", "automl-serving", ns)
    assert allows(role, allowed)
    for refused in (
        Access("create", "apps", "deployments", "", ns),  # a POST: no name to match
        Access("patch", "apps", "deployments", "another", ns),
        Access("patch", "apps", "deployments", "automl-serving", "elsewhere"),
        Access("patch", "extensions", "deployments", "automl-serving", ns),
        Access("list", "apps", "deployments", "", ns),
        Access("delete", "apps", "deployments", "automl-serving", ns),
        Access("patch", "apps", "deployments/scale", "automl-serving", ns),
        Access("get", "", "services", "automl-serving", ns),
        Access("get", "", "secrets", "automl-serving", ns),
        Access("patch", "", "configmaps", "automl-serving", ns),  # another kind's name
    ):
        assert not allows(role, refused), refused
