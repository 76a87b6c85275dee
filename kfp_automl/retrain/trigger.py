"""The retrain trigger: an Alertmanager webhook receiver that starts training runs on KFP.

`POST /alerts` takes Alertmanager's webhook payload (version 4). Every alert in it that is
firing and carries the label `action: retrain` (the drift alerts of
kfp_automl/observability/rules.py, and quality alerts with the same label) asks for a run
of the training pipeline for the model in its `model` label. What an alert may choose is
bounded by kfp_automl/retrain/policy.py: the model must be one of `--allow-model`, its
`data_url` annotation is used only under an `--allow-data-prefix`, and a run of a model
without a champion in the registry never deploys. The alerts of one notification are
grouped by model, so five drifted features start one run. The run gets the trigger's
pipeline parameters (`--data`, `--target`, `--param`) and `model_name` set to the alert's
model (unless fixed with --model-name or --param).

A model or an alert fingerprint that started a run less than `--cooldown` seconds ago
starts nothing (counted as deduplicated), and at most `--max-runs-per-hour` runs start in
any hour over all models (more are refused and counted). This state lives in
`--state-dir` (kfp_automl/retrain/state.py): a run is claimed before it is submitted, and a
claim left pending by a crash or an unanswered submission is resumed by name (found on KFP,
or else created), so it is neither lost nor started twice. Resolved alerts start nothing.

Answers, always JSON: 200 with what was done; 401 without `Authorization: Bearer <token>`
(the token comes from the environment variable named by --token-env, filled from a
Kubernetes Secret); 400 for a body that is not a version 4 payload (bounded JSON nesting,
kfp_automl/runtime/jsonbody.py); 408 for a body not received within --body-timeout; 413 for
a body over 1 MiB, answered as soon as the limit is passed; 502 when the KFP API or the
registry cannot be reached or the API refuses the run, so Alertmanager sends the notification
again. `GET /metrics` (Prometheus) and `GET /healthz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kfp_automl.cluster import client as cluster
from kfp_automl.errors import UserError
from kfp_automl.retrain import policy
from kfp_automl.retrain.policy import DATA_ANNOTATION, MODEL_LABEL
from kfp_automl.retrain.state import Claim, RetrainState, Verdict
from kfp_automl.runtime import jsonbody

log = logging.getLogger("kfp_automl.retrain")

RETRAIN_LABEL = (
    "action",
    "retrain",
)  # set on the drift alerts by kfp_automl/observability/rules.py
TOKEN_ENV = "KFP_AUTOML_TRIGGER_TOKEN"  # default of --token-env
MAX_BODY = 1 << 20
# After refusing a request whose body is not read: how long, and how much of the rest, is
# read and dropped before the connection closes (closing on unread bytes resets it, and the
# client could lose the answer already sent)
LINGER_S = 1.0
LINGER_BYTES = 8 << 20
DEPLOY_PARAM = "deploy_namespace"


class Alert(BaseModel):
    """One alert of an Alertmanager webhook notification."""

    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    fingerprint: str
    startsAt: str = ""
    endsAt: str = ""
    generatorURL: str = ""


class Notification(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="allow")
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[Alert]


@dataclass
class TriggerConfig:
    """What a triggered run is, where it goes, and what an alert may ask for."""

    conn: cluster.Connection
    token: str
    state_dir: Path
    cooldown_s: float
    allowed_models: frozenset[str]
    pipeline: Path = cluster.DEFAULT_PIPELINE
    arguments: dict[str, Any] = field(default_factory=dict)
    experiment: str = cluster.DEFAULT_EXPERIMENT
    namespace: str | None = None
    service_account: str | None = None
    enable_caching: bool | None = None  # kfp.Client's: None keeps each step's compiled setting
    data_prefixes: tuple[str, ...] = ()  # empty: an alert's data_url is ignored
    max_runs_per_hour: int = 10
    registry: Any = None  # a kfp_automl.registry Registry: where champions are looked up
    body_timeout_s: float = 10.0
    resume_interval_s: float = 30.0


class Metrics:
    """The trigger's own Prometheus metrics, in a registry of their own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.received = Counter(
            "automl_retrain_alerts_received",
            "Alerts received, by alert status",
            ["status"],
            registry=self.registry,
        )
        self.ignored = Counter(
            "automl_retrain_alerts_ignored",
            "Alerts that ask for no run: resolved, or without the label action=retrain",
            ["reason"],
            registry=self.registry,
        )
        self.refused = Counter(
            "automl_retrain_alerts_refused",
            "Firing retrain alerts refused: a model or data URL not allowed, or the rate limit",
            ["reason"],
            registry=self.registry,
        )
        self.deduplicated = Counter(
            "automl_retrain_alerts_deduplicated",
            "Firing alerts that started no run: their model or fingerprint is in cooldown",
            registry=self.registry,
        )
        self.submitted = Counter(
            "automl_retrain_runs_submitted", "Training runs created on KFP", registry=self.registry
        )
        self.resumed = Counter(
            "automl_retrain_claims_resumed",
            "Pending claims completed after a crash or an unanswered submission: the run found "
            "on KFP, or created then",
            ["outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "automl_retrain_submit_failures",
            "Runs the KFP API did not create (unreachable or refused), or whose registry "
            "could not be read",
            registry=self.registry,
        )
        self.rejected = Counter(
            "automl_retrain_requests_rejected",
            "Webhook requests refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        for status in ("firing", "resolved"):
            self.received.labels(status)
        for reason in ("resolved", "no_retrain_label"):
            self.ignored.labels(reason)
        for reason in ("model_not_allowed", "data_url_not_allowed", "rate_limited"):
            self.refused.labels(reason)
        for outcome in ("found", "created"):
            self.resumed.labels(outcome)
        for reason in (
            "unauthorized",
            "bad_request",
            "too_large",
            "timeout",
            "not_found",
            "method_not_allowed",
            "disconnected",
        ):
            self.rejected.labels(reason)


class _Refused(Exception):
    """A request refused before its body was parsed: status, message, metric reason."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.reason = status, reason


class _ClosingResponse(JSONResponse):
    """A refusal of a request whose body is not (all) read: the answer goes out at once, the
    rest of the body is read and dropped for at most LINGER_S / LINGER_BYTES (never kept),
    then the connection closes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        dropped = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while dropped < LINGER_BYTES:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
                    dropped += len(message.get("body", b""))
        await send({"type": "http.response.body", "body": b""})


def _error(
    status: int, message: str, metrics: Metrics, reason: str, body_left: bool = False
) -> JSONResponse:
    metrics.rejected.labels(reason).inc()
    headers = {"www-authenticate": "Bearer"} if status == 401 else {}
    if body_left:  # the rest of the body is not read: the connection ends with this answer
        headers["connection"] = "close"
        return _ClosingResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )


def _authorized(request: Request, token: str) -> bool:
    # header values arrive as latin-1 text; compare bytes, so any byte is just a wrong token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip(" \t").encode("latin-1"), token.encode("utf-8")
    )


async def _read_body(request: Request, timeout_s: float) -> bytes:
    """The body, read as it streams in: refused once it passes MAX_BODY, or takes too long."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "bad content-length header", "bad_request")
        if int(declared) > MAX_BODY:
            raise _Refused(413, f"body over {MAX_BODY} bytes", "too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise _Refused(413, f"body over {MAX_BODY} bytes", "too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise _Refused(408, f"body not received within {timeout_s:g} s", "timeout") from None
    return b"".join(chunks)


def _parse(body: bytes) -> Notification:
    try:
        data = jsonbody.loads(body)
    except jsonbody.JsonBodyError as exc:
        raise ValueError(f"body is not JSON this trigger accepts: {exc}") from None
    try:
        return Notification.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValueError(
            f"not an Alertmanager webhook payload (version 4): {where}: {first['msg']}"
        ) from None


def _run_arguments(
    config: TriggerConfig, model: str, alerts: list[Alert]
) -> tuple[dict[str, Any], list[str]]:
    """The run's arguments for the due alerts of `model`, and notes on what was not taken."""
    arguments = dict(config.arguments)
    notes = []
    if model and "model_name" not in arguments:
        arguments["model_name"] = model
    data = next(
        (a.annotations[DATA_ANNOTATION] for a in alerts if a.annotations.get(DATA_ANNOTATION)), None
    )
    if data and config.data_prefixes:  # policy.refusal has checked it is under a prefix
        arguments["data"] = data
    elif data:
        notes.append(
            f"{model}: the alert's data_url is ignored (the trigger allows none: "
            "--allow-data-prefix); the run trains on --data"
        )
    return arguments, notes


def _run_name(model: str, alerts: list[Alert], claim_id: str) -> str:
    names = sorted({a.labels.get("alertname", "alert")[:60] for a in alerts})[:5]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"retrain {model} ({', '.join(names)}) {when} [{claim_id}]"


def _create(config: TriggerConfig, claim: Claim, resume: bool) -> tuple[cluster.Created, bool]:
    """The claim's run: found on KFP by its name when resuming, else created. (run, found)."""
    if resume:
        found = cluster.find_run(
            config.conn, claim.run_name, experiment=config.experiment, namespace=config.namespace
        )
        if found is not None:
            return found, True
    run = cluster.create_run(
        config.conn,
        claim.arguments,
        claim.run_name,
        experiment=config.experiment,
        namespace=config.namespace,
        pipeline=config.pipeline,
        service_account=config.service_account,
        enable_caching=config.enable_caching,
    )
    return run, False


def _refused_for_sure(exc: Exception) -> bool:
    """Whether a failed submission certainly created nothing (the API said no)."""
    if isinstance(exc, cluster.KfpApiError):
        return 400 <= exc.status < 500
    return isinstance(exc, UserError)


class _Outcome:
    """What one notification did, gathered for the answer."""

    def __init__(self):
        self.runs: list[dict] = []
        self.refused: list[dict] = []
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.ignored = 0
        self.deduplicated = 0

    def answer(self) -> JSONResponse:
        body: dict[str, Any] = {
            "runs": self.runs,
            "deduplicated": self.deduplicated,
            "ignored": self.ignored,
            "refused": self.refused,
        }
        if self.notes:
            body["notes"] = self.notes
        if self.errors:
            return JSONResponse({**body, "error": "; ".join(self.errors)}, status_code=502)
        return JSONResponse(body)


def create_app(config: TriggerConfig) -> Starlette:
    """The trigger's ASGI app."""
    metrics = Metrics()
    state = RetrainState(config.state_dir, config.cooldown_s, config.max_runs_per_hour)
    lock = asyncio.Lock()  # one notification at a time: two copies of one alert start one run

    async def alerts(request: Request) -> Response:
        if not _authorized(request, config.token):
            message = "missing or wrong bearer token"
            return _error(401, message, metrics, "unauthorized", body_left=_has_body(request))
        try:
            body = await _read_body(request, config.body_timeout_s)
            note = _parse(body)
        except _Refused as exc:
            return _error(exc.status, str(exc), metrics, exc.reason, body_left=exc.status != 400)
        except ClientDisconnect:  # gone before its body ended: nobody to answer
            return _error(400, "the client disconnected during its body", metrics, "disconnected")
        except ValueError as exc:
            return _error(400, str(exc), metrics, "bad_request")
        async with lock:
            return await _handle(note)

    def _refuse(out: _Outcome, alert: Alert, reason: str, message: str) -> None:
        metrics.refused.labels(reason).inc()
        model = alert.labels.get(MODEL_LABEL, "")[:100]
        out.refused.append({"alert": alert.fingerprint[:100], "model": model, "reason": reason})
        log.warning("alert %s refused: %s", alert.fingerprint[:100], message)
        if message not in out.notes:
            out.notes.append(message)

    async def _handle(note: Notification) -> Response:
        out = _Outcome()
        groups: dict[str, list[Alert]] = {}
        for alert in note.alerts:
            metrics.received.labels(alert.status).inc()
            if alert.status != "firing":
                metrics.ignored.labels("resolved").inc()
                out.ignored += 1
            elif alert.labels.get(RETRAIN_LABEL[0]) != RETRAIN_LABEL[1]:
                metrics.ignored.labels("no_retrain_label").inc()
                out.ignored += 1
            elif why := policy.refusal(
                alert.labels, alert.annotations, config.allowed_models, config.data_prefixes
            ):
                _refuse(out, alert, why.reason, why.message)
            else:  # one run per model
                groups.setdefault(alert.labels[MODEL_LABEL], []).append(alert)
        for model, group in groups.items():
            await _start(out, model, group)
        return out.answer()

    async def _start(out: _Outcome, model: str, group: list[Alert]) -> None:
        by_fp = {a.fingerprint: a for a in group}
        verdict = state.check(model, list(by_fp))
        if verdict.pending is not None:  # an earlier claim of the model still waits for its run
            metrics.deduplicated.inc(len(group))
            out.deduplicated += len(group)
            await _submit(out, verdict.pending, resume=True)
            return
        if not verdict.due:
            _skip(out, model, group, verdict)
            return
        due_alerts = [by_fp[fp] for fp in verdict.due]
        arguments, notes = _run_arguments(config, model, due_alerts)
        out.notes += notes
        deploy_note = ""
        if arguments.get(DEPLOY_PARAM):
            name = str(arguments.get("model_name") or model)
            try:
                champion = await run_in_threadpool(policy.has_champion, config.registry, name)
            except UserError as exc:  # cannot tell: start nothing now, Alertmanager retries
                metrics.failures.inc()
                log.error("no run for %s: %s", model, exc)
                out.errors.append(f"{model}: {exc}")
                return
            if not champion:
                del arguments[DEPLOY_PARAM]
                deploy_note = (
                    f"{name} has no champion in the registry at {config.registry.root}: the "
                    f"run trains and registers it but does not deploy ({DEPLOY_PARAM} left "
                    "out); promote a version to let later runs deploy"
                )
                log.warning("run for %s: %s", model, deploy_note)
                out.notes.append(deploy_note)

        def make(claim_id: str, due: list[str]) -> tuple[str, dict[str, Any], str]:
            return _run_name(model, [by_fp[fp] for fp in due], claim_id), arguments, deploy_note

        try:
            claim = state.claim(model, list(by_fp), make)
        except UserError as exc:  # the state cannot be written: start nothing, retry later
            metrics.failures.inc()
            log.error("state not writable: %s", exc)
            out.errors.append(str(exc))
            return
        if isinstance(claim, Verdict):  # cannot happen under the lock; handled the same way
            _skip(out, model, group, claim)
            return
        metrics.deduplicated.inc(len(group) - len(claim.fingerprints))
        out.deduplicated += len(group) - len(claim.fingerprints)
        await _submit(out, claim, resume=False)

    def _skip(out: _Outcome, model: str, group: list[Alert], verdict: Verdict) -> None:
        if verdict.reason == "rate_limited":
            for alert in group:
                _refuse(out, alert, "rate_limited", verdict.message)
            return
        metrics.deduplicated.inc(len(group))
        out.deduplicated += len(group)
        log.info("no new run for %s: %s", model, verdict.message)

    async def _submit(out: _Outcome | None, claim: Claim, resume: bool) -> None:
        try:
            run, found = await run_in_threadpool(_create, config, claim, resume)
        except Exception as exc:  # noqa: BLE001 (unreachable, refused, or a client bug: 502)
            metrics.failures.inc()
            known = isinstance(exc, cluster.KfpApiError | UserError)
            message = str(exc) if known else f"unexpected {type(exc).__name__}: {exc}"
            with contextlib.suppress(UserError):
                if _refused_for_sure(exc):
                    state.release(claim.id)  # nothing was created: the retry claims again
                else:  # perhaps created: the retry looks the run up by name first
                    state.attempted(claim.id, message)
            if known:
                log.error("run for %s not created: %s", claim.model, exc)
            else:
                log.exception("run for %s not created", claim.model)
            if out is not None:
                out.errors.append(f"{claim.model}: {message}")
            return
        try:
            state.confirm(claim.id, run.id)
        except UserError as exc:  # the claim stands: a restart finds the run by its name
            log.error("run %s started, its id not recorded: %s", run.id, exc)
        if resume:
            metrics.resumed.labels("found" if found else "created").inc()
        if not found:
            metrics.submitted.inc()
        how = "found" if found else "started"
        log.info(
            "%s run %s (%s) for %s (alerts %s)",
            how, run.id, claim.run_name, claim.model, ", ".join(claim.fingerprints),
        )  # fmt: skip
        if out is not None:
            entry = {
                "model": claim.model,
                "run_id": run.id,
                "url": run.url,
                "alerts": claim.fingerprints,
                "deploys": bool(claim.arguments.get(DEPLOY_PARAM)),
            }
            out.runs.append({**entry, "resumed": True} if resume else entry)

    async def resume_pending() -> None:
        """Claims a dead process (or an unanswered submission) left: found, or created."""
        async with lock:
            for claim in state.pending_claims():
                if claim.model not in config.allowed_models:
                    log.warning("claim %s of %s dropped: not allowed", claim.id, claim.model)
                    with contextlib.suppress(UserError):
                        state.release(claim.id)
                    continue
                log.info("resuming claim %s (%s)", claim.id, claim.run_name)
                await _submit(None, claim, resume=True)

    async def resume_loop() -> None:
        while True:
            try:
                await resume_pending()
            except Exception:  # noqa: BLE001 (keep resuming; the log says what went wrong)
                log.exception("resuming pending claims failed")
            await asyncio.sleep(config.resume_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(resume_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        message = f"{request.method} {request.url.path[:200]}: not found"
        return _error(404, message, metrics, "not_found")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        message = f"{request.method} not allowed on {request.url.path[:200]}"
        return _error(405, message, metrics, "method_not_allowed")

    return Starlette(
        routes=[
            Route("/alerts", alerts, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
        lifespan=lifespan,
    )


def read_token(env_name: str) -> str:
    token = os.environ.get(env_name, "").strip()
    if not token:
        raise UserError(
            f"set ${env_name} to the bearer token Alertmanager sends (from a Kubernetes Secret)"
        )
    if len(token) < 16:
        raise UserError(f"${env_name} is too short: use at least 16 random characters")
    if not token.isascii() or not token.isprintable():
        raise UserError(f"${env_name} must be printable ASCII (a header value)")
    return token
