"""Slow and greedy clients, over raw sockets against a real server: each is cut off in time.

One `kfp-automl serve` with short limits (header timeout 2 s, body idle 2 s, body 4 s, 16
connections per worker): headers sent a line at a time, a silent connection, a body trickled
byte by byte or stopped half-way, a body still arriving after an early answer, and more
connections than the limit. After each the server is ready, and normal clients are answered.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.adversarial.conftest import good_records, served
from tests.adversarial.probes import ERROR_KEYS, assert_ready, rejected

pytestmark = pytest.mark.slow

HEADER_S, BODY_IDLE_S, BODY_S, MAX_CONNECTIONS = 2.0, 2.0, 4.0, 16
MARGIN_S = 2.0  # timers on a busy 2-core machine
FLAGS = (
    *("--header-timeout", str(HEADER_S)),
    *("--body-idle-timeout", str(BODY_IDLE_S)),
    *("--body-timeout", str(BODY_S)),
    *("--max-connections", str(MAX_CONNECTIONS)),
)


@pytest.fixture(scope="module")
def base(small_bento, tmp_path_factory) -> Iterator[str]:
    with served(small_bento, tmp_path_factory.mktemp("slow-clients") / "home", *FLAGS) as url:
        yield url


@pytest.fixture(autouse=True)
def _ready_after(base):
    yield
    assert_ready(base)
    body = {"records": good_records(2)}
    assert httpx.post(f"{base}/predict", json=body, timeout=10).status_code == 200


@contextlib.contextmanager
def _connection(base: str) -> Iterator[socket.socket]:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def _trickle(sock: socket.socket, pieces: list[bytes], every_s: float, give_up_s: float):
    """Send `pieces` one per `every_s` (then nothing) until the server closes the connection.

    Returns (seconds until it closed, what it sent); fails if it is still open at `give_up_s`.
    """
    start, received, pending = time.monotonic(), b"", list(pieces)
    next_send = start
    while time.monotonic() - start < give_up_s:
        if pending and time.monotonic() >= next_send:
            try:
                sock.sendall(pending.pop(0))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start, received
            next_send += every_s
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return time.monotonic() - start, received
            received += chunk
    pytest.fail(f"the connection was still open after {give_up_s:.0f} s")


def _response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response (headers and a content-length body) from a keep-alive connection."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    code, headers, body = _response(data)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return code, headers, body


def _get_livez(sock: socket.socket) -> int:
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
    return _read_response(sock)[0]


def _assert_error(data: bytes, status: int, reason: str) -> None:
    code, headers, body = _response(data)
    assert code == status, data[:300]
    assert headers["content-type"] == "application/json", headers
    assert headers.get("connection") == "close", headers
    error = json.loads(body)["error"]
    assert set(error) == ERROR_KEYS and error["reason"] == reason, error


@contextlib.contextmanager
def _counted(base: str, reason: str, times: int = 1) -> Iterator[None]:
    """The block's refusals add `times` to automl_requests_rejected_total{reason}."""
    before = rejected(base).get(reason, 0.0)
    yield
    assert rejected(base).get(reason, 0.0) - before == times, reason


def _request_head(length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_headers_sent_a_line_at_a_time_are_cut_off_at_the_header_timeout(base):
    with _connection(base) as sock:
        lines = [b"POST /predict HTTP/1.1\r\n", *(b"X-Slow-%d: 1\r\n" % i for i in range(40))]
        with _counted(base, "header_timeout"):
            elapsed, received = _trickle(sock, lines, 0.5, HEADER_S + 10)
    assert HEADER_S - 0.5 < elapsed < HEADER_S + MARGIN_S, elapsed
    _assert_error(received, 408, "header_timeout")


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(base):
    with _connection(base) as sock, _counted(base, "header_timeout", times=0):  # nothing to answer
        elapsed, received = _trickle(sock, [], 1.0, HEADER_S + 10)
    assert elapsed < HEADER_S + MARGIN_S and received == b"", (elapsed, received)


def test_a_body_trickled_a_byte_at_a_time_gets_408_at_the_body_timeout(base):
    body = json.dumps({"records": good_records(1)}).encode()
    with _connection(base) as sock:
        sock.sendall(_request_head(len(body)))
        bytes_ = [body[i : i + 1] for i in range(len(body))]
        with _counted(base, "body_timeout"):
            elapsed, received = _trickle(sock, bytes_, 0.25, BODY_S + 10)
    assert BODY_S - 0.5 < elapsed < BODY_S + MARGIN_S, elapsed
    _assert_error(received, 408, "body_timeout")


def test_a_body_that_stops_half_way_gets_408_at_the_idle_timeout(base):
    body = json.dumps({"records": good_records(1)}).encode()
    with _connection(base) as sock:
        sock.sendall(_request_head(len(body)))
        with _counted(base, "body_timeout"):
            elapsed, received = _trickle(sock, [body[:20]], 1.0, BODY_S + 10)
    assert BODY_IDLE_S - 0.5 < elapsed < BODY_IDLE_S + MARGIN_S, elapsed
    _assert_error(received, 408, "body_timeout")


def test_a_body_still_arriving_after_an_early_answer_is_cut_off(base):
    """A 415 is answered before the body is read; the rest of the body cannot hold the socket."""
    with _connection(base) as sock:
        sock.sendall(_request_head(10_000, content_type="text/plain"))
        elapsed, received = _trickle(sock, [b"x"] * 100, 0.25, BODY_S + 10)
    assert elapsed < BODY_S + MARGIN_S, elapsed
    assert _response(received)[0] == 415


def test_a_body_at_a_normal_pace_is_answered(base):
    body = json.dumps({"records": good_records(20)}).encode()
    third = len(body) // 3
    with _connection(base) as sock:
        sock.sendall(_request_head(len(body)))
        for part in (body[:third], body[third : 2 * third], body[2 * third :]):
            time.sleep(0.5)
            sock.sendall(part)
        code, _, answer = _read_response(sock)
    assert code == 200, answer[:300]


def test_over_the_connection_limit_requests_are_refused_and_health_is_answered(base):
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):  # idle keep-alive connections, as a proxy's pool holds
            sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10)
            held.append(sock)
            assert _get_livez(sock) == 200
        with httpx.Client(timeout=10) as client, _counted(base, "too_many_connections"):
            refused = client.post(f"{base}/predict", json={"records": good_records(1)})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["reason"] == "too_many_connections"
            assert client.get(f"{base}/readyz").status_code == 200
            assert client.get(f"{base}/metrics").status_code == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    with httpx.Client(timeout=10) as client:
        answered = client.post(f"{base}/predict", json={"records": good_records(1)})
    assert answered.status_code == 200, answered.text


def test_an_idle_keep_alive_connection_outlives_a_proxys_reuse_delay(base):
    """Kept open longer than uvicorn's 5 s default, so a proxy reusing it is not reset."""
    with _connection(base) as sock:
        assert _get_livez(sock) == 200
        time.sleep(6)
        assert _get_livez(sock) == 200
