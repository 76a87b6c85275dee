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
caller sends one, else 128 random bits). With prediction logging on, the middleware also
answers POST /feedback, which joins labels to logged predictions (prediction_log.py) for
callers with a bearer token (callers.py); a /predict request with such a token ties its
predictions to that caller, so only that caller labels them.

Before the model is unpickled, the package versions its metadata records are compared with
the installed ones (kfp_automl/runtime/packages.py); on a mismatch the model is not loaded,
the mismatch is logged once per worker and exported as `automl_package_mismatch`, and
/readyz, /predict and /feedback answer 503 with a message naming each package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from typing import Any, Literal, cast

import bentoml
import pandas as pd
from pydantic import BaseModel

from kfp_automl.contracts.profile import Bins, Profile
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.fast_path import serving_model
from kfp_automl.runtime.model_file import load_model
from kfp_automl.runtime.names import (
    FEEDBACK_ENDPOINT,
    PREDICT_ENDPOINT,
    READY_ENDPOINT,
    STATUS_ENDPOINT,
)
from kfp_automl.runtime.packages import check_model_packages, mismatch_message
from kfp_automl.runtime.records import (
    FRAMING_HEADERS,
    UNSCORED,
    RecordError,
    canonical_body,
    check_framing,
    check_records,
    parse_request,
    predict_frame,
    prediction_records,
    records_to_columns,
    score_in_parts,
    unscored_index,
)
from kfp_automl.serving.callers import Callers, LabelRate
from kfp_automl.serving.files import (
    EVALUATION_FILE,
    PREDICTION_REFERENCE_FILE,
    PROFILE_FILE,
    SCHEMA_FILE,
)
from kfp_automl.serving.http_limits import count_refusals_with
from kfp_automl.serving.http_limits import install as install_http_limits
from kfp_automl.serving.limits import ServerLimits
from kfp_automl.serving.monitoring import Monitor, package_mismatch
from kfp_automl.serving.prediction_log import CALLER_FIELD, LogSettings, PredictionLog, new_id
from kfp_automl.serving.prediction_store import ANONYMOUS
from kfp_automl.serving.quality import FeedbackError, QualityMetrics, parse_feedback


class ServiceArgs(BaseModel):
    model_tag: str
    unknown_fields: Literal["ignore", "reject"] = "ignore"
    monitoring: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_size: int = 512
    max_latency_ms: int = 1000  # a request waiting longer than this for its batch gets a 503
    workers: int = 1  # processes; metrics add up across them (prometheus multiprocess mode)
    # per worker: slow and greedy clients (serving/http_limits.py)
    header_timeout_s: float = ServerLimits.header_timeout_s
    body_idle_timeout_s: float = ServerLimits.body_idle_timeout_s
    body_timeout_s: float = ServerLimits.body_timeout_s
    max_connections: int = ServerLimits.max_connections
    keep_alive_s: float = ServerLimits.keep_alive_s
    id_field: str = "id"  # a record's own prediction id (ignored when a feature has this name)
    log_predictions: Literal["off", "sampled", "on"] = "off"
    log_sample_rate: float = 0.1  # share of records logged when log_predictions is "sampled"
    log_dir: str = ""  # default: ~/kfp-automl-predictions/<model name>
    log_exclude: str = ""  # comma-separated feature columns never written to the log (PII)
    log_max_file_mb: float = 64.0
    log_max_total_mb: float = 512.0  # log files and the label store together
    log_volume_mb: float = 0.0  # the size limit of the log's volume (emptyDir), checked at start
    label_ttl_s: float = 7 * 86400.0  # unlabelled predictions are forgotten after this
    # the join store: "" for SQLite in log_dir (one host), or a postgresql:// URL of the store
    # every replica shares (give it as AUTOML_LOG_STORE from a Secret: it holds a password)
    log_store: str = ""
    log_store_max_rows: int = 10_000_000  # a model's predictions in the shared store, at most
    label_grace_s: float = 2.0  # shared store: an unknown id is tried again for this long
    replica: str = ""  # this server's name in the shared store (default: the host's, the pod's)
    quality_window: int = 500  # live quality is computed over this many newest labels
    # /feedback callers: "token" (a bearer token of a caller in feedback_tokens) or "none"
    feedback_auth: Literal["token", "none"] = "token"
    feedback_tokens: str = ""  # a directory with one token file per caller, or one such file
    # labels a second each caller may send to one worker (a burst: one full request); 0: any
    feedback_rate: float = 1000.0


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

# the headers the guard replaces when it hands the checked records on
_REFRAMED = (*FRAMING_HEADERS, b"content-encoding")
_STATUS = {"too_large": 413, "unsupported_media_type": 415}


def _status(exc: RecordError) -> int:
    return _STATUS.get(exc.reason, 400)


def _unscored_to_error(send):
    """`send` for a /predict answer: a 200 whose items include one predict() could not
    score becomes a 500 error naming that record, so only its own request fails."""
    held: list[dict[str, Any]] = []

    async def guarded(message):
        if message["type"] == "http.response.start" and message["status"] == 200:
            held.append(message)
            return None
        if not held or message["type"] != "http.response.body":
            return await send(message)
        held.append(message)
        if message.get("more_body", False):
            return None
        start, *parts = held
        held.clear()
        body = b"".join(m.get("body", b"") for m in parts)
        failed = unscored_index(body)
        if failed is None:
            await send(start)
            return await send({"type": "http.response.body", "body": body})
        problem = "the model could not score this record; the request was not answered"
        return await RequestGuard._send(
            send, 500, {"error": RecordError(failed, None, problem, "model_error").as_dict()}
        )

    return guarded


class RequestGuard:
    """ASGI middleware for POST /predict: JSON only (415), bounded bodies (413), one framing
    of the body (400), valid records (400); the model gets the records it checked.

    It also answers POST /feedback itself (labels for logged predictions).
    """

    def __init__(self, app, max_body_bytes: int, unknown_fields: str):
        self.app, self.max_body_bytes, self.unknown_fields = app, max_body_bytes, unknown_fields

    async def __call__(self, scope, receive, send):
        unready = _state.get("unready") if scope["type"] == "http" else None
        if scope["type"] == "http" and scope["path"] == STATUS_ENDPOINT:
            return await self._status(send, scope["method"], unready)
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
            records = check_records(
                parse_request(body), _state["schema"], self.unknown_fields, _state["id_field"]
            )
        except RecordError as exc:
            return await self._error(send, _status(exc), exc)
        _tie_to_caller(scope, records)
        # BentoML parses what the guard serialises from the checked records, framed by
        # exactly one content-type and content-length: what was checked is what is scored
        body = canonical_body(records)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _REFRAMED]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        scope = {**scope, "headers": headers}
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, _unscored_to_error(send))

    async def _body(self, scope, receive, send, count: bool = True) -> bytes | None:
        """The request body, or None after answering 400/415/413 (or on a disconnect).

        The framing headers are checked first (records.check_framing): one JSON body,
        framed one way. `count`: add the rejection to automl_requests_rejected_total
        (/predict only).
        """
        try:
            check_framing(scope["headers"])
        except RecordError as exc:
            await self._error(send, _status(exc), exc, count)
            return None
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._error(send, 413, self._too_large(), count)
            return None
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                await self._error(send, 413, self._too_large(), count)
                return None
        return b"".join(chunks)

    async def _feedback(self, scope, receive, send):
        """POST /feedback {"labels": [{"id": ..., "label": ...}]}: a per-item report.

        The caller is authenticated (401) before the body is read; refusals are counted in
        automl_feedback_rejected_total, apart from /predict's automl_requests_rejected_total.
        """
        plog: PredictionLog | None = _state.get("log")
        if scope["method"] != "POST":
            problem = 'use POST with {"labels": [...]}'
            return await _refuse_feedback(send, plog, 405, problem, "method", [(b"allow", b"POST")])
        if plog is None:
            problem = "prediction logging is off, so there is nothing to join labels to"
            return await self._send(send, 409, {"error": _problem(problem, "logging_off")})
        caller = ANONYMOUS
        callers: Callers | None = _state.get("callers")
        if callers is not None:
            name, problem = callers.identify(scope["headers"])
            if name is None:
                challenge = [(b"www-authenticate", b'Bearer realm="kfp-automl feedback"')]
                return await _refuse_feedback(send, plog, 401, problem, "unauthorized", challenge)
            caller = name
        answered: list[int] = []

        async def watched(message):
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        body = await self._body(scope, receive, watched, count=False)
        if body is None:
            if answered:  # refused by _body: 413, 415, or 400 for the framing
                plog.metrics.rejected[_BODY_REFUSALS.get(answered[0], "bad_framing")].inc()
            return None
        try:
            items = parse_feedback(body, _state["max_feedback_items"])
        except FeedbackError as exc:
            return await _refuse_feedback(send, plog, 400, str(exc), "bad_json")
        rate: LabelRate | None = _state.get("label_rate")
        wait = rate.take(caller, len(items)) if rate is not None else 0.0
        if wait and rate is not None:
            problem = (
                f"caller {caller!r} sends labels faster than {rate.per_s:g} a second to this "
                f"server; send again in {math.ceil(wait)} s"
            )
            retry = [(b"retry-after", str(math.ceil(wait)).encode())]
            return await _refuse_feedback(send, plog, 429, problem, "rate_limited", retry)
        status, report = await asyncio.to_thread(plog.feedback, items, caller)
        return await self._send(send, status, report)

    async def _status(self, send, method: str, unready: str | None):
        """GET /status: this worker's state. 200 with "ok", or "degraded" while the prediction
        log or its store cannot be written (the pod stays ready: predictions flow, the store's
        rows wait in a bounded backlog); 503 "unready" when the model is not loaded."""
        if method not in ("GET", "HEAD"):
            problem = "use GET"
            return await self._send(send, 405, {"error": _problem(problem, "method")})
        if unready:
            return await self._send(send, 503, {"status": "unready", "problem": unready})
        plog: PredictionLog | None = _state.get("log")
        body: dict[str, Any] = {"status": "ok", **_state.get("identity", {})}
        if plog is None:
            body["prediction_log"] = {"status": "off"}
        else:
            body["prediction_log"] = plog.status()
            body["status"] = body["prediction_log"]["status"]
        return await self._send(send, 200, body)

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


# before the worker builds its uvicorn server: the HTTP protocol with these limits
install_http_limits(
    ServerLimits(
        header_timeout_s=args.header_timeout_s,
        body_idle_timeout_s=args.body_idle_timeout_s,
        body_timeout_s=args.body_timeout_s,
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive_s,
    )
)


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
        count_refusals_with(self.monitor.rejected)  # timeouts and the connection limit
        names = set(self.schema.names)
        self.id_field = args.id_field if args.id_field and args.id_field not in names else None
        self.log = _prediction_log(stored, self.schema, meta)
        _state.update(
            schema=self.schema,
            monitor=self.monitor,
            id_field=self.id_field,
            log=self.log,
            max_feedback_items=LogSettings.max_feedback_items,
            identity={"model": stored.tag.name, "version": stored.tag.version},
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

        BentoML merges concurrent requests into one call. RequestGuard has checked every
        record and hands on only what it checked; should the model still fail on the merged
        batch, its halves are scored on their own, so a record the model cannot score costs
        only its own request an answer (the guard turns its item into a 500).
        """
        ids = [self._record_id(r) for r in records]
        answers = score_in_parts(records, self._score)
        if self.log is not None:
            scored = [j for j, a in enumerate(answers) if UNSCORED not in a]
            if len(scored) == len(answers):
                self.log.submit(ids, records, answers)
            elif scored:
                pick = [ids[j] for j in scored], [records[j] for j in scored]
                self.log.submit(*pick, [answers[j] for j in scored])
        return [{"id": i, **a} for i, a in zip(ids, answers, strict=True)]

    def _score(self, records: list[dict[str, Any]]) -> list[dict]:
        columns = records_to_columns(records, self.schema)
        X = pd.DataFrame(columns)
        with self.monitor.timed(len(X)):
            result = predict_frame(self.model, X)
        if args.monitoring:
            self.monitor.observe(columns, result["prediction"].to_numpy())
        return prediction_records(result)

    def _record_id(self, record: dict[str, Any]) -> str:
        own = record.get(self.id_field) if self.id_field else None
        if own is not None:
            return str(own)
        # 128 random bits: no caller can guess another's id (prediction_log.RandomIds)
        return new_id()


def _problem(problem: str, reason: str) -> dict[str, Any]:
    return {"record": None, "field": None, "problem": problem, "reason": reason}


_BODY_REFUSALS = {413: "too_large", 415: "unsupported_media_type"}


def _tie_to_caller(scope, records: list[dict[str, Any]]) -> None:
    """Mark the checked records of a /predict request that carries a feedback token with
    its caller, so only that caller can label them (prediction_log.py, owners). A request
    without a token, or with one that is not a feedback token (a gateway's own, say), is
    served all the same: its predictions have no caller."""
    callers: Callers | None = _state.get("callers")
    if callers is None:
        return
    caller, _ = callers.identify(scope["headers"])
    if caller is not None:
        for record in records:
            record[CALLER_FIELD] = caller


async def _refuse_feedback(
    send,
    plog: PredictionLog | None,
    status: int,
    problem: str,
    reason: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A /feedback refusal in the error format, counted in automl_feedback_rejected_total."""
    if plog is not None:
        plog.metrics.rejected[reason].inc()
    body = json.dumps({"error": _problem(problem, reason)}).encode()
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _prediction_log(stored, schema: Schema, meta: dict[str, Any]) -> PredictionLog | None:
    """The worker's prediction log, or None when logging is off; with it, who may label
    (`_state["callers"]`: None when /feedback takes labels from anyone)."""
    if args.log_predictions == "off":
        return None
    if CALLER_FIELD in schema.names:
        raise ValueError(f"a model column is named {CALLER_FIELD!r}, which the log reserves")
    if args.feedback_auth == "none":
        log.warning(
            "feedback_auth none: anyone who can reach /feedback can label predictions; "
            "give callers tokens (AUTOML_FEEDBACK_TOKENS) unless the network is trusted"
        )
        _state["callers"] = None
    else:
        _state["callers"] = Callers(args.feedback_tokens)
    if args.feedback_rate > 0:  # a burst of one full request
        _state["label_rate"] = LabelRate(args.feedback_rate, LogSettings.max_feedback_items)
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
        volume_bytes=int(args.log_volume_mb * 1024 * 1024),
        workers=args.workers,
        id_field=args.id_field if args.id_field and args.id_field not in schema.names else None,
        label_ttl_s=args.label_ttl_s,
        quality_window=args.quality_window,
        store_url=args.log_store,
        store_max_rows=args.log_store_max_rows,
        label_grace_s=args.label_grace_s,
        replica=args.replica,
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
