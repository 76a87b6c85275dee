"""The Bento service: POST /predict with {"records": [...]} -> predictions.

Built into every Bento by the package step together with automl_io.py and
monitoring.py; the model tag and the settings below come from the Bento's
build arguments (override at serve time with `bentoml serve ... --arg k=v`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import bentoml
from automl_io import (  # shipped beside this file in the Bento
    RecordError,
    load_model,
    predict_frame,
    predictions_payload,
    records_to_frame,
)
from monitoring import Monitor
from pydantic import BaseModel

REJECTED_HEADER = "x-automl-rejected"


class ServiceArgs(BaseModel):
    model_tag: str
    unknown_fields: Literal["ignore", "reject"] = "ignore"
    monitoring: bool = True
    max_body_bytes: int = 8 * 1024 * 1024


args = bentoml.use_arguments(ServiceArgs)
_monitor: Monitor | None = None  # one per worker process, created in the service's __init__


def _reject(reason: str) -> None:
    if _monitor is not None:
        _monitor.rejected(reason)


class RequestGuard:
    """ASGI middleware for /predict: JSON only (415), bounded bodies (413), rejection counts."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return await self._error(
                send, 415, "unsupported_media_type", "send the records as application/json"
            )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._error(send, 413, "too_large", self._too_large())
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await self._error(send, 413, "too_large", self._too_large())

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message):
            # a 400 that the service did not mark came from request parsing: not JSON, no `records`
            if (
                message["type"] == "http.response.start"
                and message["status"] == 400
                and not any(
                    k.lower() == REJECTED_HEADER.encode() for k, _ in message.get("headers", [])
                )
            ):
                _reject("bad_json")
            await send(message)

        return await self.app(scope, replay, watch)

    def _too_large(self) -> str:
        return f"request body is over {self.max_body_bytes} bytes; send fewer records per request"

    @staticmethod
    async def _error(send, status: int, reason: str, problem: str):
        _reject(reason)
        body = json.dumps({"error": {"problem": problem, "reason": reason}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (REJECTED_HEADER.encode(), reason.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@bentoml.service(name="kfp-automl", traffic={"timeout": 60})
class AutoMLService:
    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        global _monitor
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
        _monitor = self.monitor

    @bentoml.api
    def predict(self, records: list[dict[str, Any]], ctx: bentoml.Context) -> dict[str, Any]:
        """Score records. A record the model cannot take gets a 400 naming the record and field."""
        try:
            X = records_to_frame(records, self.schema, args.unknown_fields)
        except RecordError as exc:
            self.monitor.rejected(exc.reason)
            ctx.response.status_code = 400
            ctx.response.headers[REJECTED_HEADER] = exc.reason
            return {"error": exc.as_dict()}
        with self.monitor.timed(len(X)):
            result = predict_frame(self.model, X)
        if args.monitoring:
            self.monitor.observe(X, result["prediction"].to_numpy())
        return predictions_payload(result)


AutoMLService.add_asgi_middleware(RequestGuard, max_body_bytes=args.max_body_bytes)
