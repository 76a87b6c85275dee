"""manifests/tuning: what the Ray head may do with the Kubernetes API, and where it may connect.

- The head runs as the service account of rbac.yaml, bound to a Role named after the
  RayCluster (KubeRay then creates none of its own): read pods, get and patch this one
  RayCluster. No create, delete or exec of pods, no Secrets, no wildcard.
- That is exactly what KubeRay's autoscaler uses: Ray 2.60's own KubeRay node provider
  (ray/autoscaler/_private/kuberay/node_provider.py, the code the autoscaler sidecar runs)
  lists the cluster's pods, scales the worker group up and removes a worker, against a TLS
  stand-in of the API server; every request it makes is allowed by the Role (the RBAC
  matching of tests/manifests/test_deploy_access.py), and every permission is used.
- The service account's token is mounted into the autoscaler container only; the head's Ray
  container (where Ray jobs run their drivers) and the workers have none.
- The head's extra egress on 443/6443 goes to one address, set in kustomization.yaml (a
  placeholder until then), and nowhere else.

Not exercised: no API server or CNI runs here, and KubeRay's operator is not run: that it
reuses a Role and RoleBinding named after the cluster and keeps a head template's
automountServiceAccountToken comes from reading its code (ray-operator/controllers/ray).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.manifests.render import MANIFESTS, find, kubectl, one, render
from tests.manifests.test_deploy_access import allows, namespaced_access

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def objects():
    return render("tuning")


def _head_template(objects) -> dict:
    return one(objects, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]


def test_the_head_runs_as_its_own_account_bound_to_a_role_named_after_the_cluster(objects):
    cluster = one(objects, "RayCluster")
    sa, role, binding = (one(objects, k) for k in ("ServiceAccount", "Role", "RoleBinding"))
    head = _head_template(objects)
    assert head["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    # the names KubeRay looks up before it creates a Role and RoleBinding of its own
    assert role["metadata"]["name"] == binding["metadata"]["name"] == cluster["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    ns = cluster["metadata"]["namespace"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}
    ]
    assert {o["metadata"]["namespace"] for o in (sa, role, binding)} == {ns}
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")


def test_the_role_creates_no_pods_and_names_its_raycluster(objects):
    role = one(objects, "Role")
    cluster = one(objects, "RayCluster")["metadata"]["name"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayclusters"],
            "resourceNames": [cluster],
            "verbs": ["get", "patch"],
        },
    ]


def test_only_the_autoscaler_container_gets_the_token(objects):
    cluster = one(objects, "RayCluster")
    head = _head_template(objects)
    assert head["automountServiceAccountToken"] is False
    [volume] = [v for v in head["volumes"] if "projected" in v]
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"] == {"path": "token", "expirationSeconds": 3600}
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert sources[2]["downwardAPI"]["items"][0]["path"] == "namespace"
    [mount] = cluster["spec"]["autoscalerOptions"]["volumeMounts"]
    assert mount == {"name": volume["name"], "mountPath": TOKEN_PATH, "readOnly": True}
    for container in head["containers"]:  # the Ray container: the jobs' drivers run here
        assert volume["name"] not in {m["name"] for m in container.get("volumeMounts", [])}
    for group in cluster["spec"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]
        assert worker["automountServiceAccountToken"] is False
        assert not [v for v in worker.get("volumes", []) if "projected" in v]


def _egress(objects, node_type: str) -> list[dict]:
    labels = {"ray.io/cluster": "automl-ray", "ray.io/node-type": node_type}
    return [
        rule
        for p in find(objects, "NetworkPolicy")
        if all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
        for rule in p["spec"].get("egress", [])
    ]


def test_the_head_reaches_the_api_server_address_only_on_443_and_6443(objects):
    head, worker = _egress(objects, "head"), _egress(objects, "worker")
    extra = [r for r in head if r not in worker]  # what the head may and a worker may not
    [rule] = extra
    assert rule["to"] == [{"ipBlock": {"cidr": "192.0.2.1/32"}}]  # the placeholder
    assert {p["port"] for p in rule["ports"]} == {443, 6443}
    for r in head:
        assert r.get("to"), f"an egress rule to anywhere: {r}"
        for peer in r["to"]:
            if "ipBlock" in peer and peer["ipBlock"]["cidr"] == "0.0.0.0/0":
                assert {p["port"] for p in r["ports"]} == {443}  # the object store only
                assert "169.254.0.0/16" in peer["ipBlock"]["except"]
                assert "10.0.0.0/8" in peer["ipBlock"]["except"]


def test_the_api_server_address_is_set_in_the_kustomization(tmp_path):
    copy = tmp_path / "tuning"
    shutil.copytree(MANIFESTS / "tuning", copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("value: 192.0.2.1/32") == 1
    kustomization.write_text(text.replace("value: 192.0.2.1/32", "value: 10.0.0.12/32"))
    done = subprocess.run(
        [kubectl(), "kustomize", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rendered = [o for o in yaml.safe_load_all(done.stdout) if o]
    policy = one(rendered, "NetworkPolicy", "automl-ray-head-apiserver")
    assert policy["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.12/32"}}]


# ---- the real autoscaler's requests against the Role ------------------------------------------


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 it signed, and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    paths: dict[str, Path] = {}

    def issue(name: str, issuer=None, issuer_key=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        paths[f"{name}.crt"] = directory / f"{name}.crt"
        paths[f"{name}.key"] = directory / f"{name}.key"
        paths[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key

    ca, ca_key = issue("ca", ca=True)
    issue("server", ca, ca_key, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    issue("client", ca, ca_key)
    return paths


class _ApiServer:
    """HTTPS on 127.0.0.1 serving one RayCluster and its pods; records each request."""

    def __init__(self, cluster: dict, pods: list[dict], certs: dict[str, Path]):
        self.cluster, self.pods, self.requests = cluster, pods, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.requests.append((self.command, url.path, parse_qs(url.query), body))
                ns = server.cluster["metadata"]["namespace"]
                name = server.cluster["metadata"]["name"]
                if url.path == f"/apis/ray.io/v1/namespaces/{ns}/rayclusters/{name}":
                    return self._answer(server.cluster)
                if url.path == f"/api/v1/namespaces/{ns}/pods":
                    meta = {"resourceVersion": "7"}
                    return self._answer({"kind": "PodList", "metadata": meta, "items": server.pods})
                for pod in server.pods:
                    if url.path == f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}":
                        return self._answer(pod)
                return self._answer({"kind": "Status", "code": 404}, 404)

            do_GET = do_PATCH = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs["server.crt"], certs["server.key"])
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _pod(cluster: str, ns: str, name: str, node_type: str, group: str) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": "5",
            "labels": {
                "ray.io/cluster": cluster,
                "ray.io/node-type": node_type,
                "ray.io/group": group,
            },
        },
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.5",
            "containerStatuses": [{"state": {"running": {}}, "ready": True}],
        },
    }


AUTOSCALER = """
import json, sys
from ray.autoscaler._private.kuberay.node_provider import KubeRayNodeProvider
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

config = {"namespace": sys.argv[1], "disable_node_updaters": True,
          "disable_launch_config_check": True, "foreground_node_launch": True,
          "worker_liveness_check": False}
provider = KubeRayNodeProvider(config, sys.argv[2])
# one autoscaler update, as the sidecar runs it: read, scale the group up, remove a worker
nodes = provider.non_terminated_nodes({})
assert provider.safe_to_scale()
provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "cpu"}, 2)
provider.terminate_node([n for n in nodes if n.startswith(sys.argv[2] + "-cpu")][0])
provider.post_process()
print(json.dumps(sorted(nodes)))
"""


def test_the_real_autoscaler_needs_exactly_what_the_role_grants(objects, tmp_path):
    cluster = json.loads(json.dumps(one(objects, "RayCluster")))
    role = one(objects, "Role")
    name, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    cluster["metadata"]["resourceVersion"] = "3"
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = 1
    head = f"{name}-head-x1"
    pods = [
        _pod(name, ns, head, "head", "headgroup"),
        _pod(name, ns, f"{name}-cpu-worker-a1", "worker", "cpu"),
    ]
    certs = _certificates(tmp_path)
    api = _ApiServer(cluster, pods, certs)
    try:
        done = subprocess.run(
            [sys.executable, "-c", AUTOSCALER, ns, name],
            env={
                **os.environ,
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT_HTTPS": str(api.port),
                "RAY_HEAD_POD_NAME": head,
                "RAY_KUBERAY_CA_CERT_PATH": str(certs["ca.crt"]),
                # no token file here: a client certificate stands in for it
                "RAY_KUBERAY_CLIENT_CERT_PATH": str(certs["client.crt"]),
                "RAY_KUBERAY_CLIENT_KEY_PATH": str(certs["client.key"]),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        api.httpd.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == sorted(p["metadata"]["name"] for p in pods)
    checks = [namespaced_access(m, path, q) for m, path, q, _ in api.requests]
    used = {(a.verb, a.group, a.resource) for a in checks if a is not None}
    assert None not in checks, api.requests  # nothing outside the namespace
    for access in checks:
        assert allows(role, access), access
    assert used == {
        ("get", "", "pods"),
        ("list", "", "pods"),
        ("get", "ray.io", "rayclusters"),
        ("patch", "ray.io", "rayclusters"),
    }
    granted = {
        (verb, group, resource)
        for rule in role["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert used == granted  # every permission the Role grants is used
    [patch] = [body for m, _, _, body in api.requests if m == "PATCH"]
    paths = {op["path"] for op in patch}
    assert paths == {"/spec/workerGroupSpecs/0/replicas", "/spec/workerGroupSpecs/0/scaleStrategy"}
