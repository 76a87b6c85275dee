"""Drift monitoring end to end: a real `bentoml serve` scraped by a real Prometheus server.

In-distribution traffic keeps every feature's PSI under its calibrated threshold
and no alert fires; traffic with one numeric feature moved and one category's
share changed makes the drift alert fire for exactly those two features.
"""

from __future__ import annotations

import time

import httpx
import pytest

from kfp_automl.observability.rules import render_rules
from tests.support.servers import json_records, prometheus, serve, wait_for

pytestmark = pytest.mark.slow

WINDOW_S = 20
SHIFTED = {"tenure", "contract"}


def _query(prom: str, expr: str) -> dict[str, float]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return {
        s["metric"].get("feature", ""): float(s["value"][1]) for s in r.json()["data"]["result"]
    }


def _drift_alerts(prom: str, state: str) -> set[str]:
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {
        a["labels"]["feature"]
        for a in alerts
        if a["labels"]["alertname"] == "AutomlFeatureDrift" and a["state"] == state
    }


def _send(base: str, rows) -> None:
    records = json_records(rows)
    with httpx.Client(timeout=60) as client:
        for i in range(0, len(records), 50):
            r = client.post(f"{base}/predict", json={"records": records[i : i + 50]})
            assert r.status_code == 200, r.text[:300]


def test_drift_alert_fires_for_exactly_the_shifted_features(pipeline_run, churn_df, tmp_path):
    _, summary, _ = pipeline_run
    rules = render_rules(window=f"{WINDOW_S}s", alert_for="3s", min_records=200)
    features = [c for c in churn_df.columns if c != "churn"]
    rows = churn_df[features].sample(600, random_state=7).reset_index(drop=True)

    with (
        serve(summary["bento_tag"]) as base,
        prometheus(tmp_path / "prometheus", base.removeprefix("http://"), rules) as prom,
    ):
        thresholds = wait_for(
            lambda: _query(prom, 'automl_drift_threshold{statistic="psi"}'),
            30,
            "the first scrape",
        )
        assert set(thresholds) == set(features) | {"__prediction__"}

        # 1. in distribution: fresh rows of the same table
        _send(base, rows)
        psi = wait_for(
            lambda: (
                (p := _query(prom, "automl:feature_psi:window")) and len(p) == len(thresholds) and p
            ),
            30,
            "PSI of every feature",
        )
        time.sleep(5)  # longer than the alerts' `for`
        psi = _query(prom, "automl:feature_psi:window")
        over = {f: (v, thresholds[f]) for f, v in psi.items() if v >= thresholds[f]}
        assert not over, f"in-distribution traffic crossed thresholds: {over}"
        assert _drift_alerts(prom, "firing") == set() and _drift_alerts(prom, "pending") == set()

        # 2. let that traffic leave the window, then shift two features
        time.sleep(WINDOW_S + 2)
        shifted = rows.copy()
        shifted["tenure"] = shifted["tenure"] + 80  # beyond every customer seen in training
        shifted["contract"] = "Two year"  # one category's share from ~25% to 100%
        _send(base, shifted)
        firing = wait_for(
            lambda: (f := _drift_alerts(prom, "firing")) >= SHIFTED and f,
            45,
            "the drift alerts",
        )
        assert firing == SHIFTED
        psi = _query(prom, "automl:feature_psi:window")
        for feature in features:
            crossed = psi[feature] >= thresholds[feature]
            assert crossed == (feature in SHIFTED), (feature, psi[feature], thresholds[feature])
        # the data-quality counters saw the shifted values too
        out_of_range = _query(prom, "increase(automl_feature_out_of_range_total[1m])")
        assert out_of_range["tenure"] > 100
