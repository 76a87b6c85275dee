"""A real Alertmanager (Debian prometheus-alertmanager) notifies the retrain trigger.

First, alerts shaped like the drift rules' (labels alertname, action=retrain,
model, version, feature) are pushed into Alertmanager's API as Prometheus would
push them; Alertmanager groups them and calls the trigger's webhook with the
bearer token from `http_config.authorization`; the trigger creates the run on
the KFP stand-in. Then the whole loop: a real Prometheus evaluates the project's
drift rules over an exporter whose feature drifted, fires AutomlFeatureDrift to
Alertmanager, which calls the trigger, which starts the run.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import threading
import time

import httpx
import pytest
import yaml

from tests.integration.test_retrain_trigger import TOKEN, Trigger
from tests.support.kfp_standin import KfpStandIn
from tests.support.servers import free_port, start, stop, wait_ready

pytestmark = pytest.mark.slow


def _alertmanager(workdir, webhook: str, token_file) -> tuple[str, subprocess.Popen]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise RuntimeError(
            "Alertmanager is not installed: run `make system-deps` "
            "(Debian package prometheus-alertmanager)"
        )
    config = {
        "route": {
            "receiver": "retrain",
            "group_by": ["alertname", "model"],
            "group_wait": "1s",
            "group_interval": "2s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "retrain",
                "webhook_configs": [
                    {
                        "url": webhook,
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                        },
                    }
                ],
            }
        ],
    }
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = start(
        [
            binary,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # one instance, no gossip port
            "--log.level=warn",
        ]
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/-/ready", proc, timeout_s=60)
    return base, proc


def _push(base: str, feature: str, ends: dt.datetime | None = None) -> None:
    now = dt.datetime.now(dt.UTC)
    alert = {
        "labels": {
            "alertname": "AutomlFeatureDrift",
            "action": "retrain",
            "severity": "warning",
            "model": "automl-churn",
            "version": "v1",
            "feature": feature,
        },
        "annotations": {"summary": f"Feature {feature} of automl-churn version v1 drifted"},
        "startsAt": (now - dt.timedelta(minutes=5)).isoformat(),
        "generatorURL": "http://prometheus.local/graph",
    }
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    r = httpx.post(f"{base}/api/v2/alerts", json=[alert], timeout=10)
    assert r.status_code == 200, r.text


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_alertmanager_drives_one_retraining_run(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with KfpStandIn() as kfp:
        trigger = Trigger(kfp.url, tmp_path / "state", cooldown=600)
        base, am = _alertmanager(tmp_path, f"{trigger.url}/alerts", token_file)
        try:
            _push(base, "tenure")
            _wait(lambda: kfp.runs, 30, "the first run")
            [run] = kfp.runs
            assert run["runtime_config"]["parameters"]["model_name"] == "automl-churn"
            run_calls = [r for r in kfp.requests if r.path.endswith("/runs")]
            assert len(run_calls) == 1
            # Prometheus re-sends firing alerts; another feature of the same model drifts too:
            # Alertmanager notifies again with both alerts, and the trigger starts nothing new.
            for _ in range(3):
                _push(base, "tenure")
            _push(base, "contract")
            _wait(
                lambda: trigger.metric("automl_retrain_alerts_deduplicated_total") >= 2,
                30,
                "the second notification",
            )
            # the drift goes away: a resolved notification, still no new run
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            _push(base, "tenure", ends=past)
            _push(base, "contract", ends=past)
            _wait(
                lambda: (
                    trigger.metric('automl_retrain_alerts_received_total{status="resolved"}') >= 2
                ),
                30,
                "the resolved notification",
            )
            assert len(kfp.runs) == 1
            assert (
                trigger.metric('automl_retrain_requests_rejected_total{reason="unauthorized"}') == 0
            )
        finally:
            stop(am)
            trigger.stop()


def _drifted_exporter(stop_event: threading.Event):
    """A /metrics endpoint with the serving metrics of one model whose `tenure` drifted.

    The reference splits tenure evenly over two bins; every scored record falls in the
    first one. prometheus_client serves it, as the Bento does.
    """
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    registry = CollectorRegistry()
    mv = {"model": "automl-churn", "version": "v7"}
    bins = Counter(
        "automl_feature_bin", "records per bin", ["model", "version", "feature", "bin"],
        registry=registry,
    )  # fmt: skip
    share = Gauge(
        "automl_feature_reference_share", "reference share",
        ["model", "version", "feature", "bin"], registry=registry,
    )  # fmt: skip
    threshold = Gauge(
        "automl_drift_threshold", "threshold", ["model", "version", "feature", "statistic"],
        registry=registry,
    )  # fmt: skip
    for b in ("low", "high"):
        share.labels(**mv, feature="tenure", bin=b).set(0.5)
        bins.labels(**mv, feature="tenure", bin=b)
    threshold.labels(**mv, feature="tenure", statistic="psi").set(0.2)
    threshold.labels(**mv, feature="tenure", statistic="js").set(0.05)

    def score():
        while not stop_event.wait(0.2):
            bins.labels(**mv, feature="tenure", bin="low").inc(20)

    threading.Thread(target=score, daemon=True).start()
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return port, server


def test_prometheus_drift_alert_reaches_kfp_through_alertmanager(tmp_path):
    from kfp_automl.observability.rules import render_rules

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise RuntimeError("prometheus is not installed: run `make system-deps`")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    stop_event = threading.Event()
    exporter, exporter_server = _drifted_exporter(stop_event)
    with KfpStandIn() as kfp:
        trigger = Trigger(kfp.url, tmp_path / "state", cooldown=600)
        am_base, am = _alertmanager(tmp_path, f"{trigger.url}/alerts", token_file)
        (tmp_path / "rules.yaml").write_text(
            render_rules(window="10s", alert_for="2s", min_records=50)
        )
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yaml")],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [am_base.split("//")[1]]}]}]
            },
            "scrape_configs": [
                {"job_name": "automl", "static_configs": [{"targets": [f"127.0.0.1:{exporter}"]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prom = start(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ]
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/-/ready", prom, timeout_s=60)
            _wait(lambda: kfp.runs, 90, "a run started by the drift alert")
            time.sleep(3)  # more evaluations and notifications: still one run
            [run] = kfp.runs
            params = run["runtime_config"]["parameters"]
            assert params["model_name"] == "automl-churn"
            assert params["data"] == "s3://lake/churn/latest.parquet"
            assert run["display_name"].startswith("retrain automl-churn (AutomlFeatureDrift) ")
            alerts = httpx.get(f"{am_base}/api/v2/alerts", timeout=10).json()
            fired = {(a["labels"]["alertname"], a["labels"].get("feature")) for a in alerts}
            assert fired == {("AutomlFeatureDrift", "tenure")}
        finally:
            stop(prom)
            stop(am)
            trigger.stop()
            stop_event.set()
            exporter_server.shutdown()
