"""Hostile requests and crashes against a real `kfp-automl retrain-trigger` process.

- Bodies and headers: a 2 KB body nested 1,100 levels deep, duplicate keys, NaN, bytes that
  are not UTF-8, a non-ASCII Authorization header, a declared or chunked body over 1 MiB, a
  body that never finishes. Each is refused with a JSON error within 2 s, counted in the
  trigger's `automl_retrain_requests_rejected_total`, and the trigger keeps serving.
- Crashes: the trigger is SIGKILLed after it claimed a run and before the KFP API answered
  (the stand-in KFP server holds the request), once before the run was created and once
  after. The restarted trigger resumes the claim by its run name: exactly one run either way,
  and a repeated notification starts nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest

from tests.integration.test_retrain_trigger import TOKEN, Trigger, alert, notification
from tests.support.kfp_standin import KfpStandIn
from tests.support.servers import wait_for

pytestmark = pytest.mark.slow

REFUSAL_S = 2.0
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def kfp():
    with KfpStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def trigger(kfp, tmp_path_factory):
    t = Trigger(kfp.url, tmp_path_factory.mktemp("state"), "--body-timeout", "1")
    yield t
    t.stop()


def _rejected(trigger: Trigger, reason: str) -> float:
    return trigger.metric(f'automl_retrain_requests_rejected_total{{reason="{reason}"}}')


def _refused(response: httpx.Response, elapsed_s: float, status: int) -> str:
    """The error message of a refusal: `status`, a JSON body, within REFUSAL_S."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert elapsed_s < REFUSAL_S, f"answered after {elapsed_s:.2f} s"
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error, str) and error
    return error


def _post(trigger: Trigger, content: bytes, headers: dict | None = None) -> tuple:
    headers = {"authorization": f"Bearer {TOKEN}", **(headers or {})}
    t0 = time.monotonic()
    r = httpx.post(f"{trigger.url}/alerts", content=content, headers=headers, timeout=30)
    return r, time.monotonic() - t0


def _healthy(trigger: Trigger, kfp: KfpStandIn) -> None:
    """Still serving, and still starting runs for a real alert."""
    assert trigger.proc.poll() is None
    model = f"churn-{'abcdefghij'[len(kfp.runs) % 10]}"
    r = trigger.post(notification(alert(model, fingerprint=f"health-{time.monotonic()}")))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[" * 1100 + b"]" * 1100, "nests arrays/objects 1100 deep"),
        (b'{"version": "4", "version": "4", "status": "firing", "alerts": []}', "appears twice"),
        (b'{"version": "4", "status": "firing", "alerts": [], "x": NaN}', "NaN is not a JSON"),
        (b'{"version": "4", "receiver": "\xff\xfe", "status": "firing", "alerts": []}', "UTF-8"),
    ],
    ids=["deep", "duplicate-key", "nan", "not-utf8"],
)
def test_hostile_json_is_400_within_a_second(kfp, trigger, body, problem):
    before = _rejected(trigger, "bad_request")
    r, elapsed = _post(trigger, body, {"content-type": "application/json"})
    assert problem in _refused(r, elapsed, 400)
    assert elapsed < 1.0
    assert _rejected(trigger, "bad_request") == before + 1
    _healthy(trigger, kfp)


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer \xe9t\xe9-\xff\xfe-0123456789",  # latin-1 bytes
        "Bearer tökén-ünïcödé-0123456789".encode(),  # UTF-8 bytes
        f"Bearer {TOKEN}\xa0".encode("latin-1"),  # the right token and a non-breaking space
        b"\xc3\xa9 " + TOKEN.encode(),  # a non-ASCII scheme
    ],
)
def test_a_non_ascii_authorization_header_is_401_not_500(kfp, trigger, value):
    before = _rejected(trigger, "unauthorized")
    body = json.dumps(notification(alert("churn-a", fingerprint="non-ascii"))).encode()
    r, elapsed = _post(trigger, body, {"authorization": value})
    assert _refused(r, elapsed, 401) == "missing or wrong bearer token"
    assert r.headers["www-authenticate"] == "Bearer"
    assert _rejected(trigger, "unauthorized") == before + 1
    _healthy(trigger, kfp)


def _raw_request(port: int, *head_lines: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=REFUSAL_S)
    head = ["POST /alerts HTTP/1.1", "Host: trigger", f"Authorization: Bearer {TOKEN}"]
    sock.sendall(("\r\n".join([*head, *head_lines]) + "\r\n\r\n").encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) of the HTTP/1.1 response on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise AssertionError(f"connection closed before a response: {data[:200]!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(status_line.split()[1]), headers, body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_a_chunked_body_is_refused_as_soon_as_it_passes_1_mib(kfp, trigger):
    """The sender stops after 1.25 MiB of a body that would go on to 50 MiB: the answer
    comes at the limit, not after a body the trigger buffered whole."""
    before = _rejected(trigger, "too_large")
    sock = _raw_request(
        trigger.port, "Content-Type: application/json", "Transfer-Encoding: chunked"
    )
    try:
        t0 = time.monotonic()
        piece = b"x" * 65536
        for _ in range(20):  # 1.25 MiB, and no end of the body
            sock.sendall(_chunk(piece))
        status, headers, body = _read_response(sock)
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert status == 413 and elapsed < REFUSAL_S, (status, elapsed)
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": f"body over {MAX_BODY} bytes"}
    assert headers["connection"] == "close"  # the rest of the body is not read
    assert _rejected(trigger, "too_large") == before + 1
    _healthy(trigger, kfp)


def test_a_50_mib_chunked_body_sent_at_full_speed_is_not_buffered(kfp, trigger):
    before_rss = psutil.Process(trigger.proc.pid).memory_info().rss
    sock = _raw_request(
        trigger.port, "Content-Type: application/json", "Transfer-Encoding: chunked"
    )
    sent = [0]

    def send() -> None:
        piece = _chunk(b"[" * 1048576)
        with contextlib.suppress(OSError):  # the trigger closes the connection at the limit
            for _ in range(50):
                sock.sendall(piece)
                sent[0] += 1
            sock.sendall(b"0\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    t0 = time.monotonic()
    sender.start()
    try:
        status, _, body = _read_response(sock)
        elapsed = time.monotonic() - t0
    finally:
        sender.join(timeout=10)
        sock.close()
    assert status == 413 and elapsed < REFUSAL_S, (status, elapsed)
    assert "body over" in json.loads(body)["error"]
    grown = psutil.Process(trigger.proc.pid).memory_info().rss - before_rss
    assert grown < 20 * MAX_BODY, f"the trigger grew by {grown >> 20} MiB"
    _healthy(trigger, kfp)


def test_a_declared_length_over_1_mib_is_413_before_any_body_is_sent(kfp, trigger):
    before = _rejected(trigger, "too_large")
    sock = _raw_request(trigger.port, f"Content-Length: {50 << 20}")
    try:
        t0 = time.monotonic()
        status, headers, body = _read_response(sock)
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert status == 413 and elapsed < REFUSAL_S
    assert json.loads(body)["error"] == f"body over {MAX_BODY} bytes"
    assert _rejected(trigger, "too_large") == before + 1


def test_a_body_that_never_finishes_is_408_after_the_body_timeout(kfp, trigger):
    before = _rejected(trigger, "timeout")
    sock = _raw_request(trigger.port, "Content-Length: 1000")
    try:
        sock.sendall(b'{"version": "4"')  # and nothing more
        t0 = time.monotonic()
        status, _, body = _read_response(sock)
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert status == 408 and elapsed < 1 + REFUSAL_S, (status, elapsed)  # --body-timeout 1
    assert json.loads(body) == {"error": "body not received within 1 s"}
    assert _rejected(trigger, "timeout") == before + 1
    _healthy(trigger, kfp)


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [("GET", "/alerts", 405, "method_not_allowed"), ("POST", "/admin", 404, "not_found")],
)
def test_other_paths_and_methods_are_json_and_counted(trigger, method, path, status, reason):
    before = _rejected(trigger, reason)
    t0 = time.monotonic()
    r = httpx.request(method, f"{trigger.url}{path}", timeout=10)
    _refused(r, time.monotonic() - t0, status)
    assert _rejected(trigger, reason) == before + 1


# ---- a crash between the claim and the submission ---------------------------------------------


def _pending(state_dir) -> dict:
    path = state_dir / "retrain-state.json"
    return json.loads(path.read_text())["pending"] if path.exists() else {}


def _post_in_background(trigger: Trigger, body: dict) -> threading.Thread:
    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the trigger is killed while answering
            trigger.post(body)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _kill(trigger: Trigger) -> None:
    os.killpg(trigger.proc.pid, signal.SIGKILL)
    trigger.proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("held", "outcome"),
    [(("GET", "experiments"), "created"), (("POST", "runs"), "found")],
    ids=["killed-before-the-run-was-created", "killed-after-the-run-was-created"],
)
def test_a_trigger_killed_between_claim_and_submit_starts_the_run_exactly_once(
    tmp_path, held, outcome
):
    state = tmp_path / "state"
    body = notification(alert("churn-a"))
    with KfpStandIn() as kfp:
        kfp.hold[held] = 20.0  # the KFP API takes its time with this one call
        first = Trigger(kfp.url, state, cooldown=600)
        try:
            poster = _post_in_background(first, body)
            seen = wait_for(lambda: [r for r in kfp.requests if r.path.endswith(held[1])
                                     and r.method == held[0]], 30, f"{held} reaching KFP")  # fmt: skip
            assert seen and _pending(state), "the claim is written before the submission"
            _kill(first)  # SIGKILL: no cleanup, no answer to Alertmanager
        finally:
            first.stop()
        poster.join(timeout=10)
        [claim] = _pending(state).values()
        assert len(kfp.runs) == (1 if outcome == "found" else 0)
        second = Trigger(kfp.url, state, cooldown=600)  # the same state volume
        try:
            wait_for(lambda: not _pending(state), 30, "the restarted trigger to resume the claim")
            [run] = kfp.runs
            assert run["display_name"] == claim["run_name"]
            assert run["runtime_config"]["parameters"] == claim["arguments"]
            metric = f'automl_retrain_claims_resumed_total{{outcome="{outcome}"}}'
            assert second.metric(metric) == 1
            # Alertmanager's retry of the notification the killed trigger never answered
            r = second.post(body)
            assert r.status_code == 200 and r.json()["runs"] == [] and r.json()["deduplicated"] == 1
            saved = json.loads((state / "retrain-state.json").read_text())
            assert saved["models"]["churn-a"]["run_id"] == run["run_id"]
            time.sleep(1)
            assert len(kfp.runs) == 1
        finally:
            second.stop()
