"""The Bento service: POST /predict with {"records": [...]} -> one result per record.

Built into every Bento by the package step, which ships it with the rest of
`kfp_automl.serving` and `kfp_automl.runtime` (components/package/bento.py), so a Bento
runs the code it was built with. The model tag comes from the Bento's build arguments; each
setting in ServiceArgs can be changed at serve time with an environment
variable AUTOML_<NAME> (e.g. AUTOML_WORKERS=2, AUTOML_UNKNOWN_FIELDS=reject),
because a built Bento's arguments cannot be overridden with `--arg`.

Requests are checked by an ASGI middleware before they reach the model, so a
bad request gets its own 4xx answer and never joins (or spoils) a batch; the
valid ones are scored with BentoML's adaptive batching.

Every answer item carries a prediction id (the record's own `id` field when the
caller sends one). With prediction logging on, the middleware also answers
POST /feedback, which joins labels to logged predictions (prediction_log.py).

Before the model is unpickled, the package versions its metadata records are compared with
the installed ones (kfp_automl/runtime/packages.py); on a mismatch the model is not loaded,
the mismatch is logged once per worker and exported as `automl_package_mismatch`, and
/readyz, /predict and /feedback answer 503 with a message naming each package.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import uuid
from typing import Any, Literal, cast

import bentoml
import pandas as pd
from pydantic import BaseModel

from kfp_automl.contracts.profile import Bins, Profile
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.fast_path import serving_model
from kfp_automl.runtime.model_file import load_model
from kfp_automl.runtime.names import FEEDBACK_ENDPOINT, PREDICT_ENDPOINT, READY_ENDPOINT
from kfp_automl.runtime.packages import check_model_packages, mismatch_message
from kfp_automl.runtime.records import (
    RecordError,
    check_records,
    parse_request,
    predict_frame,
    prediction_records,
    records_to_columns,
)
from kfp_automl.serving.files import (
    EVALUATION_FILE,
    PREDICTION_REFERENCE_FILE,
    PROFILE_FILE,
    SCHEMA_FILE,
)
from kfp_automl.serving.monitoring import Monitor, package_mismatch
from kfp_automl.serving.prediction_log import LogSettings, PredictionLog
from kfp_automl.serving.quality import FeedbackError, QualityMetrics, parse_feedback


class ServiceArgs(BaseModel):
    model_tag: str
    unknown_fields: Literal["ignore", "reject"] = "ignore"
    monitoring: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_size: int = 512
    max_latency_ms: int = 1000  # a request waiting longer than this for its batch gets a 503
    workers: int = 1  # processes; metrics add up across them (prometheus multiprocess mode)
    id_field: str = "id"  # a record's own prediction id (ignored when a feature has this name)
    log_predictions: Literal["off", "sampled", "on"] = "off"
    log_sample_rate: float = 0.1  # share of records logged when log_predictions is "sampled"
    log_dir: str = ""  # default: ~/kfp-automl-predictions/<model name>
    log_exclude: str = ""  # comma-separated feature columns never written to the log (PII)
    log_max_file_mb: float = 64.0
    log_max_total_mb: float = 1024.0
    label_ttl_s: float = 7 * 86400.0  # unlabelled predictions are forgotten after this
    quality_window: int = 500  # live quality is computed over this many newest labels


def _settings() -> ServiceArgs:
    """The Bento's arguments, overridden by AUTOML_<NAME> environment variables."""
    values = dict(vars(bentoml.use_arguments()))
    for name in ServiceArgs.model_fields:
        if name != "model_tag" and f"AUTOML_{name.upper()}" in os.environ:
            values[name] = os.environ[f"AUTOML_{name.upper()}"]
    return ServiceArgs(**values)


args = _settings()
# Set by the service's __init__ in each worker process; the middleware of that worker reads them.
# `unready`: why the model was not loaded (then /readyz, /predict and /feedback answer 503).
_state: dict[str, Any] = {}
log = logging.getLogger("kfp_automl.serving")
_REFUSED_WHEN_UNREADY = (READY_ENDPOINT, PREDICT_ENDPOINT, FEEDBACK_ENDPOINT)


class RequestGuard:
    """ASGI middleware for POST /predict: JSON only (415), bounded bodies (413), valid records (400).

    It also answers POST /feedback itself (labels for logged predictions).
    """

    def __init__(self, app, max_body_bytes: int, unknown_fields: str):
        self.app, self.max_body_bytes, self.unknown_fields = app, max_body_bytes, unknown_fields

    async def __call__(self, scope, receive, send):
        unready = _state.get("unready") if scope["type"] == "http" else None
        if unready and scope["path"] in _REFUSED_WHEN_UNREADY:
            return await self._send(send, 503, {"error": _problem(unready, "package_mismatch")})
        if scope["type"] != "http" or scope["path"] not in (PREDICT_ENDPOINT, FEEDBACK_ENDPOINT):
            return await self.app(scope, receive, send)
        if scope["path"] == FEEDBACK_ENDPOINT:
            return await self._feedback(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = await self._body(scope, receive, send)
        if body is None:
            return None
        try:
            check_records(
                parse_request(body), _state["schema"], self.unknown_fields, _state["id_field"]
            )
        except RecordError as exc:
            return await self._error(send, 400, exc)

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _body(self, scope, receive, send, count: bool = True) -> bytes | None:
        """The request body, or None after answering 415/413 (or on a disconnect).

        `count`: add the rejection to automl_requests_rejected_total (/predict only).
        """
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            problem = "send the body as application/json"
            error = RecordError(None, None, problem, "unsupported_media_type")
            await self._error(send, 415, error, count)
            return None
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._error(send, 413, self._too_large(), count)
            return None
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._error(send, 413, self._too_large(), count)
                return None
        return body

    async def _feedback(self, scope, receive, send):
        """POST /feedback {"labels": [{"id": ..., "label": ...}]}: a per-item report."""
        if scope["method"] != "POST":
            problem = 'use POST with {"labels": [...]}'
            return await self._send(send, 405, {"error": _problem(problem, "method")})
        body = await self._body(scope, receive, send, count=False)
        if body is None:
            return None
        plog: PredictionLog | None = _state.get("log")
        try:
            items = parse_feedback(body, _state["max_feedback_items"])
        except FeedbackError as exc:
            return await self._send(send, 400, {"error": _problem(str(exc), "bad_json")})
        if plog is None:
            problem = "prediction logging is off, so there is nothing to join labels to"
            return await self._send(send, 409, {"error": _problem(problem, "logging_off")})
        status, report = await asyncio.to_thread(plog.feedback, items)
        return await self._send(send, status, report)

    def _too_large(self) -> RecordError:
        problem = (
            f"request body is over {self.max_body_bytes} bytes; send fewer records per request"
        )
        return RecordError(None, None, problem, "too_large")

    @staticmethod
    async def _error(send, status: int, exc: RecordError, count: bool = True):
        monitor = _state.get("monitor")
        if monitor is not None and count:
            monitor.rejected(exc.reason)
        await RequestGuard._send(send, status, {"error": exc.as_dict()})

    @staticmethod
    async def _send(send, status: int, payload: dict[str, Any]):
        body = json.dumps(payload).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@bentoml.service(name="kfp-automl", workers=args.workers, traffic={"timeout": 60})
class AutoMLService:
    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        stored = self.bento_model
        meta = stored.info.metadata
        self.log: PredictionLog | None = None
        found = check_model_packages(meta)
        if found:
            # not unpickled: with other versions it may fail to load, or load and answer differently
            problem = mismatch_message(str(stored.tag), found)
            log.error("not ready: %s", problem)
            package_mismatch(stored.tag.name, stored.tag.version, found)
            _state.update(unready=problem)
            return
        self.schema = Schema.read(stored.path_of(SCHEMA_FILE))
        # the fitted model behind a faster path that answers the same (checked on probe rows)
        self.model = serving_model(load_model(stored.path, meta["sha256"]), self.schema)
        profile = prediction = None
        if args.monitoring:  # a model packaged without a reference: no drift metrics for it
            if os.path.exists(stored.path_of(PROFILE_FILE)):
                profile = Profile.read(stored.path_of(PROFILE_FILE))
            if os.path.exists(stored.path_of(PREDICTION_REFERENCE_FILE)):
                prediction = Bins.read(stored.path_of(PREDICTION_REFERENCE_FILE))
        info = {
            "data_fingerprint": str(meta.get("data_fingerprint", ""))[:16],
            "task": self.schema.task,
            "family": str(meta.get("family", "")),
        }
        self.monitor = Monitor(
            profile, stored.tag.name, stored.tag.version, info, prediction=prediction
        )
        names = set(self.schema.names)
        self.id_field = args.id_field if args.id_field and args.id_field not in names else None
        self.log = _prediction_log(stored, self.schema, meta)
        self._id_prefix, self._id_counter = uuid.uuid4().hex[:16], itertools.count()
        _state.update(
            schema=self.schema,
            monitor=self.monitor,
            id_field=self.id_field,
            log=self.log,
            max_feedback_items=LogSettings.max_feedback_items,
        )

    @bentoml.on_shutdown
    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()

    @bentoml.api(
        batchable=True, max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms
    )
    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score records: each gets its prediction and, for classifiers, class probabilities.

        BentoML merges concurrent requests into one call; RequestGuard has already
        checked every record, so one bad request never fails a batch.
        """
        columns = records_to_columns(records, self.schema)
        X = pd.DataFrame(columns)
        with self.monitor.timed(len(X)):
            result = predict_frame(self.model, X)
        if args.monitoring:
            self.monitor.observe(columns, result["prediction"].to_numpy())
        answers = prediction_records(result)
        ids = [self._record_id(r) for r in records]
        if self.log is not None:
            self.log.submit(ids, records, answers)
        return [{"id": i, **a} for i, a in zip(ids, answers, strict=True)]

    def _record_id(self, record: dict[str, Any]) -> str:
        own = record.get(self.id_field) if self.id_field else None
        if own is not None:
            return str(own)
        # a random prefix per worker start and a counter: unique, and cheaper than uuid4 per record
        return f"{self._id_prefix}-{next(self._id_counter):08x}"


def _problem(problem: str, reason: str) -> dict[str, Any]:
    return {"record": None, "field": None, "problem": problem, "reason": reason}


def _prediction_log(stored, schema: Schema, meta: dict[str, Any]) -> PredictionLog | None:
    """The worker's prediction log, or None when logging is off."""
    if args.log_predictions == "off":
        return None
    evaluation = None
    try:
        with open(stored.path_of(EVALUATION_FILE)) as fh:
            evaluation = json.load(fh)
    except FileNotFoundError:
        evaluation = None  # packaged without evaluation metrics: no reference gauges
    exclude = tuple(c.strip() for c in args.log_exclude.split(",") if c.strip())
    unknown = sorted(set(exclude) - set(schema.names))
    if unknown:
        raise ValueError(f"log_exclude names columns the model does not use: {unknown}")
    directory = args.log_dir or os.path.expanduser(f"~/kfp-automl-predictions/{stored.tag.name}")
    settings = LogSettings(
        mode=args.log_predictions,
        directory=directory,
        sample_rate=args.log_sample_rate,
        exclude=exclude,
        max_file_bytes=int(args.log_max_file_mb * 1024 * 1024),
        max_total_bytes=int(args.log_max_total_mb * 1024 * 1024),
        label_ttl_s=args.label_ttl_s,
        quality_window=args.quality_window,
        expire_interval_s=min(60.0, max(0.5, args.label_ttl_s / 4)),
    )
    metrics = QualityMetrics(
        stored.tag.name, stored.tag.version, schema.task, str(meta.get("metric", "")), evaluation
    )
    return PredictionLog(settings, stored.tag.name, stored.tag.version, schema, metrics)


# bentoml.service(...) turns the class into a bentoml Service; its stubs do not say so
cast(Any, AutoMLService).add_asgi_middleware(
    RequestGuard, max_body_bytes=args.max_body_bytes, unknown_fields=args.unknown_fields
)
