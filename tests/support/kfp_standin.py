"""A local stand-in of the Kubeflow Pipelines v2beta1 REST API that records every request.

No KFP API server can run on this machine, so the real `kfp.Client` talks to
this one: a threaded `http.server` on 127.0.0.1 that answers the calls the
client makes to create runs and recurring runs (healthz, experiments list and
create, runs create, recurring runs create) the way the KFP API server does,
and keeps each request (method, path, query, headers, JSON body) for the
tests to assert on. Paths may carry a prefix (the kube-apiserver service proxy
`/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy`).

Knobs: `require_token` (answer 401 without `Authorization: Bearer <it>`),
`force_status` (answer every API call with that status), `fail_runs` (answer
the next N run creations with 503), `multi_user` (healthz says multi-user),
`hold` ({(METHOD, route): seconds}: the next such call is answered that much later, after
its effect; e.g. ("POST", "runs") creates the run, then waits before saying so).
Runs are listed (GET runs) by experiment and exact display name, as the API filters them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1/"
NOW = "2026-11-22T04:00:00Z"


@dataclass
class Recorded:
    method: str
    path: str  # the API path, prefix removed: /apis/v2beta1/...
    full_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class KfpStandIn:
    require_token: str | None = None
    force_status: int | None = None
    fail_runs: int = 0
    multi_user: bool = False
    port_: int = 0  # 0: any free port
    requests: list[Recorded] = field(default_factory=list)
    experiments: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    recurring_runs: list[dict] = field(default_factory=list)
    hold: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port_), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> KfpStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> KfpStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def calls(self) -> list[tuple[str, str]]:
        """(method, API path) of every request so far, in order."""
        return [(r.method, r.path) for r in self.requests]

    # ------------------------------------------------------------ answers

    def _answer(self, method: str, path: str, query: dict, headers: dict, body: Any):
        token = self.require_token
        if token is not None and headers.get("authorization") != f"Bearer {token}":
            return 401, {"error": "unauthenticated", "code": 16, "message": "bad token"}
        if self.force_status is not None:
            return self.force_status, {"error": "forced", "message": f"forced {self.force_status}"}
        route = path[len(API) :] if path.startswith(API) else None
        if route == "healthz" and method == "GET":
            return 200, {
                "commit_sha": "stand-in",
                "tag_name": "2.5.0",
                "multi_user": self.multi_user,
            }
        if route == "experiments" and method == "GET":
            return 200, self._list_experiments(query)
        if route == "experiments" and method == "POST":
            exp = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": body["display_name"],
                "description": body.get("description") or "",
                "namespace": body.get("namespace") or "",
                "created_at": NOW,
                "storage_state": "AVAILABLE",
            }
            self.experiments.append(exp)
            return 200, exp
        if route == "runs" and method == "GET":
            return 200, self._list_runs(query)
        if route == "runs" and method == "POST":
            if self.fail_runs > 0:
                self.fail_runs -= 1
                return 503, {"error": "unavailable", "code": 14, "message": "try later"}
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": NOW}
            self.runs.append(run)
            return 200, run
        if route == "recurringruns" and method == "POST":
            cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron", "")
            if len(cron.split()) != 6:  # the API server parses it with robfig/cron
                return 400, {"code": 3, "message": f"invalid cron schedule {cron!r}"}
            rec = {
                **body,
                "recurring_run_id": str(uuid.uuid4()),
                "status": "ENABLED",
                "created_at": NOW,
            }
            self.recurring_runs.append(rec)
            return 200, rec
        return 404, {"error": "not found", "code": 5, "message": f"{method} {path}"}

    def _list_experiments(self, query: dict) -> dict:
        found = self.experiments
        if "filter" in query:
            predicates = json.loads(query["filter"])["predicates"]
            for p in predicates:
                assert p["key"] == "display_name" and p["operation"] in ("EQUALS", 1), p
                found = [e for e in found if e["display_name"] == p["stringValue"]]
        if query.get("namespace"):
            found = [e for e in found if e["namespace"] == query["namespace"]]
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _list_runs(self, query: dict) -> dict:
        found = self.runs
        if query.get("experiment_id"):
            found = [r for r in found if r.get("experiment_id") == query["experiment_id"]]
        if "filter" in query:
            for p in json.loads(query["filter"])["predicates"]:
                assert p["key"] == "display_name" and p["operation"] in ("EQUALS", 1), p
                found = [r for r in found if r["display_name"] == p["stringValue"]]
        found = list(reversed(found))  # newest first
        size = int(query.get("page_size") or 10)
        return {"runs": found[:size], "total_size": len(found)} if found else {}

    def _take_hold(self, method: str, path: str) -> float:
        route = path[len(API) :] if path.startswith(API) else path
        with self._lock:
            return self.hold.pop((method, route), 0.0)

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                at = parts.path.find(API)
                api_path = parts.path[at:] if at >= 0 else parts.path
                headers = {k.lower(): v for k, v in self.headers.items()}
                with standin._lock:
                    standin.requests.append(
                        Recorded(self.command, api_path, parts.path, query, headers, body)
                    )
                    status, answer = standin._answer(self.command, api_path, query, headers, body)
                time.sleep(standin._take_hold(self.command, api_path))
                data = json.dumps(answer).encode()
                with contextlib.suppress(OSError):  # the client may be gone (killed) by now
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        return Handler
