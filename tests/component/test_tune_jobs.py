"""The search submitted as a Ray job, run for real: a two-node Ray cluster on 127.0.0.1 with its
Jobs API (the dashboard) and token authentication, the tune step's files-to-files `run()` in
its own process as the tune pod, and its files only through an S3 server (moto) on 127.0.0.1,
as on a cluster where the pod and the Ray nodes share no disk.

The Ray nodes get the store's credentials in their own environment (as the RayCluster's pods
get the Secret kfp-automl-storage); the step gets them and RAY_AUTH_TOKEN only (no
RAY_AUTH_MODE, no Ray of its own), as the compiled pipeline gives them to the tune pod.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from kfp_automl.components.prepare.prepare import prepare
from kfp_automl.components.tune.submit import submission_prefix
from kfp_automl.registry.training_rows import ROWS_FILE
from kfp_automl.runtime.model_file import MODEL_FILE, sha256_file
from kfp_automl.tables.io import read_table, write_parquet
from tests.support.ray_cluster import ray_cluster
from tests.support.s3_server import s3_env, s3_server

pytestmark = pytest.mark.slow
BUCKET = "pipeline"
# A grid with cross-validation: deterministic trials of a second or two, whose top predictions
# make an ensemble. Two slow random forests from a warm-start leaderboard go first: while they
# run, both nodes' trial actors start (Tune gives a trial whose actor is still starting to a
# free one, so with only short trials the second node's actor, slower to start, might never
# get one).
SEARCH = dict(
    families="linear,hist_gb,random_forest",
    algorithm="grid",
    validation="cv",
    early_stopping=False,
    time_budget_s=150,
)
SLOW = {"n_estimators": 300, "min_samples_leaf": 1, "encoding": "auto"}
SEEDS = [{**SLOW, "max_features": 1.0}, {**SLOW, "max_features": 0.9}]


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory) -> str:
    """A previous leaderboard (as a path the step reads; the job gets a copy)."""
    path = tmp_path_factory.mktemp("warm") / "leaderboard.csv"
    rows = [
        {"rank": i + 1, "family": "random_forest", "params": json.dumps(p), "status": "ok"}
        for i, p in enumerate(SEEDS)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def prepared(small_churn_csv):
    return prepare(read_table(small_churn_csv), "churn")


@pytest.fixture(scope="module")
def store():
    """(the AWS environment of the S3 server, a boto3 client), with the bucket made."""
    import boto3

    with s3_server() as endpoint:
        aws = s3_env(endpoint)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield aws, client


@pytest.fixture(scope="module")
def cluster(store):
    aws, _ = store
    env = {
        **os.environ,
        **aws,  # the RayCluster's pods mount the storage Secret
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the image's
        # save the experiment every 3 s (every second, Tune's controller waits on the single-
        # threaded S3 server so long that it runs one trial at a time)
        "TUNE_GLOBAL_CHECKPOINT_S": "3",
    }
    with ray_cluster(env, workers=1, cpus=1, dashboard=True) as c:
        yield c


def _step_env(store, token: str | None) -> dict[str, str]:
    aws, _ = store
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(aws)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _inputs(prepared, tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    write_parquet(tmp / "train.parquet", prepared.train)
    write_parquet(tmp / "valid.parquet", prepared.valid)
    prepared.schema.write(tmp / "schema.json")
    return {
        "train_path": str(tmp / "train.parquet"),
        "valid_path": str(tmp / "valid.parquet"),
        "schema_path": str(tmp / "schema.json"),
    }


STEP = """
import json, sys
from kfp_automl.components.tune.tune import run
print("META " + json.dumps(run(**json.loads(sys.argv[1])).to_metadata()), flush=True)
"""


_STEPS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_step_left():
    yield
    while _STEPS:
        proc = _STEPS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


class Step:
    """The tune step's `run()` in its own process (the tune pod), its output collected."""

    def __init__(self, env: dict[str, str], **kwargs):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STEP, json.dumps(kwargs)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _STEPS.append(self.proc)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.reader.join(5)
                pytest.fail(f"no {text!r} from the step:\n{self.out[-3000:]}")
            time.sleep(0.2)

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def meta(self) -> dict:
        [line] = [x for x in self.lines if x.startswith("META ")]
        return json.loads(line[5:])


def _run_args(files: dict, out: Path, state: str, **kwargs) -> dict:
    return {
        **files,
        "model_dir": str(out / "model"),
        "leaderboard_path": str(out / "leaderboard.csv"),
        "report_path": str(out / "search_report.html"),
        "storage_path": state,
        **kwargs,
    }


def _finished(client, state: str) -> set[str]:
    """The trial ids the saved experiment state in the store has as finished."""
    prefix = state.removeprefix(f"s3://{BUCKET}/") + "/search/experiment_state-"
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    ids: set[str] = set()
    for obj in listing:
        data = json.loads(client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
        for entry in data.get("trial_data", []):
            trial = json.loads(entry[0]) if isinstance(entry, list) else entry
            if trial.get("status") == "TERMINATED":
                ids.add(trial["trial_id"])
    return ids


def _wait_finished(client, state: str, at_least: int, step: Step, timeout: float = 120) -> set:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _finished(client, state)
        if len(done) >= at_least:
            return done
        if step.proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"fewer than {at_least} finished trials saved in {state}:\n{step.out[-3000:]}")


def _jobs(cluster, state: str) -> dict[str, str]:
    """This task's Ray jobs: submission id -> status."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(
        cluster.jobs_url, headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"}
    )
    prefix = submission_prefix(f"{state}/job")  # the step's exchange folder (exchange.py)
    return {
        j.submission_id: j.status.value
        for j in client.list_jobs()
        if (j.submission_id or "").startswith(prefix)
    }


def _kill_drivers(cluster) -> list[int]:
    """Kill the search's driver (the job's entrypoint) wherever Ray started it."""
    killed = []
    for p in cluster.descendants():
        try:
            cmd = p.cmdline()
            if cmd[:1] != ["/bin/sh"] and "kfp_automl.components.tune.job" in " ".join(cmd):
                p.kill()
                killed.append(p.pid)
        except psutil.Error:
            continue
    return killed


def test_a_search_as_a_ray_job_survives_a_lost_pod_and_a_lost_driver(
    prepared, tmp_path, cluster, store, warm_start
):
    _, s3 = store
    files = _inputs(prepared, tmp_path / "in")
    state = f"s3://{BUCKET}/{tmp_path.name}/tune/search-state"
    env = _step_env(store, cluster.env["RAY_AUTH_TOKEN"])
    args = dict(ray_address=cluster.jobs_url, max_trials=16, warm_start=warm_start, **SEARCH)

    first = Step(env, **_run_args(files, tmp_path / "pod1", state, **args))
    first.wait_for("submitted the search as Ray job")
    first.proc.kill()  # the tune pod is lost; its job goes on
    first.finish(30)
    assert list(_jobs(cluster, state).values()) in (["PENDING"], ["RUNNING"])

    second = Step(env, **_run_args(files, tmp_path / "pod2", state, **args))  # KFP's retry
    second.wait_for("attaching to Ray job")
    before = _wait_finished(s3, state, 3, second)
    assert _kill_drivers(cluster), "no driver process of the job found"
    code = second.finish()
    out = second.out
    assert code == 0, out[-4000:]
    assert "lost its driver (exit code" in out and "resuming the search" in out
    jobs = _jobs(cluster, state)
    assert sorted(jobs.values()) == ["FAILED", "SUCCEEDED"], jobs  # one resubmission, no more

    board = pd.read_csv(tmp_path / "pod2" / "leaderboard.csv")
    assert len(board) == 16 and board["trial_id"].is_unique
    assert before <= set(board["trial_id"])  # the trials finished before the kill were kept
    assert (board["status"] == "ok").all()
    assert board["node_id"].nunique() == 2, board[["family", "node_id"]]  # both nodes ran trials
    meta = second.meta()
    assert meta["n_trials"] == 16 and len(before) <= meta["n_restored"] < 16
    # the driver ran on the cluster with the trials' predictions: an ensemble, refitted
    assert meta["family"] == "ensemble", meta
    assert len(json.loads(meta["params"])) >= 2
    assert meta["valid_score"] > meta["best_single_score"]
    assert sha256_file(tmp_path / "pod2" / "model" / MODEL_FILE) == meta["sha256"]
    # the hashes of its training inputs came back from the cluster with it, as recorded
    assert sha256_file(tmp_path / "pod2" / "model" / ROWS_FILE) == meta["rows_sha256"]
    assert "Search history" in (tmp_path / "pod2" / "search_report.html").read_text()
    assert "ensemble of" in out  # the job's progress lines are in the step's log
    assert "warm start: 2 configurations" in out  # the leaderboard the step read, in the job
    seeded = [json.loads(p) for p in board[board["family"] == "random_forest"]["params"]]
    assert all(seed in seeded for seed in SEEDS)
    assert not (tmp_path / "pod1" / "leaderboard.csv").exists()


def test_a_stopped_job_fails_the_step_and_its_retry_resumes_the_search(
    prepared, tmp_path, cluster, store, warm_start
):
    _, s3 = store
    files = _inputs(prepared, tmp_path / "in")
    state = f"s3://{BUCKET}/{tmp_path.name}/tune/search-state"
    env = _step_env(store, cluster.env["RAY_AUTH_TOKEN"])
    args = dict(ray_address=cluster.jobs_url, max_trials=6, warm_start=warm_start, **SEARCH)

    first = Step(env, **_run_args(files, tmp_path / "pod1", state, **args))
    first.wait_for("submitted the search as Ray job")
    before = _wait_finished(s3, state, 2, first)
    [sid] = _jobs(cluster, state)
    stop = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "job", "stop", sid],
        env={**cluster.env, "RAY_API_SERVER_ADDRESS": cluster.jobs_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert first.finish() != 0
    assert f"Ray job {sid} was stopped" in first.out
    assert not (tmp_path / "pod1" / "leaderboard.csv").exists()  # nothing half-written

    retry = Step(env, **_run_args(files, tmp_path / "pod2", state, **args))
    assert retry.finish() == 0, retry.out[-4000:]
    assert "ended STOPPED; resubmitting" in retry.out and "resuming the search" in retry.out
    board = pd.read_csv(tmp_path / "pod2" / "leaderboard.csv")
    assert len(board) == 6 and board["trial_id"].is_unique and before <= set(board["trial_id"])
    assert retry.meta()["n_restored"] >= len(before)
    assert sorted(_jobs(cluster, state).values()) == ["STOPPED", "SUCCEEDED"]


@pytest.mark.parametrize(
    "token, expected",
    [
        ("wrong", "refused the token in RAY_AUTH_TOKEN (HTTP 403)"),
        (None, "requires a token and RAY_AUTH_TOKEN is not set"),
    ],
)
def test_the_jobs_api_refuses_a_step_without_the_clusters_token(
    prepared, tmp_path, cluster, store, token, expected
):
    files = _inputs(prepared, tmp_path / "in")
    state = f"s3://{BUCKET}/{tmp_path.name}/tune/search-state"
    step = Step(
        _step_env(store, token),
        **_run_args(files, tmp_path / "out", state, ray_address=cluster.jobs_url, **SEARCH),
    )
    assert step.finish(120) != 0
    [error] = [line for line in step.lines if line.startswith("kfp_automl.errors.UserError")]
    assert expected in error and "automl-ray-auth" in error
    assert _jobs(cluster, state) == {}  # nothing submitted
    assert not (tmp_path / "out" / "leaderboard.csv").exists()
