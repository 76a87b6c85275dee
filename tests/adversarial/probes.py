"""What every refusal in the adversarial suite must look like, and the server's health after it.

A refused request gets a 4xx within REFUSAL_S with a JSON body in the project's error format
({"error": {"record", "field", "problem", "reason"}}); the server stays ready and its
workers' memory comes back near where it was.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Callable

import httpx
import psutil

from kfp_automl.serving.monitoring import REJECT_REASONS

REFUSAL_S = 2.0
ERROR_KEYS = {"record", "field", "problem", "reason"}


def assert_refused(response: httpx.Response, elapsed_s: float, status: int | None = None) -> dict:
    """The error object of a refusal (a 4xx answered within REFUSAL_S, in the error format)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert elapsed_s < REFUSAL_S, f"refused after {elapsed_s:.2f} s"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and isinstance(error["problem"], str), error
    return error


def timed_post(client: httpx.Client, url: str, **kw) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = client.post(url, **kw)
    return response, time.perf_counter() - start


def rejected(base: str, counter: str = "automl_requests_rejected_total") -> dict[str, float]:
    """`counter` (a refusal counter: /predict's, or automl_feedback_rejected_total) by reason,
    summed over the workers, read from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{re.escape(counter)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        reason = re.search(r'reason="([^"]*)"', m.group(1))
        if reason:
            out[reason.group(1)] = out.get(reason.group(1), 0.0) + float(m.group(2))
    return out


def assert_ready(base: str) -> None:
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200


def worker_rss(base_pid: int) -> int:
    """Resident bytes of the server's process tree (the CLI's process group leader and children)."""
    parent = psutil.Process(base_pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])


def server_pid(base: str) -> int:
    """The `bentoml serve` process (what `kfp-automl serve` became) listening on base's port."""
    port = base.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and "--port" in cmd and cmd[cmd.index("--port") + 1] == port:
            return proc.pid
    raise AssertionError(f"no server process for port {port}")


def raw_post(
    base: str,
    headers: list[bytes],
    body: bytes = b"",
    path: str = "/predict",
    timeout_s: float = 10.0,
) -> tuple[httpx.Response, float]:
    """POST `body` with exactly the header lines given (plus Host and Connection: close),
    over a plain socket: framing no HTTP client would send. The answer is parsed by
    http.client, and returned as an httpx.Response with the seconds it took."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    head = [f"POST {path} HTTP/1.1".encode(), f"Host: {host}".encode(), *headers]
    head.append(b"Connection: close")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = http.client.HTTPResponse(sock, method="POST")
        answer.begin()
        content = answer.read()
    elapsed = time.perf_counter() - start
    return httpx.Response(answer.status, headers=answer.getheaders(), content=content), elapsed


def assert_counted_refusal(
    base: str,
    send: Callable[[], tuple[httpx.Response, float]],
    status: int | None = None,
    reason: str | None = None,
) -> dict:
    """`send()` is refused (assert_refused), with `reason` if given; the refusal is counted
    once in automl_requests_rejected_total under its reason, and /readyz stays 200."""
    before = rejected(base)
    response, elapsed = send()
    error = assert_refused(response, elapsed, status)
    if reason is not None:
        assert error["reason"] == reason, error
    assert error["reason"] in REJECT_REASONS, error
    after = rejected(base)
    counted = after.get(error["reason"], 0.0) - before.get(error["reason"], 0.0)
    assert counted == 1, f"{error['reason']} counted {counted} times"
    assert_ready(base)
    return error


# The environment of a server that answers thousands of requests in one module: without
# BentoML's access log (one ~300-byte line a request), whose output pipe the test helpers
# read only when the server stops, so a full pipe would stall the server.
QUIET = {"BENTOML_CONFIG_OPTIONS": "services.logging.access.enabled=false"}
