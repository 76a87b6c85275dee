"""Time and connection limits of the HTTP server each worker runs, for slow and greedy clients.

BentoML 1.4 starts every worker's uvicorn server itself (`_bentoml_impl.worker.service`),
with uvicorn's "auto" HTTP protocol (h11 here), no limit on connections, a 5 s keep-alive,
no limit on how long a client may take to send its headers, and only BentoML's
`traffic.timeout` (60 s until the first byte of the answer) on a body sent slowly. `install`
points uvicorn's "auto" protocol at LimitedH11Protocol before the worker builds its server
(the Bento's service module calls it on import); what it adds, per connection:

- header timeout: from a connection's first byte (or its opening) to the end of a request's
  headers; then 408 (or, if nothing was sent, just the close).
- body timeouts: the whole body within `body_timeout_s` of its headers, and no pause between
  bytes longer than `body_idle_timeout_s` while the server is reading; then 408 if nothing
  was answered yet, else the close (a body still arriving after an early 413/415).
- connection limit: a connection opened while the worker holds `max_connections` gets 503
  for every path but the health and metrics ones, so probes and scrapes are still answered.
- keep-alive: an idle connection stays open `keep_alive_s` between requests, longer than the
  60 s a proxy (ingress-nginx, cloud load balancers) may keep an idle upstream connection.

Every refusal carries the project's JSON error body and `connection: close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from kfp_automl.runtime.names import READY_ENDPOINT, STATUS_ENDPOINT
from kfp_automl.runtime.records import RecordError
from kfp_automl.serving.limits import ServerLimits

log = logging.getLogger("kfp_automl.serving")

# answered over the connection limit too: the kubelet's probes and Prometheus' scrapes
EXEMPT_PATHS = frozenset({"/livez", "/healthz", READY_ENDPOINT, STATUS_ENDPOINT, "/metrics"})
_FD_HEADROOM = 256  # descriptors a worker needs besides its connections (files, pipes, sockets)


_limits = ServerLimits()


def install(limits: ServerLimits) -> None:
    """Serve HTTP in this process with `limits` (call before the worker starts uvicorn)."""
    global _limits
    from uvicorn import config

    _limits = limits
    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{LimitedH11Protocol.__name__}"
    config.HTTP_PROTOCOLS["h11"] = f"{__name__}:{LimitedH11Protocol.__name__}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < wanted:
            log.warning(
                "max_connections %d needs %d file descriptors; the hard limit allows %d",
                limits.max_connections,
                wanted,
                hard,
            )


def error_body(problem: str, reason: str) -> bytes:
    return json.dumps({"error": RecordError(None, None, problem, reason).as_dict()}).encode()


class _Refusals:
    """Counts refusals by reason and logs them at most once a minute per worker; `count`,
    once the service has set it (count_refusals_with), also adds each to its metrics."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.logged = time.monotonic()
        self.count: Callable[[str], None] | None = None

    def add(self, reason: str, counted: bool = True) -> None:
        if counted and self.count is not None:
            try:
                self.count(reason)
            except Exception:  # a metric must never cost the connection its answer
                log.exception("counting a refused connection failed")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.logged >= 60:
            shown = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
            log.warning("connections refused or cut off in the last minute: %s", shown)
            self.counts, self.logged = {}, now


_refusals = _Refusals()


def count_refusals_with(count: Callable[[str], None]) -> None:
    """Add every connection this worker refuses or cuts off (reasons header_timeout,
    body_timeout, too_many_connections) to `count` as well, e.g. Monitor.rejected."""
    _refusals.count = count


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body timeouts and a connection limit."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = _limits
        self.timeout_keep_alive = self.limits.keep_alive_s  # type: ignore[assignment]  # a float
        self.app = _LimitedApp(self.app, self)
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # what the timer waits for: "headers", "body" or None
        self._deadline = self._idle_deadline = 0.0
        self._admitted = True
        self.request_task: asyncio.Task | None = None
        self.cut_task: asyncio.Task | None = None  # a request task this protocol cancelled

    # ---- connection events ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._admitted = len(self.connections) <= self.limits.max_connections
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._watch_headers()  # the first bytes of the next request on this connection
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._follow()

    def admitted(self) -> bool:
        """Whether this connection is within the limit (checked again while it is not)."""
        if not self._admitted:
            self._admitted = len(self.connections) <= self.limits.max_connections
        return self._admitted

    # ---- timers -----------------------------------------------------------------------
    def _follow(self) -> None:
        """Move the timer on to what the connection now waits for."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._phase == "body":
                self._stop_timer()
            if self._phase is None and self.conn.trailing_data[0]:  # a pipelined request
                self._watch_headers()
        elif state is h11.SEND_BODY:
            now = self.loop.time()
            if self._phase != "body":
                self._stop_timer()
                self._phase, self._deadline = "body", now + self.limits.body_timeout_s
                self._schedule(min(self._deadline, now + self.limits.body_idle_timeout_s))
            self._idle_deadline = now + self.limits.body_idle_timeout_s
        elif self._phase is not None:
            self._stop_timer()

    def _watch_headers(self) -> None:
        self._stop_timer()
        self._phase = "headers"
        self._schedule(self.loop.time() + self.limits.header_timeout_s)

    def _schedule(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if self._phase == "headers" and state is h11.IDLE:
            self._phase = None
            received = bool(self.conn.trailing_data[0])
            self._cut(
                "header_timeout",
                f"the request headers did not arrive within {self.limits.header_timeout_s:g} s",
                answer=received,
            )
        elif self._phase == "body" and state is h11.SEND_BODY:
            now = self.loop.time()
            if self.flow.read_paused:  # the server is not reading: not the client's pause
                self._idle_deadline = now + self.limits.body_idle_timeout_s
            if now >= self._deadline or now >= self._idle_deadline:
                self._phase = None
                problem = (
                    f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                    f"(or paused over {self.limits.body_idle_timeout_s:g} s)"
                )
                self._cut("body_timeout", problem, answer=True)
            else:
                self._schedule(min(self._deadline, self._idle_deadline))
        else:
            self._phase = None

    def _cut(self, reason: str, problem: str, answer: bool) -> None:
        """Answer 408 where a response can still be sent, then close the connection.

        Only a 408 sent is counted in the service's metrics: a connection that sent nothing,
        or a request already answered (a 413 before its body), is logged but not counted."""
        cycle = self.cycle if self.conn.their_state is not h11.IDLE else None
        answered = answer and (cycle is None or not cycle.response_started)
        _refusals.add(reason, counted=answered)
        if answered:
            self.transport.write(_raw_response(408, error_body(problem, reason)))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app reads a disconnect; what it sends is dropped
            cycle.message_event.set()
            task = self.request_task
            if task is not None and not task.done():
                self.cut_task = task
                task.cancel()
        self.transport.close()


def _raw_response(status: int, body: bytes) -> bytes:
    """A whole HTTP/1.1 response, written past h11 (which may be mid-request)."""
    phrase = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _LimitedApp:
    """The ASGI app as one connection sees it: the connection limit, and its cut requests."""

    def __init__(self, app: Any, protocol: LimitedH11Protocol):
        self.app, self.protocol = app, protocol

    async def __call__(self, scope, receive, send) -> None:
        protocol = self.protocol
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] not in EXEMPT_PATHS and not protocol.admitted():
            _refusals.add("too_many_connections")
            limit = protocol.limits.max_connections
            problem = f"the server holds its limit of {limit} connections; retry shortly"
            return await _send_error(send, 503, error_body(problem, "too_many_connections"))
        task = asyncio.current_task()
        protocol.request_task = task
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if task is None or protocol.cut_task is not task:
                raise
            task.uncancel()  # cancelled by the protocol after a body timeout: answered
        finally:
            if protocol.request_task is task:
                protocol.request_task = None


async def _send_error(send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
