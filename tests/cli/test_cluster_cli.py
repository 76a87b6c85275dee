"""`kfp-automl submit` / `schedule`: the real kfp.Client against a recording KFP API stand-in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from kfp_automl.cli.main import main
from kfp_automl.pipelines.compile import COMPILED_DIR
from tests.support.kfp_standin import KfpStandIn

API = "/apis/v2beta1/"
_SPEC, _PLATFORM = yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text())
# kfp.Client sends a pipeline with a platform spec (the Secrets its steps read) as both parts
COMMITTED = {"pipeline_spec": _SPEC, "platform_spec": _PLATFORM}


@pytest.fixture
def kfp():
    with KfpStandIn() as standin:
        yield standin


@pytest.fixture(autouse=True)
def _no_ambient_kfp_settings(monkeypatch, tmp_path):
    for var in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + captured.out
    return err


def test_submit_creates_experiment_then_run_and_prints_the_dashboard_url(kfp, capsys):
    rc = main(
        [
            "submit", "--host", kfp.url, "--experiment", "churn", "--run-name", "nightly",
            "--data", "s3://bucket/churn.parquet", "--target", "churn",
            "--time-budget", "300", "--families", "hist_gb,linear",
            "--param", "min_improvement=0.01", "--param", "slice_column=contract",
            "--param", "registry_root=minio://mlpipeline/kfp-automl-registry",
        ]
    )  # fmt: skip
    assert rc == 0
    assert kfp.calls() == [
        ("GET", API + "healthz"),  # kfp.Client checks the server when it starts
        ("GET", API + "healthz"),  # multi-user or not
        ("GET", API + "experiments"),  # is there an experiment called "churn"?
        ("POST", API + "experiments"),  # no: create it
        ("POST", API + "runs"),
    ]
    lookup = kfp.requests[2]
    assert '"stringValue": "churn"' in lookup.query["filter"]
    assert kfp.requests[3].body == {"display_name": "churn", "namespace": ""}
    run = kfp.requests[4].body
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == kfp.experiments[0]["experiment_id"]
    assert run["pipeline_spec"] == COMMITTED  # the compiled pipeline, whole
    assert run["runtime_config"] == {
        "parameters": {
            "data": "s3://bucket/churn.parquet",
            "target": "churn",
            "families": "hist_gb,linear",
            "time_budget_s": 300,
            "min_improvement": 0.01,
            "slice_column": "contract",
            "registry_root": "minio://mlpipeline/kfp-automl-registry",
        }
    }
    out = capsys.readouterr().out
    run_id = kfp.runs[0]["run_id"]
    assert f"run {run_id} created in experiment 'churn'" in out
    assert f"dashboard  {kfp.url}/#/runs/details/{run_id}" in out
    assert "Experiment details" not in out  # kfp.Client's own prints are not shown


def test_submit_reuses_an_existing_experiment_in_the_namespace(kfp, capsys):
    kfp.experiments.append(
        {"experiment_id": "exp-1", "display_name": "kfp-automl", "namespace": "team-a"}
    )
    assert main(["submit", "--host", kfp.url, "--namespace", "team-a"]) == 0
    assert kfp.calls()[-2:] == [("GET", API + "experiments"), ("POST", API + "runs")]
    assert kfp.requests[-2].query["namespace"] == "team-a"
    assert kfp.requests[-1].body["experiment_id"] == "exp-1"
    assert kfp.requests[-1].body["runtime_config"] == {"parameters": {}}  # compiled defaults
    assert kfp.requests[-1].body["display_name"].startswith("kfp-automl 20")


def test_submit_with_image_sends_a_pipeline_on_that_image(kfp):
    ref = "registry.example.com/ml/components:7.1"
    assert main(["submit", "--host", kfp.url, "--image", ref]) == 0
    executors = kfp.runs[0]["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {ex["container"]["image"] for ex in executors.values()} == {ref}


def test_token_file_is_sent_as_bearer_on_every_request(kfp, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    kfp.require_token = "sa-token-123"
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert main(["submit", "--host", kfp.url]) == 0
    assert len(kfp.requests) == 5
    assert {r.headers["authorization"] for r in kfp.requests} == {"Bearer sa-token-123"}
    # the token never travels as a pipeline parameter
    assert "sa-token-123" not in str(kfp.runs[0]["runtime_config"])


def test_kubeconfig_context_reaches_kfp_through_the_api_server_proxy(kfp, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": kfp.url}}],
                "users": [{"name": "u", "user": {"token": "kube-token-9"}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    kfp.require_token = "kube-token-9"
    # a new process: the kubernetes client reads $KUBECONFIG when it is imported
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfp_automl.cli.main",
            "submit",
            "--ui-url",
            "https://kf.example.com",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run_id = kfp.runs[0]["run_id"]
    assert f"dashboard  https://kf.example.com/#/runs/details/{run_id}" in done.stdout
    proxy = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/apis/v2beta1/"
    assert [r.full_path for r in kfp.requests][-1] == proxy + "runs"
    assert all(r.full_path.startswith(proxy) for r in kfp.requests)


def test_schedule_creates_a_recurring_run_with_a_cron_trigger(kfp, capsys):
    rc = main(
        ["schedule", "--host", kfp.url, "--cron", "0 30 2 * * 1", "--name", "weekly",
         "--data", "gs://b/t.csv", "--target", "y", "--max-concurrency", "2"]
    )  # fmt: skip
    assert rc == 0
    assert kfp.calls()[-1] == ("POST", API + "recurringruns")
    body = kfp.requests[-1].body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * 1"}}
    assert body["display_name"] == "weekly"
    assert body["mode"] == "ENABLE" and body["no_catchup"] is True
    assert int(body["max_concurrency"]) == 2
    assert body["pipeline_spec"] == COMMITTED
    assert body["runtime_config"] == {"parameters": {"data": "gs://b/t.csv", "target": "y"}}
    rid = kfp.recurring_runs[0]["recurring_run_id"]
    assert f"dashboard  {kfp.url}/#/recurringrun/details/{rid}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "no_such=1"], "--param no_such: the pipeline has no such parameter"),
        (["--param", "time_budget_s=fast"], "--param time_budget_s: expected an integer"),
        (["--param", "min_improvement=nan"], "--param min_improvement: expected a finite number"),
        (["--param", "seed=1.5"], "--param seed: expected an integer"),
        (["--param", "target"], "expected NAME=VALUE"),
        (["--param", "seed=1", "--param", "seed=2"], "--param seed is given twice"),
        (["--seed", "1", "--param", "seed=2"], "repeats a flag"),
        (["--data", "s3://b/t.csv"], "--target is required with --data"),
        (["--metric", "auc"], "--metric 'auc' is unknown"),
        (["--families", "xgboost"], "xgboost"),
        (["--time-budget", "5"], "--time-budget"),
        (["--image", "ghcr.io/x/components:latest"], "--image"),
        (["--pipeline", "/nonexistent/p.yaml"], "--pipeline"),
        (["--param", "registry_root=s3://KEY:SECRET@b/reg"], "holds credentials"),
        (["--param", "registry_root=hdfs://nn/reg"], "hdfs:// is not supported"),
        (["--param", "registry_root=minio:///reg"], "names no bucket"),
        (["--tune-memory", "8GB"], "--tune-memory '8GB': expected memory such as 4Gi"),
        (["--param", "step_cpu=two"], "--step-cpu 'two': expected CPUs such as 2"),
    ],
)
def test_bad_parameters_exit_2_before_any_request(kfp, capsys, args, message):
    assert main(["submit", "--host", kfp.url, *args]) == 2
    assert message in _one_error_line(capsys)
    assert kfp.requests == []


@pytest.mark.parametrize("cron", ["0 3 * * *", "0 0 25 * * *", "every day", "@fortnightly", ""])
def test_bad_cron_exits_2_before_any_request(kfp, capsys, cron):
    assert main(["schedule", "--host", kfp.url, "--cron", cron]) == 2
    assert "--cron" in _one_error_line(capsys)
    assert kfp.requests == []


def test_cron_the_server_rejects_is_reported_in_one_line(kfp, capsys):
    kfp.force_status = 400
    assert main(["schedule", "--host", kfp.url, "--cron", "@daily"]) == 2
    assert "answered HTTP 400: forced 400" in _one_error_line(capsys)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_exit_2(kfp, capsys, status):
    kfp.force_status = status
    t0 = time.monotonic()
    assert main(["submit", "--host", kfp.url]) == 2
    err = _one_error_line(capsys)
    assert f"refused the credentials (HTTP {status}" in err
    assert time.monotonic() - t0 < 5  # one health check, not kfp.Client's five with sleeps
    assert kfp.calls() == [("GET", API + "healthz")]


def test_wrong_token_exits_2(kfp, capsys, tmp_path):
    (tmp_path / "t").write_text("wrong")
    kfp.require_token = "right"
    assert main(["submit", "--host", kfp.url, "--token-file", str(tmp_path / "t")]) == 2
    assert "HTTP 401" in _one_error_line(capsys)


def test_unreachable_host_exits_2(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert main(["submit", "--host", f"http://127.0.0.1:{port}"]) == 2
    err = _one_error_line(capsys)
    assert f"cannot reach the KFP API at http://127.0.0.1:{port}" in err
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "kfp.example.com"], "must start with http"),
        ([], "pass --host URL"),
        (["--host", "http://x", "--token-file", "/nonexistent/token"], "token file"),
    ],
)
def test_connection_mistakes_exit_2(capsys, args, message):
    assert main(["submit", *args]) == 2
    assert message in _one_error_line(capsys)


def test_multi_user_server_needs_a_namespace(kfp, capsys):
    kfp.multi_user = True
    assert main(["submit", "--host", kfp.url]) == 2
    assert "pass --namespace" in _one_error_line(capsys)
    assert ("POST", API + "runs") not in kfp.calls()


def test_server_error_exits_1(kfp, capsys):
    kfp.fail_runs = 1
    assert main(["submit", "--host", kfp.url]) == 1
    assert "answered HTTP 503: try later" in capsys.readouterr().err


def test_a_host_that_never_answers_times_out(capsys, monkeypatch):
    from kfp_automl.cluster import client as cluster

    monkeypatch.setattr(cluster, "REQUEST_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        assert main(["submit", "--host", f"http://127.0.0.1:{port}"]) == 2
        assert time.monotonic() - t0 < 15
    err = _one_error_line(capsys)
    assert f"cannot reach the KFP API at http://127.0.0.1:{port}" in err
    assert "Read timed out" in err


def _caching(spec: dict) -> dict[str, bool]:
    """Each executor task's enableCache in a submitted pipeline spec (absent, as protobuf's
    JSON leaves a false bool out, is off)."""
    tasks = spec["pipeline_spec"]["root"]["dag"]["tasks"]
    return {
        name: bool(t.get("cachingOptions", {}).get("enableCache"))
        for name, t in tasks.items()
        if not name.startswith("condition-")
    }


def test_submit_keeps_each_steps_caching_by_default(kfp):
    assert main(["submit", "--host", kfp.url]) == 0
    caching = _caching(kfp.runs[0]["pipeline_spec"])
    assert caching["prepare-data"] is True and caching["tune-models"] is True
    # --cache (the default) must not turn caching on for the steps that must never cache
    assert caching["gate-model"] is False and caching["package-model"] is False
    assert caching["fingerprint-inputs"] is False


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_no_cache_turns_caching_off_for_every_step(kfp, capsys, command):
    args = [command, "--host", kfp.url, "--no-cache"]
    if command == "schedule":
        args += ["--cron", "0 0 3 * * *"]
    assert main(args) == 0
    sent = (kfp.runs or kfp.recurring_runs)[0]["pipeline_spec"]
    assert set(_caching(sent).values()) == {False}
    assert "caching off" in capsys.readouterr().out


def test_an_empty_registry_root_is_reported_as_the_namespace_registry(kfp, capsys):
    assert main(["submit", "--host", kfp.url]) == 0
    assert "<artifact bucket>/kfp-automl-registry/<namespace>" in capsys.readouterr().out
    assert main(["submit", "--host", kfp.url, "--registry-root", "s3://b/reg"]) == 0
    assert "kfp-automl-registry" not in capsys.readouterr().out
