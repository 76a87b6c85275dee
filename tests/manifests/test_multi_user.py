"""Multi-user Kubeflow: runs start in the user's profile namespace, not in the namespace of the
Ray cluster or of the serving Deployment.

- The Ray cluster's NetworkPolicies (manifests/tuning) admit pipeline pods of Kubeflow profile
  namespaces to the Ray ports, by the label the profile controller puts on those namespaces,
  and nothing else new: evaluated here with the NetworkPolicy ingress rules (podSelector,
  namespaceSelector, both in one peer, ports) on the rendered objects, for pods in several
  namespaces. No CNI enforces anything here.
- docs/guides/permissions.md: its `kubectl apply -k` / `kubectl kustomize` directories render,
  its `kubectl create secret` commands create the Secrets (and keys) the compiled pipeline
  reads, and it names the namespace label the Ray policy selects.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.manifests.render import ROOT, find, kubectl, one, render

PROFILE_LABEL = {"app.kubernetes.io/part-of": "kubeflow-profile"}
PIPELINE_POD = {"pipelines.kubeflow.org/v2_component": "true"}
RAY_NS = "kfp-automl"
PROFILE_NS = "kubeflow-user-example-com"
CONTROL_PORTS = (8265,)  # the dashboard/Jobs API, where the tune step submits its search
RAY_ONLY_PORTS = (6379, 10001)  # GCS and Ray Client: the cluster's own pods only
DOC = ROOT / "docs" / "guides" / "permissions.md"
COMPILED = ROOT / "pipelines" / "compiled" / "training.yaml"


def _selected(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions) selects `labels`; {} selects all."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ns_labels(namespace: str, extra: dict | None = None) -> dict:
    return {"kubernetes.io/metadata.name": namespace, **(extra or {})}


def _peer_admits(peer: dict, policy_ns: str, pod: dict, ns: str, ns_labels: dict) -> bool:
    if "ipBlock" in peer:
        return False  # pod traffic inside the cluster is matched by selectors here
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if ns_sel is None and ns != policy_ns:
        return False  # a podSelector alone: pods of the policy's own namespace
    if ns_sel is not None and not _selected(ns_sel, ns_labels):
        return False
    return pod_sel is None or _selected(pod_sel, pod)


def admitted(policies, target: dict, port: int, pod: dict, ns: str, ns_labels: dict) -> bool:
    """Whether a TCP connection from `pod` (labels) in namespace `ns` to `port` of a pod with
    labels `target` (in the policies' namespace) is allowed by the Ingress rules."""
    chosen = [
        p
        for p in policies
        if _selected(p["spec"]["podSelector"], target)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not chosen:
        return True  # no policy isolates the pod
    for p in chosen:
        for rule in p["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(
                x.get("port") == port and x.get("protocol", "TCP") == "TCP" for x in ports
            ):
                continue
            peers = rule.get("from")
            if not peers or any(
                _peer_admits(q, p["metadata"]["namespace"], pod, ns, ns_labels) for q in peers
            ):
                return True
    return False


@pytest.fixture(scope="module")
def ray():
    objects = render("tuning")
    cluster = one(objects, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    # KubeRay adds these to the pods it creates
    head = {**head, "ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    policies = find(objects, "NetworkPolicy")
    assert {p["metadata"]["namespace"] for p in policies} == {RAY_NS}
    return policies, head


def test_pipeline_pods_of_a_profile_namespace_reach_the_ray_head(ray):
    policies, head = ray
    profile = _ns_labels(PROFILE_NS, PROFILE_LABEL)
    for port in CONTROL_PORTS:
        assert admitted(policies, head, port, PIPELINE_POD, PROFILE_NS, profile), port


def test_pipeline_pods_of_the_ray_namespace_still_reach_it(ray):
    policies, head = ray
    for port in CONTROL_PORTS:
        assert admitted(policies, head, port, PIPELINE_POD, RAY_NS, _ns_labels(RAY_NS)), port


@pytest.mark.parametrize(
    "pod, ns, ns_labels",
    [
        # a notebook or any other pod of a profile namespace
        ({"notebook-name": "nb"}, PROFILE_NS, _ns_labels(PROFILE_NS, PROFILE_LABEL)),
        # a pipeline-labelled pod of a namespace that is no Kubeflow profile
        (PIPELINE_POD, "default", _ns_labels("default")),
        (PIPELINE_POD, "kubeflow", _ns_labels("kubeflow")),
        # the profile label on the pod, not on its namespace
        ({**PIPELINE_POD, **PROFILE_LABEL}, "default", _ns_labels("default")),
    ],
)
def test_no_other_pod_reaches_the_ray_ports(ray, pod, ns, ns_labels):
    policies, head = ray
    for port in (*CONTROL_PORTS, 8080, 52365):
        assert not admitted(policies, head, port, pod, ns, ns_labels), (port, pod, ns)


def test_profile_pipeline_pods_reach_only_the_control_ports(ray):
    policies, head = ray
    profile = _ns_labels(PROFILE_NS, PROFILE_LABEL)
    for port in (*RAY_ONLY_PORTS, 8080, 52365, 6380, 20000):  # GCS, client, metrics, raylet...
        assert not admitted(policies, head, port, PIPELINE_POD, PROFILE_NS, profile), port
        assert not admitted(policies, head, port, PIPELINE_POD, RAY_NS, _ns_labels(RAY_NS)), port
    # the evaluator itself: the cluster's own pods reach any port, monitoring the metrics
    ray_pod = {"ray.io/cluster": head["ray.io/cluster"]}
    for port in (*RAY_ONLY_PORTS, 20000):
        assert admitted(policies, head, port, ray_pod, RAY_NS, _ns_labels(RAY_NS)), port
    monitoring = _ns_labels("monitoring")
    assert admitted(policies, head, 8080, {"app": "prometheus"}, "monitoring", monitoring)
    assert not admitted(policies, head, 6379, {"app": "prometheus"}, "monitoring", monitoring)


def test_the_profile_selector_is_the_label_the_docs_name(ray):
    policies, _ = ray
    selectors = [
        peer["namespaceSelector"]
        for p in policies
        for rule in p["spec"].get("ingress") or []
        for peer in rule.get("from") or []
        if "namespaceSelector" in peer and "podSelector" in peer
    ]
    assert selectors == [
        {"matchLabels": {"kubernetes.io/metadata.name": RAY_NS}},
        {"matchLabels": PROFILE_LABEL},
    ]
    text = DOC.read_text()
    [(key, value)] = PROFILE_LABEL.items()
    assert f"{key}: {value}" in text or f"{key}={value}" in text


# ---- docs/guides/permissions.md ------------------------------------------------------------


def _commands(text: str) -> list[list[str]]:
    """The shell commands of the page's bash blocks (continuation lines joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def test_every_kustomize_directory_of_the_page_renders(tmp_path):
    commands = _commands(DOC.read_text())
    dirs = []
    for cmd in commands:
        if cmd[:2] == ["kubectl", "apply"] and "-k" in cmd:
            dirs.append(cmd[cmd.index("-k") + 1])
        elif cmd[:2] == ["kubectl", "kustomize"]:
            dirs.append(cmd[2])
    ours = [d for d in dirs if d.startswith("manifests/")]
    assert "manifests/deploy-access/base" in ours and "manifests/tuning" in ours, dirs
    copies = {cmd[3]: cmd[2] for cmd in commands if cmd[:2] == ["cp", "-r"]}
    for d in ours:
        if "$" not in d:
            assert render(d.removeprefix("manifests/")), d
            continue
        # a copy the page makes (of the example overlay): it renders where the page puts it
        source = copies[d]
        tree = tmp_path / "repo"
        shutil.copytree(ROOT / "manifests" / "deploy-access", tree / "manifests" / "deploy-access")
        target = tree / d.replace("$PROFILE", PROFILE_NS)
        shutil.copytree(ROOT / source, target)
        done = subprocess.run(
            [kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert {o["kind"] for o in yaml.safe_load_all(done.stdout) if o} == {"Role", "RoleBinding"}


def _pipeline_secrets() -> dict[str, set[str]]:
    """Secret name -> the keys the compiled pipeline's steps read from it (their own namespace)."""
    _, platform = yaml.safe_load_all(COMPILED.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    out: dict[str, set[str]] = {}
    for cfg in executors.values():
        for s in cfg.get("secretAsEnv", []):
            out.setdefault(s["secretName"], set()).update(m["secretKey"] for m in s["keyToEnv"])
    return out


def _secret_commands(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, name, {key: value}) of every `kubectl -n NS create secret generic NAME`."""
    out = []
    for cmd in _commands(text):
        if cmd[:2] == ["kubectl", "-n"] and cmd[3:6] == ["create", "secret", "generic"]:
            sources = [a for a in cmd if a.startswith("--from-")]
            assert all(a.startswith("--from-literal=") for a in sources), cmd
            literals = [a.removeprefix("--from-literal=") for a in sources]
            out.append((cmd[2], cmd[6], dict(lit.split("=", 1) for lit in literals)))
        else:
            assert "secret" not in cmd, f"a Secret command this test does not read: {cmd}"
    return out


def test_the_pages_secret_commands_create_what_the_pipeline_reads():
    wanted = _pipeline_secrets()
    assert {"kfp-automl-storage", "automl-ray-auth"} <= set(wanted)
    commands = _secret_commands(DOC.read_text())
    # every Secret the pipeline reads, in the namespace its pods run in: the profile
    assert {name for ns, name, _ in commands if ns == "$PROFILE"} == set(wanted)
    for ns, name, keys in commands:
        assert name in wanted and keys and set(keys) <= wanted[name], (ns, name, keys)
    # the tune step's token is the Ray cluster's own: the same value in both namespaces
    ray_ns = one(render("tuning"), "RayCluster")["metadata"]["namespace"]
    tokens = {ns: keys for ns, name, keys in commands if name == "automl-ray-auth"}
    assert set(tokens) == {"$PROFILE", ray_ns}
    assert tokens["$PROFILE"] == tokens[ray_ns] == {"auth_token": "$RAY_TOKEN"}


def test_the_page_gives_the_ray_address_of_the_shared_cluster():
    cluster = one(render("tuning"), "RayCluster")
    service = f"{cluster['metadata']['name']}-head-svc"  # KubeRay's name for the head Service
    address = f"http://{service}.{cluster['metadata']['namespace']}.svc.cluster.local:8265"
    assert address in DOC.read_text()
    assert "ray://" not in DOC.read_text()  # Ray Client is refused by the tune step
