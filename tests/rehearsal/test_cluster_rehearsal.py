"""The compiled pipeline on a rehearsed Kubeflow backend (tests/support/rehearsal.py).

Each task runs in its own process with its own disk, artifacts and the registry travel only
through an S3 store on 127.0.0.1 under a `minio://` root, credentials come only from the
Secret the pipeline maps, and KFP's cache and retry policy apply. What these runs show is what
`kfp.local` cannot: a retrain on the same URL sees new rows, a second run is gated against the
first run's champion, and a killed search resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.support.kfp_standin import KfpStandIn
from tests.support.kube_apiserver import StandInApiServer, write_kubeconfig
from tests.support.rehearsal import Rehearsal, wait_for
from tests.support.s3_server import s3_env, s3_server
from tests.support.servers import CLI, free_port, stop, wait_ready

pytestmark = pytest.mark.slow

BUCKET = "mlpipeline"
DATA_KEY = "data/churn/latest.csv"
DATA = f"s3://{BUCKET}/{DATA_KEY}"
STORAGE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
# small and quick: one family, a few trials, no ensemble
QUICK = {
    "data": DATA,
    "target": "churn",
    "families": "linear",
    "time_budget_s": 20,
    "max_trials": 2,
    "ensemble": False,
    "n_bootstrap": 50,
    "model_name": "churn-rehearsal",
}


@pytest.fixture(scope="module")
def store():
    """(endpoint, botocore client) of a fresh S3 server with KFP's default bucket."""
    import botocore.session

    with s3_server() as endpoint:
        env = s3_env(endpoint)
        client = botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client


def _backend(store, tmp_path_factory, prefix: str) -> Rehearsal:
    endpoint, client = store
    env = s3_env(endpoint)
    secret = {k: env[k] for k in STORAGE_KEYS}
    return Rehearsal(
        client, endpoint, BUCKET, secrets={"kfp-automl-storage": secret}, root_prefix=prefix
    )


def _put_table(client, df: pd.DataFrame) -> None:
    client.put_object(Bucket=BUCKET, Key=DATA_KEY, Body=df.to_csv(index=False).encode())


def _ok(result) -> None:
    assert result.state == "succeeded", result.explain()


def _decision(backend: Rehearsal, result) -> dict:
    return json.loads(backend.read(result["gate-model"].artifacts["decision"]))


@pytest.fixture(scope="module")
def tables(churn_df):
    """Two versions of the table behind one URL: 300 rows, then 450 other rows."""
    shuffled = churn_df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    return shuffled.iloc[:300], shuffled.iloc[300:750]


@pytest.fixture(scope="module")
def retraining(store, tables, tmp_path_factory):
    """Three runs on one URL: the first table, the same table again, then a changed table."""
    backend = _backend(store, tmp_path_factory, "v2/artifacts")
    _, client = store
    first, second = tables
    _put_table(client, first)
    runs = [backend.run(QUICK)]
    runs.append(backend.run(QUICK))
    _put_table(client, second)
    runs.append(backend.run(QUICK))
    yield backend, runs
    backend.close()


def test_every_task_ran_in_its_own_pod_with_credentials_only_from_the_secret(retraining):
    backend, (first, _, _) = retraining
    _ok(first)
    ran = [t for t in first.tasks.values() if t.state == "succeeded" and t.logs]
    assert {t.name for t in ran} >= {
        "fingerprint-inputs",
        "prepare-data",
        "tune-models",
        "evaluate-model",
        "package-model",
        "gate-model",
        "promote-model",
    }
    homes = {str(t.logs[0].parent) for t in ran}
    assert len(homes) == len(ran)  # one disk per task
    for task in ran:
        # object-store credentials only from the Secret the YAML maps, and only where needed
        reads_store = task.name != "evaluate-model"
        assert ("AWS_SECRET_ACCESS_KEY" in task.env_names) is reads_store, task.name
        assert ("KFP_AUTOML_NAMESPACE" in task.env_names) is reads_store, task.name
    # requests = limits, resolved from the pipeline parameters inside the conditions too
    promote = first["promote-model"].resources
    assert promote["resourceMemoryLimit"] == promote["resourceMemoryRequest"] == "4Gi"
    assert first["tune-models"].resources["resourceCpuLimit"] == "2"


def test_the_first_run_makes_a_champion_in_the_namespace_registry(retraining):
    backend, (first, _, _) = retraining
    _ok(first)
    decision = _decision(backend, first)
    assert decision["deploy"] is True and "no champion" in decision["reason"]
    assert first["promote-model"].state == "succeeded"
    doc = json.loads(
        backend.s3.get_object(Bucket=BUCKET, Key="kfp-automl-registry/team-a/churn-rehearsal.json")[
            "Body"
        ].read()
    )
    assert doc["champion"]
    assert "registry minio://mlpipeline/kfp-automl-registry/team-a" in first["gate-model"].log()


def test_an_unchanged_table_reuses_the_split_and_the_search(retraining):
    _, (first, second, _) = retraining
    _ok(second)
    for task in ("prepare-data", "tune-models", "evaluate-model"):
        assert second[task].state == "cached", task
        assert second[task].cache_key == first[task].cache_key
    for task in ("fingerprint-inputs", "package-model", "gate-model"):
        assert second[task].state == "succeeded", task  # never cached
    assert (
        second["prepare-data"].artifacts["train"].uri
        == first["prepare-data"].artifacts["train"].uri
    )


def test_the_second_run_is_gated_against_the_first_runs_champion(retraining):
    backend, (first, second, _) = retraining
    decision = _decision(backend, second)
    assert "no champion" not in decision["reason"], decision
    assert decision["champion_version"] and decision["champion_score"] is not None
    champion_tag = first["package-model"].artifacts["bento"].metadata["model_tag"]
    assert decision["champion_version"] in champion_tag


def test_a_changed_table_behind_the_same_url_retrains_on_the_new_rows(retraining, tables):
    backend, (first, _, third) = retraining
    _ok(third)
    assert third["prepare-data"].state == "succeeded"  # a cache miss, not the old split
    assert third["tune-models"].state == "succeeded"
    version = third["fingerprint-inputs"].parameters["data_version"]
    assert version != first["fingerprint-inputs"].parameters["data_version"]
    splits = {k: third["prepare-data"].artifacts[k].metadata for k in ("train", "valid", "test")}
    assert {m["data_version"] for m in splits.values()} == {version}
    assert sum(m["rows"] for m in splits.values()) == len(tables[1])
    assert "no champion" not in _decision(backend, third)["reason"]


DEPLOY_FIXTURE = Path(__file__).resolve().parents[1] / "deploy" / "fixtures" / "serving.yaml"
TRIGGER_TOKEN = "rehearsal-trigger-token-0123"


def _drift_alert(model: str) -> dict:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "retrain",
        "groupLabels": {"alertname": "AutomlFeatureDrift"},
        "commonLabels": {"action": "retrain"},
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "AutomlFeatureDrift",
                    "action": "retrain",
                    "model": model,
                    "version": "v1",
                    "feature": "tenure",
                },
                "annotations": {"summary": f"Feature tenure of {model} drifted"},
                "startsAt": "2026-12-02T04:00:00.000Z",
                "fingerprint": f"{model}-tenure",
            }
        ],
    }


@pytest.fixture(scope="module")
def kube():
    """The recording stand-in Kubernetes API server the deploy pods talk to."""
    with StandInApiServer() as api:
        yield api


def _served(api) -> str:
    """The version label of the last Deployment applied (what the cluster serves)."""
    applied = [
        r.body for r in api.state.calls()
        if r.method == "PATCH" and r.path.endswith("/deployments/automl-serving")
    ]  # fmt: skip
    return applied[-1]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"]


def _champion(backend) -> str:
    doc = json.loads(
        backend.s3.get_object(Bucket=BUCKET, Key="kfp-automl-registry/team-a/churn-rehearsal.json")[
            "Body"
        ].read()
    )
    return json.dumps(doc["champion"])


def test_a_drift_alert_starts_a_run_that_is_gated_and_deployed(store, retraining, kube, tmp_path):
    """Alertmanager -> the retrain trigger -> KFP's API (the stand-in records the run) -> the
    recorded run on the rehearsal -> gated against the champion -> rolled out to the API server.
    The trigger keeps the deploy only because the model has a champion in the namespace's
    registry (it reads it from the object store, as the Deployment would with the Secret)."""
    backend, (_, _, third) = retraining
    endpoint, _ = store
    params = {k: v for k, v in QUICK.items() if k not in ("data", "target", "model_name")}
    params["min_improvement"] = -1.0  # any challenger may replace the champion here
    flags = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()]
    api = kube
    with KfpStandIn() as kfp:
        port = free_port()
        proc = subprocess.Popen(
            [*CLI, "retrain-trigger", "--port", str(port), "--kfp-host", kfp.url,
             "--state-dir", str(tmp_path / "state"), "--data", DATA, "--target", "churn",
             "--deploy-namespace", "ml-serving", "--deploy-manifests", str(DEPLOY_FIXTURE),
             "--allow-model", QUICK["model_name"],
             "--champion-registry", f"minio://{BUCKET}/kfp-automl-registry/team-a",
             *[a for f in flags for a in ("--param", f)]],
            env={**os.environ, **s3_env(endpoint), "KFP_AUTOML_TRIGGER_TOKEN": TRIGGER_TOKEN},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=60)
            answer = httpx.post(
                f"http://127.0.0.1:{port}/alerts",
                json=_drift_alert(QUICK["model_name"]),
                headers={"authorization": f"Bearer {TRIGGER_TOKEN}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert [r["deploys"] for r in answer.json()["runs"]] == [True]
        finally:
            stop(proc)
        [body] = kfp.runs
        backend.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.host)
        try:
            result = backend.run_request(body)
        finally:
            backend.kubeconfig = None
        _ok(result)
        # the same table and settings as the run before: the split and the search are reused
        assert result["prepare-data"].state == "cached"
        decision = _decision(backend, result)
        assert decision["deploy"] is True and "no champion" not in decision["reason"]
        version = result["package-model"].artifacts["bento"].metadata["bento_tag"].split(":")[1]
        assert result["deploy-model"].state == "succeeded"
        assert _served(api) == version
        assert version in _champion(backend)  # promoted after the rollout
        assert third.run_id != result.run_id


def test_a_deploy_that_never_becomes_ready_leaves_registry_and_cluster_agreeing(
    retraining, kube, tmp_path
):
    """The new version passes the gate but its pods never become ready: the deploy step (and its
    retry) rolls the Deployment back, promote never runs, and the registry's champion is the
    version the cluster serves."""
    backend, _ = retraining
    served = _served(kube)
    assert served in _champion(backend)
    kube.state.rollout = {served: "ready"}
    kube.state.default_rollout = "never"
    backend.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.host)
    try:
        result = backend.run(
            {
                **QUICK,
                "min_improvement": -1.0,
                "deploy_namespace": "ml-serving",
                "deploy_manifests": str(DEPLOY_FIXTURE),
                "deploy_timeout_s": 5,
            }
        )
    finally:
        backend.kubeconfig = None
        kube.state.default_rollout = "ready"
    assert result.state == "failed", result.explain()
    assert _decision(backend, result)["deploy"] is True
    new = result["package-model"].artifacts["bento"].metadata["bento_tag"].split(":")[1]
    assert new != served
    deploy = result["deploy-model"]
    assert deploy.state == "failed" and deploy.attempts == 2  # retried by its policy
    assert "rolled back" in deploy.log()
    assert result["promote-model"].state == "not run"
    assert _served(kube) == served  # rolled back
    assert served in _champion(backend) and new not in _champion(backend)


def test_a_killed_search_is_retried_and_resumes_without_repeating_finished_trials(
    store, tables, tmp_path_factory
):
    backend = _backend(store, tmp_path_factory, "resume/artifacts")
    _, client = store
    _put_table(client, tables[0])

    def two_trials_saved() -> bool:
        for key in backend.keys("resume/artifacts/"):
            if "/search-state/" in key and "experiment_state" in key and key.endswith(".json"):
                text = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
                if text.count("TERMINATED") >= 2:
                    return True
        return False

    args = {
        **QUICK,
        "families": "linear,hist_gb",
        "max_trials": 6,
        "time_budget_s": 90,
        "validation": "holdout",
        "early_stopping": False,
        "model_name": "churn-resume",
    }
    try:
        result = backend.run(
            args,
            kill={"tune-models": wait_for(two_trials_saved, every_s=1.0)},
            extra_env={"tune-models": {"TUNE_GLOBAL_CHECKPOINT_S": "1"}},
        )
        _ok(result)
        tune = result["tune-models"]
        assert tune.attempts == 2, tune.log(0)[-3000:]
        assert "resuming the search" in tune.log(1), tune.log(1)[-3000:]
        board = pd.read_csv(__import__("io").BytesIO(backend.read(tune.artifacts["leaderboard"])))
        assert len(board) == 6 and board["trial_id"].is_unique
        # the retried pod ran only the trials the killed one had not finished
        assert tune.log(1).count("trials done") <= 6 - 2
    finally:
        backend.close()
