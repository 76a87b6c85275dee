"""A local stand-in for the Kubernetes API server that records every request.

It serves what the deploy step needs and nothing more: discovery (/version, /apis, resource
lists), server-side apply (PATCH application/apply-patch+yaml) answered with the stored object,
and GET of stored objects. A Deployment's status comes from a per-version rollout plan the test
chooses ("ready", "never", "deadline", or "slow" = an outdated status first, then ready); a test
can also make a request fail with any HTTP status. The real `kubernetes` client talks to it.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# (group, version) -> [(plural, kind, namespaced)]
RESOURCES = {
    ("", "v1"): [
        ("configmaps", "ConfigMap", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
        ("secrets", "Secret", True),
        ("namespaces", "Namespace", False),
    ],
    ("apps", "v1"): [
        ("deployments", "Deployment", True),
        ("deployments/status", "Deployment", True),
    ],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("networking.k8s.io", "v1"): [("networkpolicies", "NetworkPolicy", True)],
    ("monitoring.coreos.com", "v1"): [
        ("servicemonitors", "ServiceMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
    ("keda.sh", "v1alpha1"): [("scaledobjects", "ScaledObject", True)],
    # served so that a test can see whether anything ever asks for them (the deploy step must not)
    ("rbac.authorization.k8s.io", "v1"): [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
}
VERSION_LABEL = "app.kubernetes.io/version"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any
    authorization: str = ""

    @property
    def discovery(self) -> bool:
        """Discovery reads (/version, /apis, resource lists): everything but namespaced objects."""
        return self.method == "GET" and "/namespaces/" not in self.path


@dataclass
class ApiState:
    """What the stand-in holds and how it behaves; tests set `rollout` and `failures`."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # version label of the Deployment's pod template -> "ready" | "never" | "deadline" | "slow"
    rollout: dict[str, str] = field(default_factory=dict)
    default_rollout: str = "ready"
    # (method, path) -> (HTTP status, reason[, times]); matched before anything else
    failures: dict[tuple[str, str], tuple] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failure(self, method: str, path: str) -> tuple | None:
        """The failure to answer with, if any; one given `times` is used up that many times."""
        with self.lock:
            fail = self.failures.get((method, path))
            if fail is not None and len(fail) == 3:
                if fail[2] <= 1:
                    del self.failures[(method, path)]
                else:
                    self.failures[(method, path)] = (fail[0], fail[1], fail[2] - 1)
            return fail

    def calls(self) -> list[Request]:
        """Every request but discovery, in order."""
        return [r for r in self.requests if not r.discovery]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _deployment_status(obj: dict[str, Any], plan: str, gets: int) -> dict[str, Any]:
    replicas = obj.get("spec", {}).get("replicas", 1)
    gen = obj["metadata"]["generation"]
    if plan == "slow" and gets <= 1:
        return {"observedGeneration": gen - 1, "replicas": replicas, "updatedReplicas": 0}
    status = {"observedGeneration": gen, "replicas": replicas, "updatedReplicas": replicas}
    if plan in ("ready", "slow"):
        status.update(availableReplicas=replicas, readyReplicas=replicas)
        cond = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    elif plan == "deadline":
        status.update(availableReplicas=0, unavailableReplicas=replicas)
        cond = {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": f'ReplicaSet "{obj["metadata"]["name"]}-abc" has timed out progressing.',
        }
    else:
        status.update(availableReplicas=0, unavailableReplicas=replicas)
        cond = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    status["conditions"] = [cond]
    return status


class _Handler(BaseHTTPRequestHandler):
    state: ApiState

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Request:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        req = Request(
            self.command,
            url.path,
            parse_qs(url.query),
            self.headers.get("Content-Type", ""),
            body,
            self.headers.get("Authorization", ""),
        )
        with self.state.lock:
            self.state.requests.append(req)
        return req

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        req = self._record()
        if (fail := self.state.failure("GET", req.path)) is not None:
            return self._send(fail[0], _status(fail[0], fail[1], f"{fail[1]} (stand-in)"))
        if req.path == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
        if req.path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if req.path == "/apis":
            groups = [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                    "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                }
                for g, v in RESOURCES
                if g
            ]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for (g, v), resources in RESOURCES.items():
            if req.path == (f"/apis/{g}/{v}" if g else f"/api/{v}"):
                listed = [
                    {"name": p, "singularName": "", "namespaced": n, "kind": k, "verbs": ["get"]}
                    for p, k, n in resources
                ]
                return self._send(
                    200,
                    {
                        "kind": "APIResourceList",
                        "groupVersion": f"{g}/{v}".lstrip("/"),
                        "resources": listed,
                    },
                )
        with self.state.lock:
            obj = copy.deepcopy(self.state.objects.get(req.path))
            self.state.gets[req.path] = self.state.gets.get(req.path, 0) + 1
            gets = self.state.gets[req.path]
        if obj is None:
            name = req.path.rsplit("/", 1)[-1]
            return self._send(404, _status(404, "NotFound", f'"{name}" not found'))
        if obj["kind"] == "Deployment":
            version = obj["spec"]["template"]["metadata"]["labels"].get(VERSION_LABEL, "")
            plan = self.state.rollout.get(version, self.state.default_rollout)
            obj["status"] = _deployment_status(obj, plan, gets)
        return self._send(200, obj)

    def do_PATCH(self) -> None:  # noqa: N802
        req = self._record()
        if (fail := self.state.failure("PATCH", req.path)) is not None:
            return self._send(fail[0], _status(fail[0], fail[1], f"{fail[1]} (stand-in)"))
        if req.content_type != "application/apply-patch+yaml":
            return self._send(415, _status(415, "UnsupportedMediaType", req.content_type))
        if not req.query.get("fieldManager"):
            return self._send(400, _status(400, "BadRequest", "fieldManager is required"))
        body = copy.deepcopy(req.body)  # the recorded request stays as the client sent it
        with self.state.lock:
            old = self.state.objects.get(req.path)
            meta = body.setdefault("metadata", {})
            if body.get("kind") == "Deployment" and "replicas" not in body.get("spec", {}):
                # a field no manager applies keeps its value (the HPA's), else the default 1
                body["spec"]["replicas"] = ((old or {}).get("spec") or {}).get("replicas", 1)
            generation = 1
            if old is not None:
                generation = old["metadata"]["generation"]
                if old.get("spec") != body.get("spec"):
                    generation += 1
            self.state.gets[req.path] = 0  # the rollout plan starts again
            meta["generation"] = generation
            meta["resourceVersion"] = str(len(self.state.requests))
            meta["uid"] = (
                (old or {}).get("metadata", {}).get("uid", f"uid-{len(self.state.objects)}")
            )
            self.state.objects[req.path] = body
        return self._send(200 if old else 201, body)


class StandInApiServer:
    """A threaded HTTP server on 127.0.0.1; `host` is what the client's Configuration needs."""

    def __init__(self) -> None:
        self.state = ApiState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> StandInApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_kubeconfig(path: Any, host: str, token: str = "stand-in-token") -> Any:
    """A kubeconfig whose current context points at `host` with a bearer token."""
    import yaml

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": host}}],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "deployer"}}],
        "current-context": "stand-in",
    }
    path.write_text(yaml.safe_dump(config))
    return path
