"""The search submitted as a Ray job through the cluster's Ray Jobs API (the dashboard port).

A pipeline pod cannot drive a search on a KubeRay cluster itself: Ray Client (`ray://`) runs
the Tuner on the head, away from the step's callbacks, and joining by the GCS address needs a
raylet in the pod. So the step hands the whole search to the cluster: it puts its inputs in
the object store (see exchange.py), submits `python -m kfp_automl.components.tune.job` as a
Ray job, prints the job's log as it grows, and copies the job's outputs into its own.

- The submission id is `kfp-automl-tune-<digest of the state path>-<n>`: the state path is
  the same for every attempt of one task, so a retried pod finds the job of the pod it
  replaces and attaches to it while it runs (or takes its outputs once it succeeded).
- A job that lost its driver (killed, its node gone, the job record gone with the head) is
  resubmitted as `<n+1>`, up to MAX_RESUBMITS times per pod; the new driver restores the
  search from its saved Tune state, so finished trials are not run again. A job that failed
  on its own (a user error, a bug) or was stopped is not resubmitted by this pod.
- The token (RAY_AUTH_TOKEN, from the Secret automl-ray-auth on a cluster) goes in the
  `Authorization: Bearer` header Ray's token authentication reads. Nothing else secret is
  sent: the job's runtime_env (which the dashboard shows) is empty, and the cluster's pods
  read the object store with their own credentials.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kfp_automl import __version__
from kfp_automl.components.tune.exchange import ERRORS, INFO, INPUTS, OUTPUTS, SPEC, Exchange
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.errors import UserError
from kfp_automl.progress import say
from kfp_automl.registry.training_rows import ROWS_FILE
from kfp_automl.runtime.model_file import MODEL_FILE, sha256_file

SCHEMES = ("http://", "https://")
PREFIX = "kfp-automl-tune-"
ENTRYPOINT = "python -m kfp_automl.components.tune.job"
POLL_S = 2.0
CONNECT_TIMEOUT_S = 15.0
UNREACHABLE_S = 120.0  # how long the Jobs API may stay away (a head restarting) while a job runs
MAX_RESUBMITS = 2
LOG_TAIL = 15  # log lines quoted when a job fails
TOKEN_SECRET = "automl-ray-auth"
SUPERVISOR_DIED = "JOB_SUPERVISOR_ACTOR_DIED"  # Ray's JobErrorType when the job's node is lost


def is_jobs_url(address: str) -> bool:
    """`address` names a Ray Jobs API (http(s)://HEAD:8265) rather than a GCS address."""
    return address.strip().lower().startswith(SCHEMES)


def submission_prefix(exchange_url: str) -> str:
    """The submission ids of one task's jobs: the same for every attempt of the task."""
    return PREFIX + hashlib.sha256(exchange_url.encode()).hexdigest()[:16]


def _reason(exc: BaseException) -> str:
    import requests

    text = str(exc)
    if isinstance(exc, requests.Timeout):
        return f"no answer in {CONNECT_TIMEOUT_S:.0f}s"
    if "Name or service not known" in text or "resolve" in text:
        return "the host name does not resolve"
    if "Connection refused" in text:
        return "connection refused"
    return type(exc).__name__


def connect(address: str, token: str) -> Any:
    """A JobSubmissionClient for `address`, after checking that a Ray Jobs API answers there
    and accepts `token`; a clear UserError otherwise."""
    import requests
    from ray.job_submission import JobSubmissionClient

    url = address.strip().rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    where = f"ray_address {url}"
    try:
        r = requests.get(f"{url}/api/version", headers=headers, timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as exc:
        raise UserError(
            f"{where}: no Ray Jobs API answers there ({_reason(exc)}); give the Ray head's "
            "dashboard port, http://HEAD:8265"
        ) from None
    if r.status_code == 401:
        raise UserError(
            f"{where}: the Ray cluster requires a token and RAY_AUTH_TOKEN is "
            f"{'refused' if token else 'not set'} (on a cluster: the Secret {TOKEN_SECRET}, "
            "key auth_token, in the run's namespace)"
        )
    if r.status_code == 403:
        raise UserError(
            f"{where}: the Ray cluster refused the token in RAY_AUTH_TOKEN (HTTP 403); it must "
            f"be the cluster's own token (the Secret {TOKEN_SECRET}, key auth_token)"
        )
    if r.status_code >= 500:
        raise RuntimeError(
            f"{where}: the Ray Jobs API answered HTTP {r.status_code}: {r.text[:200]}"
        )
    try:
        ray_version = r.json()["ray_version"]
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"{where}: not a Ray Jobs API (HTTP {r.status_code} for /api/version); give the "
            "Ray head's dashboard port, http://HEAD:8265"
        ) from None
    say("tune", f"Ray Jobs API at {url} (Ray {ray_version})")
    return JobSubmissionClient(url, headers=headers)


def run_as_job(
    address: str,
    *,
    train_path: str,
    valid_path: str,
    schema_path: str,
    model_dir: str,
    leaderboard_path: str,
    report_path: str,
    storage_path: str,
    warm_start: str,
    options: dict[str, Any],
) -> ModelInfo:
    """Run the search as a Ray job on the cluster at `address`; copy its outputs into the
    step's paths and return what its model's artifact says about the model."""
    if not storage_path:
        raise UserError(
            f"ray_address {address}: a search on a Ray cluster reads its inputs, keeps its state "
            "and writes its outputs in a store the cluster reaches, and search_state_root "
            "'none' leaves it none: leave search_state_root empty (beside the task's outputs) "
            "or give an s3://, minio:// or gs:// URL"
        )
    client = connect(address, os.environ.get("RAY_AUTH_TOKEN", "").strip())
    ex = Exchange(f"{storage_path.rstrip('/')}/job")
    prefix = submission_prefix(ex.url)
    number, job = _latest(client, prefix)
    if job is not None and not job.status.is_terminal():
        sid = job.submission_id
        say("tune", f"attaching to Ray job {sid}, still running for this task")
    elif job is not None and job.status.value == "SUCCEEDED" and ex.exists(INFO):
        sid = job.submission_id
        say("tune", f"Ray job {sid} already finished for this task; taking its outputs")
    else:
        _put_inputs(ex, train_path, valid_path, schema_path, warm_start, storage_path, options)
        number += 1
        if job is not None:
            say("tune", f"Ray job {job.submission_id} ended {job.status.value}; resubmitting")
        sid = _submit(client, ex, f"{prefix}-{number}")
    resubmits = 0
    while True:
        info = _follow(client, sid)
        lost = _lost(ex, sid, info)
        if lost and resubmits < MAX_RESUBMITS:
            resubmits += 1
            number += 1
            say("tune", f"Ray job {sid} lost its driver ({lost}); resubmitting, it resumes")
            sid = _submit(client, ex, f"{prefix}-{number}")
            continue
        if lost:
            raise RuntimeError(f"Ray job {sid} lost its driver ({lost}), {resubmits + 1} times")
        if info.status.value == "SUCCEEDED":
            break
        if info.status.value == "STOPPED":
            raise RuntimeError(
                f"Ray job {sid} was stopped; a retry of the step resubmits it and resumes the "
                "search from its saved state"
            )
        _raise_failure(client, ex, sid, info)
    return _take_outputs(ex, sid, model_dir, leaderboard_path, report_path)


def _latest(client: Any, prefix: str) -> tuple[int, Any]:
    """(number, job) of this task's latest job, or (0, None)."""
    best: tuple[int, Any] = (0, None)
    for job in client.list_jobs():
        sid = job.submission_id or ""
        tail = sid[len(prefix) + 1 :]
        if sid.startswith(f"{prefix}-") and tail.isdigit() and int(tail) > best[0]:
            best = (int(tail), job)
    return best


def _put_inputs(
    ex: Exchange,
    train_path: str,
    valid_path: str,
    schema_path: str,
    warm_start: str,
    storage_path: str,
    options: dict[str, Any],
) -> None:
    say("tune", f"putting the search's inputs in {ex.url}")
    ex.put(train_path, f"{INPUTS}/train.parquet")
    ex.put(valid_path, f"{INPUTS}/valid.parquet")
    ex.put(schema_path, f"{INPUTS}/schema.json")
    if warm_start:  # read here, with the step's credentials; the job gets a copy
        from kfp_automl.components.tune import warm_start as ws

        ex.write_bytes(
            f"{INPUTS}/warm_start.csv", ws.read_leaderboard(warm_start).to_csv(index=False).encode()
        )
    else:
        ex.remove(f"{INPUTS}/warm_start.csv")
    ex.write_json(
        SPEC,
        {"version": __version__, "storage_path": storage_path, "options": options},
    )


def _submit(client: Any, ex: Exchange, sid: str) -> str:
    entrypoint = f"{ENTRYPOINT} {shlex.quote(ex.url)} {sid}"
    try:
        client.submit_job(
            entrypoint=entrypoint,
            submission_id=sid,
            metadata={"kfp-automl": "tune", "exchange": ex.url},
        )
    except RuntimeError as exc:
        if "already exists" not in str(exc):  # else another attempt of this task submitted it
            raise RuntimeError(f"the Ray Jobs API refused the search: {_first_line(exc)}") from None
    say("tune", f"submitted the search as Ray job {sid}")
    return sid


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _follow(client: Any, sid: str) -> Any:
    """Print the job's log as it grows until the job ends; its JobInfo then, or None when the
    job is gone (its record lost with the head)."""
    printed, away_since = 0, None
    while True:
        try:
            info = client.get_job_info(sid)
            logs = client.get_job_logs(sid)
        except (OSError, RuntimeError) as exc:  # connection errors, HTTP 5xx: a head restarting
            if isinstance(exc, RuntimeError) and "does not exist" in str(exc):
                return None
            away_since = away_since or time.monotonic()
            if time.monotonic() - away_since > UNREACHABLE_S:
                raise RuntimeError(
                    f"the Ray Jobs API went away for {UNREACHABLE_S:.0f}s while job {sid} ran "
                    f"({_first_line(exc)}); a retry of the step attaches to the job again"
                ) from None
            time.sleep(POLL_S)
            continue
        away_since = None
        done = info.status.is_terminal()
        end = len(logs) if done else logs.rfind("\n", printed) + 1
        if end > printed:
            sys.stdout.write(logs[printed:end] + ("" if logs[printed:end].endswith("\n") else "\n"))
            sys.stdout.flush()
            printed = end
        if done:
            return info
        time.sleep(POLL_S)


def _lost(ex: Exchange, sid: str, info: Any) -> str:
    """Why the job's driver is gone ("" if it is not): it vanished, or died by a signal or
    with its node, without a report of its own."""
    if info is None:
        return "the cluster no longer knows the job"
    if info.status.value != "FAILED" or ex.exists(f"{ERRORS}/{sid}.json"):
        return ""
    code = info.driver_exit_code
    if code is not None and (code < 0 or code > 128):
        return f"exit code {code}"
    if code is None and getattr(info.error_type, "value", info.error_type) == SUPERVISOR_DIED:
        return "its supervisor died"
    return ""


def _raise_failure(client: Any, ex: Exchange, sid: str, info: Any) -> None:
    if ex.exists(f"{ERRORS}/{sid}.json"):
        report = ex.read_json(f"{ERRORS}/{sid}.json")
        if report.get("user_error"):
            raise UserError(report["message"])
        raise RuntimeError(f"Ray job {sid} failed: {report.get('type')}: {report.get('message')}")
    try:
        tail = client.get_job_logs(sid).rstrip().splitlines()[-LOG_TAIL:]
    except (OSError, RuntimeError):
        tail = []
    if info.driver_exit_code is not None:
        why = f"exit code {info.driver_exit_code}"
    else:  # it never started: a runtime environment, a supervisor that could not be placed
        why = (info.message or "no reason given").splitlines()[0][:300]
    raise RuntimeError(f"Ray job {sid} failed ({why}); its last log lines:\n" + "\n".join(tail))


def _take_outputs(
    ex: Exchange, sid: str, model_dir: str, leaderboard_path: str, report_path: str
) -> ModelInfo:
    """Copy the job's outputs into the step's paths; the model only once its digest matches
    the one the job recorded."""
    info = ModelInfo.from_metadata(ex.read_json(INFO))
    target = Path(model_dir)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".job-model-") as tmp:
        names = ex.get_tree(f"{OUTPUTS}/model", tmp)
        actual = sha256_file(Path(tmp) / MODEL_FILE)
        if actual != info.sha256:
            raise RuntimeError(
                f"the model of Ray job {sid} in {ex.url} has sha256 {actual[:12]}..., the job "
                f"recorded {info.sha256[:12]}...; not taking it"
            )
        rows = Path(tmp) / ROWS_FILE
        if info.rows_sha256 and (not rows.exists() or sha256_file(rows) != info.rows_sha256):
            raise RuntimeError(
                f"the training-row hashes of Ray job {sid} in {ex.url} are missing or not the "
                "ones the job recorded; not taking the model"
            )
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / name, target / name)
    ex.get(f"{OUTPUTS}/leaderboard.csv", leaderboard_path)
    if report_path:
        ex.get(f"{OUTPUTS}/search_report.html", report_path)
    say("tune", f"took the model, leaderboard and report of Ray job {sid}")
    return info
