"""The retrain trigger: an Alertmanager webhook receiver that starts training runs on KFP.

`POST /alerts` takes Alertmanager's webhook payload (version 4). Every alert in
it that is firing and carries the label `action: retrain` (the drift alerts of
kfp_automl/observability/rules.py, and quality alerts with the same label) asks for
a run of the training pipeline for the model in its `model` label. The alerts of
one notification are grouped by model, so five drifted features start one run.
The run gets the trigger's pipeline parameters (`--data`, `--target`, `--param`),
`model_name` set to the alert's model (unless fixed with --model-name or
--param), and the data location from the alert's `data_url` annotation when it
has one.

A model or an alert fingerprint that started a run less than `--cooldown`
seconds ago starts nothing (counted as deduplicated); this state lives in
`--state-dir`, so a restart does not start a run twice, and a flapping alert
starts one run per cooldown. Resolved alerts start nothing.

Answers: 200 with what was done; 401 without `Authorization: Bearer <token>`
(the token comes from the environment variable named by --token-env, filled
from a Kubernetes Secret); 400 for a body that is not a version 4 payload; 413
for a body over 1 MiB; 502 when the KFP API cannot be reached or refuses the
run, so Alertmanager sends the notification again. `GET /metrics` (Prometheus)
and `GET /healthz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kfp_automl.cluster import client as cluster
from kfp_automl.errors import UserError
from kfp_automl.retrain.state import RetrainState

log = logging.getLogger("kfp_automl.retrain")

RETRAIN_LABEL = (
    "action",
    "retrain",
)  # set on the drift alerts by kfp_automl/observability/rules.py
MODEL_LABEL = "model"
DATA_ANNOTATION = "data_url"
TOKEN_ENV = "KFP_AUTOML_TRIGGER_TOKEN"  # default of --token-env
MAX_BODY = 1 << 20


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
    """What a triggered run is, and where it goes."""

    conn: cluster.Connection
    token: str
    state_dir: Path
    cooldown_s: float
    pipeline: Path = cluster.DEFAULT_PIPELINE
    arguments: dict[str, Any] = field(default_factory=dict)
    experiment: str = cluster.DEFAULT_EXPERIMENT
    namespace: str | None = None
    service_account: str | None = None
    enable_caching: bool | None = None  # kfp.Client's: None keeps each step's compiled setting


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
        self.deduplicated = Counter(
            "automl_retrain_alerts_deduplicated",
            "Firing alerts that started no run: their model or fingerprint is in cooldown",
            registry=self.registry,
        )
        self.submitted = Counter(
            "automl_retrain_runs_submitted", "Training runs created on KFP", registry=self.registry
        )
        self.failures = Counter(
            "automl_retrain_submit_failures",
            "Runs the KFP API did not create (unreachable or refused)",
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
        for reason in ("unauthorized", "bad_request", "too_large"):
            self.rejected.labels(reason)


def _error(status: int, message: str, metrics: Metrics, reason: str) -> JSONResponse:
    metrics.rejected.labels(reason).inc()
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _parse(body: bytes) -> Notification:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    try:
        return Notification.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValueError(
            f"not an Alertmanager webhook payload (version 4): {where}: {first['msg']}"
        ) from None


def _run_arguments(config: TriggerConfig, model: str, alerts: list[Alert]) -> dict[str, Any]:
    arguments = dict(config.arguments)
    if model and "model_name" not in arguments:
        arguments["model_name"] = model
    data = next(
        (a.annotations[DATA_ANNOTATION] for a in alerts if a.annotations.get(DATA_ANNOTATION)), None
    )
    if data:
        arguments["data"] = data
    return arguments


def _submit(config: TriggerConfig, model: str, alerts: list[Alert]) -> cluster.Created:
    names = sorted({a.labels.get("alertname", "alert") for a in alerts})
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    run_name = f"retrain {model or 'model'} ({', '.join(names)}) {when}"
    return cluster.create_run(
        config.conn,
        _run_arguments(config, model, alerts),
        run_name,
        experiment=config.experiment,
        namespace=config.namespace,
        pipeline=config.pipeline,
        service_account=config.service_account,
        enable_caching=config.enable_caching,
    )


def create_app(config: TriggerConfig) -> Starlette:
    """The trigger's ASGI app."""
    metrics = Metrics()
    state = RetrainState(config.state_dir, config.cooldown_s)
    lock = asyncio.Lock()  # one notification at a time: two copies of one alert start one run

    async def alerts(request: Request) -> Response:
        if not _authorized(request, config.token):
            return _error(401, "missing or wrong bearer token", metrics, "unauthorized")
        declared = request.headers.get("content-length") or "0"
        if not declared.isdigit():
            return _error(400, "bad content-length header", metrics, "bad_request")
        if int(declared) > MAX_BODY:
            return _error(413, f"body over {MAX_BODY} bytes", metrics, "too_large")
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"body over {MAX_BODY} bytes", metrics, "too_large")
        try:
            note = _parse(body)
        except ValueError as exc:
            return _error(400, str(exc), metrics, "bad_request")
        async with lock:
            return await _handle(note)

    async def _handle(note: Notification) -> Response:
        groups: dict[str, list[Alert]] = {}
        ignored = deduplicated = 0
        for alert in note.alerts:
            metrics.received.labels(alert.status).inc()
            if alert.status != "firing":
                metrics.ignored.labels("resolved").inc()
                ignored += 1
            elif alert.labels.get(RETRAIN_LABEL[0]) != RETRAIN_LABEL[1]:
                metrics.ignored.labels("no_retrain_label").inc()
                ignored += 1
            else:  # one run per model; an alert without a model label is its own group
                key = alert.labels.get(MODEL_LABEL) or f"fingerprint:{alert.fingerprint}"
                groups.setdefault(key, []).append(alert)
        runs, errors = [], []
        for key, group in groups.items():
            model = group[0].labels.get(MODEL_LABEL) or ""
            by_fp = {a.fingerprint: a for a in group}
            try:
                due, why = state.claim(key, list(by_fp))
            except UserError as exc:  # the state cannot be written: start nothing, retry later
                metrics.failures.inc()
                log.error("state not writable: %s", exc)
                errors.append(str(exc))
                continue
            if not due:
                metrics.deduplicated.inc(len(group))
                deduplicated += len(group)
                log.info("no new run for %s: %s", key, why)
                continue
            metrics.deduplicated.inc(len(group) - len(due))
            deduplicated += len(group) - len(due)
            try:
                run = await run_in_threadpool(_submit, config, model, [by_fp[fp] for fp in due])
            except Exception as exc:  # noqa: BLE001 (unreachable, refused, or a client bug: 502)
                with contextlib.suppress(UserError):
                    state.release(key, due)
                metrics.failures.inc()
                if isinstance(exc, cluster.KfpApiError | UserError):
                    log.error("run for %s not created: %s", key, exc)
                    errors.append(f"{key}: {exc}")
                else:
                    log.exception("run for %s not created", key)
                    errors.append(f"{key}: unexpected {type(exc).__name__}: {exc}")
                continue
            try:
                state.confirm(key, due, run.id)
            except UserError as exc:  # the claim (written before) still stands
                log.error("run %s started, its id not recorded: %s", run.id, exc)
            metrics.submitted.inc()
            log.info("started run %s for %s (alerts %s)", run.id, key, ", ".join(due))
            runs.append({"model": model, "run_id": run.id, "url": run.url, "alerts": due})
        answer = {"runs": runs, "deduplicated": deduplicated, "ignored": ignored}
        if errors:
            return JSONResponse({**answer, "error": "; ".join(errors)}, status_code=502)
        return JSONResponse(answer)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"{request.method} {request.url.path}: not found"}, 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"{request.method} not allowed on {request.url.path}"}, 405)

    return Starlette(
        routes=[
            Route("/alerts", alerts, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    )


def read_token(env_name: str) -> str:
    token = os.environ.get(env_name, "").strip()
    if not token:
        raise UserError(
            f"set ${env_name} to the bearer token Alertmanager sends (from a Kubernetes Secret)"
        )
    if len(token) < 16:
        raise UserError(f"${env_name} is too short: use at least 16 random characters")
    return token
