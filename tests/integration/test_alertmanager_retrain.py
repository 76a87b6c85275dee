"""A real Alertmanager (Debian prometheus-alertmanager) notifies the retrain trigger.

Alerts shaped like the drift rules' (labels alertname, action=retrain, model,
version, feature) are pushed into Alertmanager's API as Prometheus would push
them; Alertmanager groups them and calls the trigger's webhook with the bearer
token from `http_config.authorization`; the trigger creates the run on the KFP
stand-in.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time

import httpx
import pytest
import yaml

from tests.integration.servers import free_port, start, stop, wait_ready
from tests.integration.test_retrain_trigger import TOKEN, Trigger
from tests.kfp_standin import KfpStandIn

pytestmark = pytest.mark.slow


def _alertmanager(workdir, webhook: str, token_file) -> tuple[str, object]:
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
