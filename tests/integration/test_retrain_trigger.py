"""The retrain trigger as a real process: Alertmanager payloads in, runs on the KFP stand-in out."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kfp_automl.pipelines.compile import COMPILED_DIR
from tests.support.kfp_standin import KfpStandIn
from tests.support.servers import CLI, free_port, stop, wait_ready

pytestmark = pytest.mark.slow

TOKEN = "trigger-token-0123456789"
COOLDOWN_S = 5.0
RUNS = ("POST", "/apis/v2beta1/runs")
# the models whose alerts the module's triggers accept (--allow-model), and the data prefixes
MODELS = ["automl-churn", "churn-nocache", "churn-x", *(f"churn-{c}" for c in "abcdefghij")]
DATA_PREFIXES = "gs://new/,s3://lake/"


def alert(model: str, status: str = "firing", fingerprint: str | None = None, **extra) -> dict:
    """One alert as Alertmanager sends it for the AutomlFeatureDrift rule."""
    feature = extra.pop("feature", "tenure")
    return {
        "status": status,
        "labels": {
            "alertname": "AutomlFeatureDrift",
            "action": "retrain",
            "severity": "warning",
            "model": model,
            "version": "v1",
            "feature": feature,
            **extra.pop("labels", {}),
        },
        "annotations": {
            "summary": f"Feature {feature} of {model} version v1 drifted",
            **extra.pop("annotations", {}),
        },
        "startsAt": "2026-11-22T04:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-22T04:10:00.000Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
        "fingerprint": fingerprint or f"{model}-{feature}",
    }


def notification(*alerts: dict) -> dict:
    """Alertmanager's webhook body, version 4."""
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": '{}/{action="retrain"}:{alertname="AutomlFeatureDrift"}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "retrain",
        "groupLabels": {"alertname": "AutomlFeatureDrift"},
        "commonLabels": {"action": "retrain"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


class Trigger:
    """`kfp-automl retrain-trigger` in its own process."""

    def __init__(
        self,
        kfp_url: str,
        state_dir: Path,
        *extra: str,
        cooldown: float = COOLDOWN_S,
        models: list[str] = MODELS,
        env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KFP_AUTOML_TRIGGER_TOKEN": TOKEN, **(env or {})}
        cmd = [
            *CLI, "retrain-trigger", "--port", str(self.port), "--kfp-host", kfp_url,
            "--state-dir", str(state_dir), "--cooldown", str(cooldown),
            "--data", "s3://lake/churn/latest.parquet", "--target", "churn",
            "--time-budget", "120", "--allow-model", ",".join(models), *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        wait_ready(f"{self.url}/healthz", self.proc, timeout_s=60)

    def post(self, body, token: str | None = TOKEN, **kw) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if isinstance(body, dict | list):
            return httpx.post(f"{self.url}/alerts", json=body, headers=headers, timeout=30, **kw)
        return httpx.post(f"{self.url}/alerts", content=body, headers=headers, timeout=30, **kw)

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def kfp():
    with KfpStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def trigger(kfp, tmp_path_factory):
    t = Trigger(kfp.url, tmp_path_factory.mktemp("state"), "--allow-data-prefix", DATA_PREFIXES)
    yield t
    t.stop()


def runs_for(kfp: KfpStandIn, model: str) -> list[dict]:
    return [r for r in kfp.runs if r["runtime_config"]["parameters"].get("model_name") == model]


def test_firing_alert_starts_one_run_with_the_pipeline_and_latest_data(kfp, trigger):
    import yaml

    before = trigger.metric("automl_retrain_runs_submitted_total")
    r = trigger.post(notification(alert("churn-a")))
    assert r.status_code == 200, r.text
    [run] = runs_for(kfp, "churn-a")
    assert r.json()["runs"] == [
        {"model": "churn-a", "run_id": run["run_id"], "url": f"{kfp.url}/#/runs/details/{run['run_id']}",
         "alerts": ["churn-a-tenure"], "deploys": False}
    ]  # fmt: skip
    assert run["runtime_config"] == {
        "parameters": {
            "data": "s3://lake/churn/latest.parquet",
            "target": "churn",
            "time_budget_s": 120,
            "model_name": "churn-a",
        }
    }
    spec, platform = yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text())
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    # the run's name carries the claim's id: a restarted trigger finds the run by it
    assert re.fullmatch(r"retrain churn-a \(AutomlFeatureDrift\) [0-9: -]+ \[[0-9a-f]{12}\]",
                        run["display_name"])  # fmt: skip
    assert trigger.metric("automl_retrain_runs_submitted_total") == before + 1


def test_repeats_and_flapping_within_the_cooldown_start_nothing_more(kfp, trigger):
    first = trigger.post(notification(alert("churn-b")))
    assert len(first.json()["runs"]) == 1
    dedup_before = trigger.metric("automl_retrain_alerts_deduplicated_total")
    t0 = time.monotonic()
    for i in range(25):  # Alertmanager's repeats, and an alert that flaps
        status = "resolved" if i % 2 else "firing"
        r = trigger.post(notification(alert("churn-b", status=status)))
        assert r.status_code == 200 and r.json()["runs"] == []
    # a new feature of the same model drifting within the cooldown: still no second run
    r = trigger.post(notification(alert("churn-b", feature="contract")))
    assert r.json() == {"runs": [], "deduplicated": 1, "ignored": 0, "refused": []}
    assert time.monotonic() - t0 < COOLDOWN_S
    assert len(runs_for(kfp, "churn-b")) == 1
    assert trigger.metric("automl_retrain_alerts_deduplicated_total") == dedup_before + 14


def test_after_the_cooldown_a_still_firing_alert_starts_a_second_run(kfp, trigger):
    assert len(trigger.post(notification(alert("churn-c"))).json()["runs"]) == 1
    time.sleep(COOLDOWN_S + 0.5)
    r = trigger.post(notification(alert("churn-c")))
    assert len(r.json()["runs"]) == 1
    assert len(runs_for(kfp, "churn-c")) == 2


def test_resolved_and_unlabelled_alerts_start_nothing(kfp, trigger):
    n = len(kfp.runs)
    resolved_before = trigger.metric('automl_retrain_alerts_ignored_total{reason="resolved"}')
    r = trigger.post(notification(alert("churn-d", status="resolved")))
    assert r.json() == {"runs": [], "deduplicated": 0, "ignored": 1, "refused": []}
    latency = alert("churn-d")
    latency["labels"] = {
        "alertname": "AutomlHighLatencyP99",
        "model": "churn-d",
        "severity": "warning",
    }
    assert trigger.post(notification(latency)).json()["ignored"] == 1
    assert len(kfp.runs) == n
    after = trigger.metric('automl_retrain_alerts_ignored_total{reason="resolved"}')
    assert after == resolved_before + 1


def test_one_run_per_model_and_data_url_annotation_wins(kfp, trigger):
    r = trigger.post(
        notification(
            alert("churn-e", feature="tenure"),
            alert("churn-e", feature="contract", annotations={"data_url": "gs://new/2026-11.csv"}),
            alert("churn-f", feature="tenure"),
        )
    )
    assert r.status_code == 200
    assert sorted(x["model"] for x in r.json()["runs"]) == ["churn-e", "churn-f"]
    [e] = runs_for(kfp, "churn-e")
    assert e["runtime_config"]["parameters"]["data"] == "gs://new/2026-11.csv"
    assert sorted(r.json()["runs"][0]["alerts"]) == ["churn-e-contract", "churn-e-tenure"]
    [f] = runs_for(kfp, "churn-f")
    assert f["runtime_config"]["parameters"]["data"] == "s3://lake/churn/latest.parquet"


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", ""])
def test_bad_token_is_401_and_starts_nothing(kfp, trigger, token):
    n = len(kfp.runs)
    r = trigger.post(notification(alert("churn-g")), token=token)
    assert r.status_code == 401
    assert r.json() == {"error": "missing or wrong bearer token"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert len(kfp.runs) == n


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "body is not JSON"),
        (b"", "body is not JSON"),
        ({**notification(alert("x")), "version": "3"}, "version"),
        ({"version": "4", "status": "firing"}, "alerts"),
        ({**notification({**alert("x"), "fingerprint": None})}, "alerts.0.fingerprint"),
        ({**notification(alert("x")), "alerts": [{"status": "pending"}]}, "alerts.0.status"),
        ([1, 2], "body"),
    ],
)
def test_malformed_payload_is_400_with_a_json_error(kfp, trigger, body, problem):
    n = len(kfp.runs)
    r = trigger.post(body)
    assert r.status_code == 400
    assert problem in r.json()["error"]
    assert len(kfp.runs) == n


def test_oversized_body_is_413(trigger):
    big = notification(*[alert(f"m{i}", annotations={"pad": "x" * 2000}) for i in range(600)])
    assert trigger.post(big).status_code == 413


def test_health_metrics_and_unknown_paths(trigger):
    assert httpx.get(f"{trigger.url}/healthz").json() == {"status": "ok"}
    text = httpx.get(f"{trigger.url}/metrics").text
    for name in (
        "automl_retrain_alerts_received_total",
        "automl_retrain_runs_submitted_total",
        "automl_retrain_alerts_deduplicated_total",
        "automl_retrain_submit_failures_total",
    ):
        assert f"# TYPE {name} counter" in text
    r = httpx.get(f"{trigger.url}/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{trigger.url}/alerts")
    assert r.status_code == 405 and "error" in r.json()


def test_kfp_down_is_502_then_the_retry_succeeds(tmp_path):
    port = free_port()
    t = Trigger(f"http://127.0.0.1:{port}", tmp_path / "state")  # nothing listens there yet
    try:
        body = notification(alert("churn-h"))
        r = t.post(body)
        assert r.status_code == 502
        assert f"cannot reach the KFP API at http://127.0.0.1:{port}" in r.json()["error"]
        assert t.metric("automl_retrain_submit_failures_total") == 1
        assert t.proc.poll() is None  # still serving
        with KfpStandIn(port_=port) as kfp:
            kfp.fail_runs = 1  # up, but the first run creation fails with 503
            r = t.post(body)
            assert r.status_code == 502 and "HTTP 503" in r.json()["error"]
            r = t.post(body)  # Alertmanager's retry
            assert r.status_code == 200 and len(r.json()["runs"]) == 1
            assert len(kfp.runs) == 1
            assert t.metric("automl_retrain_submit_failures_total") == 2
            assert t.metric("automl_retrain_runs_submitted_total") == 1
    finally:
        t.stop()


def test_a_restart_keeps_the_dedup_state(kfp, tmp_path):
    state = tmp_path / "state"
    body = notification(alert("churn-i"))
    first = Trigger(kfp.url, state, cooldown=600)
    try:
        assert len(first.post(body).json()["runs"]) == 1
    finally:
        first.stop()
    assert (state / "retrain-state.json").exists()
    second = Trigger(kfp.url, state, cooldown=600)
    try:
        r = second.post(copy.deepcopy(body))
        assert r.json() == {"runs": [], "deduplicated": 1, "ignored": 0, "refused": []}
        assert len(runs_for(kfp, "churn-i")) == 1
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("env_token", "args", "message"),
    [
        (None, [], "set $KFP_AUTOML_TRIGGER_TOKEN"),
        ("short", [], "too short"),
        (TOKEN, ["--kfp-host", "ml-pipeline:8888"], "--kfp-host"),
        (TOKEN, ["--kfp-host", "http://x", "--param", "nope=1"], "--param nope"),
        (TOKEN, ["--kfp-host", "http://x", "--kfp-token-file", "/nonexistent"], "token file"),
        (TOKEN, ["--allow-model", " , "], "give --allow-model NAME"),
        (TOKEN, ["--allow-data-prefix", "s3://lake/../x/"], "--allow-data-prefix"),
        (TOKEN, ["--allow-data-prefix", "lake/churn/"], "absolute path"),
        (TOKEN, ["--deploy-namespace", "ml-serving"], "--champion-registry"),
        (TOKEN, ["--max-runs-per-hour", "0"], "--max-runs-per-hour"),
    ],
)
def test_startup_mistakes_exit_2_in_one_line(tmp_path, env_token, args, message):
    env = {k: v for k, v in os.environ.items() if k != "KFP_AUTOML_TRIGGER_TOKEN"}
    if env_token:
        env["KFP_AUTOML_TRIGGER_TOKEN"] = env_token
    if not any(a == "--kfp-host" for a in args):
        args = ["--kfp-host", "http://127.0.0.1:9", *args]
    if not any(a == "--allow-model" for a in args):
        args = ["--allow-model", "churn-a", *args]
    done = subprocess.run(
        [*CLI, "retrain-trigger", "--state-dir", str(tmp_path / "s"), *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert message in done.stderr


def test_alerts_of_models_not_allowed_or_without_a_model_are_refused_and_counted(kfp, trigger):
    """A forged alert (the token is right, the model is not one of --allow-model) starts
    nothing, even for a model that has no champion and would otherwise be deployed."""
    n = len(kfp.runs)
    before = trigger.metric('automl_retrain_alerts_refused_total{reason="model_not_allowed"}')
    quality = alert("unused", fingerprint="q-1")
    quality["labels"] = {"alertname": "AutomlQualityDrop", "action": "retrain"}
    r = trigger.post(notification(alert("evil-model"), quality, alert("churn-x")))
    assert r.status_code == 200, r.text
    assert [x["model"] for x in r.json()["runs"]] == ["churn-x"]
    assert r.json()["refused"] == [
        {"alert": "evil-model-tenure", "model": "evil-model", "reason": "model_not_allowed"},
        {"alert": "q-1", "model": "", "reason": "model_not_allowed"},
    ]
    assert len(kfp.runs) == n + 1 and not runs_for(kfp, "evil-model")
    after = trigger.metric('automl_retrain_alerts_refused_total{reason="model_not_allowed"}')
    assert after == before + 2


def test_a_data_url_outside_the_allowed_prefixes_is_refused(kfp, trigger):
    n = len(kfp.runs)
    before = trigger.metric('automl_retrain_alerts_refused_total{reason="data_url_not_allowed"}')
    for url in (
        "s3://attacker/poison.csv",
        "gs://new-evil/x.csv",  # shares the prefix's letters, not its folder
        "gs://new/../secret/x.csv",
        "gs://new/%2e%2e/secret/x.csv",
        "file:///etc/passwd",
    ):
        r = trigger.post(notification(alert("churn-j", annotations={"data_url": url})))
        assert r.status_code == 200 and r.json()["runs"] == [], (url, r.text)
        assert r.json()["refused"][0]["reason"] == "data_url_not_allowed", url
        assert "not under an --allow-data-prefix" in " ".join(r.json()["notes"])
    assert len(kfp.runs) == n
    after = trigger.metric('automl_retrain_alerts_refused_total{reason="data_url_not_allowed"}')
    assert after == before + 5


def test_without_allowed_prefixes_the_data_url_is_ignored(kfp, tmp_path):
    t = Trigger(kfp.url, tmp_path / "state")
    try:
        r = t.post(notification(alert("churn-a", annotations={"data_url": "s3://attacker/x.csv"})))
    finally:
        t.stop()
    assert r.status_code == 200 and len(r.json()["runs"]) == 1
    assert "data_url is ignored" in r.json()["notes"][0]
    [run] = [x for x in kfp.runs if x["run_id"] == r.json()["runs"][0]["run_id"]]
    assert run["runtime_config"]["parameters"]["data"] == "s3://lake/churn/latest.parquet"


def test_the_rate_limit_holds_across_models_and_a_restart(kfp, tmp_path):
    state = tmp_path / "state"
    first = Trigger(kfp.url, state, "--max-runs-per-hour", "2", cooldown=1)
    try:
        for model in ("churn-a", "churn-b"):
            assert len(first.post(notification(alert(model))).json()["runs"]) == 1
        r = first.post(notification(alert("churn-c")))
        assert r.status_code == 200 and r.json()["runs"] == []
        assert r.json()["refused"] == [
            {"alert": "churn-c-tenure", "model": "churn-c", "reason": "rate_limited"}
        ]
        assert "at most 2 (--max-runs-per-hour)" in r.json()["notes"][0]
        assert first.metric('automl_retrain_alerts_refused_total{reason="rate_limited"}') == 1
    finally:
        first.stop()
    time.sleep(1.5)  # the cooldown is over: only the hourly limit stands
    second = Trigger(kfp.url, state, "--max-runs-per-hour", "2", cooldown=1)
    try:
        for model in ("churn-a", "churn-d"):
            r = second.post(notification(alert(model)))
            assert r.json()["runs"] == [] and r.json()["refused"][0]["reason"] == "rate_limited"
    finally:
        second.stop()
    starts = json.loads((state / "retrain-state.json").read_text())["starts"]
    assert len(starts) == 2


def test_a_model_without_a_champion_is_trained_but_never_deployed(kfp, tmp_path):
    from kfp_automl.registry.registry import Registry

    registry = tmp_path / "registry"
    served = Registry(registry)
    served.register("churn-a", "v1", {"bento_tag": "churn-a:v1"})
    served.promote("churn-a", "v1")
    served.register("churn-b", "v1", {"bento_tag": "churn-b:v1"})  # a challenger, no champion
    t = Trigger(
        kfp.url, tmp_path / "state", "--deploy-namespace", "ml-serving",
        "--champion-registry", str(registry),
    )  # fmt: skip
    try:
        r = t.post(notification(alert("churn-a"), alert("churn-b"), alert("churn-c")))
    finally:
        t.stop()
    assert r.status_code == 200, r.text
    deploys = {x["model"]: x["deploys"] for x in r.json()["runs"]}
    assert deploys == {"churn-a": True, "churn-b": False, "churn-c": False}
    by_id = {x["run_id"]: x for x in kfp.runs}
    params = {
        x["model"]: by_id[x["run_id"]]["runtime_config"]["parameters"] for x in r.json()["runs"]
    }
    assert params["churn-a"]["deploy_namespace"] == "ml-serving"
    assert (
        "deploy_namespace" not in params["churn-b"] and "deploy_namespace" not in params["churn-c"]
    )
    notes = " ".join(r.json()["notes"])
    assert "churn-b has no champion" in notes and "churn-c has no champion" in notes
    assert "does not deploy" in t.proc.communicate(timeout=30)[0]  # the log says so too


def test_a_trigger_started_with_no_cache_starts_runs_with_no_step_cached(kfp, tmp_path):
    """--no-cache turns caching off for every step of the runs the trigger starts (the
    default, each step's compiled setting, is what the module's other tests send)."""
    t = Trigger(kfp.url, tmp_path / "state", "--no-cache")
    try:
        assert len(t.post(notification(alert("churn-nocache"))).json()["runs"]) == 1
    finally:
        t.stop()
    [run] = runs_for(kfp, "churn-nocache")
    tasks = run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    assert "caching off" in t.proc.communicate(timeout=30)[0]
