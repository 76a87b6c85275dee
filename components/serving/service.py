"""The Bento service: POST /predict with {"records": [...]} -> one result per record.

Built into every Bento by the package step together with automl_io.py and
monitoring.py. The model tag comes from the Bento's build arguments; each
setting in ServiceArgs can be changed at serve time with an environment
variable AUTOML_<NAME> (e.g. AUTOML_WORKERS=2, AUTOML_UNKNOWN_FIELDS=reject),
because a built Bento's arguments cannot be overridden with `--arg`.

Requests are checked by an ASGI middleware before they reach the model, so a
bad request gets its own 4xx answer and never joins (or spoils) a batch; the
valid ones are scored with BentoML's adaptive batching.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import bentoml
from automl_io import (  # shipped beside this file in the Bento
    RecordError,
    check_records,
    load_model,
    parse_request,
    predict_frame,
    prediction_records,
    records_to_frame,
)
from monitoring import Monitor
from pydantic import BaseModel


class ServiceArgs(BaseModel):
    model_tag: str
    unknown_fields: Literal["ignore", "reject"] = "ignore"
    monitoring: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_size: int = 512
    max_latency_ms: int = 1000  # a request waiting longer than this for its batch gets a 503
    workers: int = 1  # processes; metrics add up across them (prometheus multiprocess mode)


def _settings() -> ServiceArgs:
    """The Bento's arguments, overridden by AUTOML_<NAME> environment variables."""
    values = dict(vars(bentoml.use_arguments()))
    for name in ServiceArgs.model_fields:
        if name != "model_tag" and f"AUTOML_{name.upper()}" in os.environ:
            values[name] = os.environ[f"AUTOML_{name.upper()}"]
    return ServiceArgs(**values)


args = _settings()
# Set by the service's __init__ in each worker process; the middleware of that worker reads them.
_state: dict[str, Any] = {}


class RequestGuard:
    """ASGI middleware for POST /predict: JSON only (415), bounded bodies (413), valid records (400)."""

    def __init__(self, app, max_body_bytes: int, unknown_fields: str):
        self.app, self.max_body_bytes, self.unknown_fields = app, max_body_bytes, unknown_fields

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            problem = "send the records as application/json"
            return await self._error(
                send, 415, RecordError(None, None, problem, "unsupported_media_type")
            )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._error(send, 413, self._too_large())
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await self._error(send, 413, self._too_large())
        try:
            check_records(parse_request(body), _state["schema"], self.unknown_fields)
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

    def _too_large(self) -> RecordError:
        problem = (
            f"request body is over {self.max_body_bytes} bytes; send fewer records per request"
        )
        return RecordError(None, None, problem, "too_large")

    @staticmethod
    async def _error(send, status: int, exc: RecordError):
        monitor = _state.get("monitor")
        if monitor is not None:
            monitor.rejected(exc.reason)
        body = json.dumps({"error": exc.as_dict()}).encode()
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
        with open(stored.path_of("schema.json")) as fh:
            self.schema = json.load(fh)
        meta = stored.info.metadata
        self.model = load_model(stored.path, meta["sha256"])
        profile = None
        if args.monitoring:
            try:
                with open(stored.path_of("profile.json")) as fh:
                    profile = json.load(fh)
            except FileNotFoundError:
                profile = None  # a model packaged without a reference profile: no drift metrics
        info = {
            "data_fingerprint": str(meta.get("data_fingerprint", ""))[:16],
            "task": self.schema["task"],
            "family": str(meta.get("family", "")),
        }
        self.monitor = Monitor(profile, stored.tag.name, stored.tag.version, info)
        _state.update(schema=self.schema, monitor=self.monitor)

    @bentoml.api(
        batchable=True, max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms
    )
    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score records: each gets its prediction and, for classifiers, class probabilities.

        BentoML merges concurrent requests into one call; RequestGuard has already
        checked every record, so one bad request never fails a batch.
        """
        X = records_to_frame(records, self.schema)
        with self.monitor.timed(len(X)):
            result = predict_frame(self.model, X)
        if args.monitoring:
            self.monitor.observe(X, result["prediction"].to_numpy())
        return prediction_records(result)


AutoMLService.add_asgi_middleware(
    RequestGuard, max_body_bytes=args.max_body_bytes, unknown_fields=args.unknown_fields
)
