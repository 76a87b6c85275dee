"""Labels for served predictions end to end: real `bentoml serve`, real Prometheus, kfp.local.

Agreeing labels keep the live primary metric inside its evaluation interval and
no alert fires; contradicting labels drop it and the quality alert fires. The
join survives a restart and works whichever worker a label reaches, and the
exported table retrains through the pipeline.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kfp_automl.observability.rules import render_rules
from tests.support.servers import CLI, json_records, prometheus, serve, wait_for

pytestmark = pytest.mark.slow

OPPOSITE = {"Yes": "No", "No": "Yes"}
ALERT = "AutomlQualityBelowEvaluation"
TOKEN = "labeller-" + "3" * 40  # the feedback token of the caller "labeller"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _log_args(tmp_path: Path, log_dir: Path | None = None) -> list[str]:
    """Logging on, and the one caller that may send labels."""
    tokens = tmp_path / "tokens"
    if not tokens.exists():
        tokens.mkdir()
        (tokens / "labeller").write_text(TOKEN + "\n")
    log_dir = log_dir or tmp_path / "logs"
    return ["--log-predictions", "on", "--log-dir", str(log_dir), "--feedback-tokens", str(tokens)]


def _rows(churn_df, n: int, seed: int) -> list[dict]:
    features = [c for c in churn_df.columns if c != "churn"]
    return json_records(churn_df[features].sample(n, random_state=seed).reset_index(drop=True))


def _predict(base: str, records: list[dict], chunk: int = 50, as_caller: bool = False):
    """Answers to /predict; `as_caller`: with the labeller's token, so its own ids are its."""
    out = []
    with httpx.Client(timeout=60, headers=AUTH if as_caller else {}) as client:
        for i in range(0, len(records), chunk):
            r = client.post(f"{base}/predict", json={"records": records[i : i + chunk]})
            assert r.status_code == 200, r.text[:300]
            out += r.json()
    return out


def _feedback(base: str, labels: list[dict]) -> httpx.Response:
    return httpx.post(f"{base}/feedback", json={"labels": labels}, headers=AUTH, timeout=60)


def _query(prom: str, expr: str) -> dict[str, float]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return {s["metric"].get("metric", ""): float(s["value"][1]) for s in r.json()["data"]["result"]}


def _alerts(prom: str) -> list[dict]:
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == ALERT]


def _metric(base: str, name: str, **labels: str) -> float:
    """The sum of the /metrics samples called `name` that carry `labels`."""
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
        if line.startswith((name + "{", name + " "))
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    assert found, f"{name} {labels} not in /metrics"
    return sum(found)


def test_contradicting_labels_fire_the_quality_alert(pipeline_run, churn_df, tmp_path):
    _, summary, _ = pipeline_run
    metric = summary["metric"]
    rules = render_rules(window="30s", alert_for="3s", quality_for="3s", min_labels=100)
    log_args = _log_args(tmp_path)
    with (
        serve(summary["bento_tag"], *log_args, "--quality-window", "200") as base,
        prometheus(tmp_path / "prometheus", base.removeprefix("http://"), rules) as prom,
    ):
        evaluation = wait_for(
            lambda: _query(prom, 'automl_evaluation_metric{primary="true", bound="ci_low"}'),
            30,
            "the evaluation metric",
        )
        assert set(evaluation) == {metric}
        ci_low = evaluation[metric]

        # 1. labels that agree with the predictions: live quality at least at evaluation level
        answers = _predict(base, _rows(churn_df, 200, seed=1))
        assert {a["prediction"] for a in answers} == {"Yes", "No"}, "need both classes"
        r = _feedback(base, [{"id": a["id"], "label": a["prediction"]} for a in answers])
        assert r.status_code == 200 and r.json()["matched"] == 200, r.text[:300]
        live = wait_for(
            lambda: (v := _query(prom, "automl_live_metric")) and v.get("accuracy") == 1.0 and v,
            30,
            "the live metrics of the agreeing labels",
        )
        assert live[metric] >= ci_low
        time.sleep(6)  # twice the alert's `for`
        assert _alerts(prom) == []

        # 2. labels that contradict new predictions: the window holds only those
        answers = _predict(base, _rows(churn_df, 200, seed=2))
        labels = [{"id": a["id"], "label": OPPOSITE[a["prediction"]]} for a in answers]
        assert _feedback(base, labels).json()["matched"] == 200
        firing = wait_for(
            lambda: [a for a in _alerts(prom) if a["state"] == "firing"],
            45,
            "the quality alert",
        )
        assert len(firing) == 1
        assert firing[0]["labels"]["action"] == "retrain"
        assert firing[0]["labels"]["metric"] == metric
        live = _query(prom, "automl_live_metric")
        assert live["accuracy"] == 0.0 and live[metric] < ci_low
        outcomes = {
            s["metric"]["outcome"]: float(s["value"][1])
            for s in httpx.get(
                f"{prom}/api/v1/query",
                params={"query": "sum by (outcome) (automl_feedback_labels_total)"},
                timeout=10,
            ).json()["data"]["result"]
        }
        assert outcomes["matched"] == 400 and outcomes["unknown_id"] == 0


def test_the_join_survives_a_restart_and_the_export_retrains(
    pipeline_run, churn_df, small_churn_csv, tmp_path
):
    _, summary, _ = pipeline_run
    log_dir = tmp_path / "logs"
    log_args = _log_args(tmp_path, log_dir)
    rows = churn_df.sample(60, random_state=5).reset_index(drop=True)
    features = [c for c in churn_df.columns if c != "churn"]
    records = json_records(rows[features])
    for i, rec in enumerate(records):
        rec["id"] = f"customer-{i}"  # the caller's own ids
    with serve(summary["bento_tag"], *log_args) as base:
        answers = _predict(base, records, chunk=20, as_caller=True)
    assert [a["id"] for a in answers] == [f"customer-{i}" for i in range(60)]

    with serve(summary["bento_tag"], *log_args) as base:  # a new server process
        labels = [{"id": f"customer-{i}", "label": rows["churn"][i]} for i in range(60)]
        r = _feedback(base, labels)
        assert r.status_code == 200 and r.json()["matched"] == 60, r.text[:500]
        wait_for(lambda: _metric(base, "automl_live_window_labels") == 60, 20, "the window")
        assert 0 <= _metric(base, "automl_live_metric", metric="accuracy") <= 1

    table = tmp_path / "retrain.parquet"
    export = subprocess.run(
        [*CLI, "export-feedback", "--log-dir", str(log_dir), "--output", str(table)]
        + ["--append-to", str(small_churn_csv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr
    assert "60 labelled predictions" in export.stdout
    import pandas as pd

    original = pd.read_csv(small_churn_csv)
    exported = pd.read_parquet(table)
    assert list(exported.columns) == list(original.columns)
    assert len(exported) == len(original) + 60
    assert exported["churn"].tolist()[-60:] == rows["churn"].tolist()

    out = tmp_path / "run"
    run = subprocess.run(
        [*CLI, "run", "--data", str(table), "--target", "churn", "--time-budget", "20"]
        + ["--families", "linear", "--max-trials", "2", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    retrained = json.loads((out / "summary.json").read_text())
    assert retrained["target"] == "churn" and retrained["bento_tag"]


def test_labels_join_whichever_worker_they_reach(pipeline_run, churn_df, tmp_path):
    _, summary, _ = pipeline_run
    log_dir = tmp_path / "logs"
    args = ["--workers", "2", *_log_args(tmp_path, log_dir)]
    with serve(summary["bento_tag"], *args) as base:
        records = _rows(churn_df, 160, seed=3)
        with ThreadPoolExecutor(max_workers=8) as pool:
            chunks = [records[i : i + 4] for i in range(0, 160, 4)]
            answers = [a for part in pool.map(lambda c: _predict(base, c), chunks) for a in part]
            # one label per request, so both workers answer some of them
            results = list(
                pool.map(
                    lambda a: _feedback(base, [{"id": a["id"], "label": a["prediction"]}]),
                    answers,
                )
            )
        assert [r.status_code for r in results] == [200] * 160
        assert sum(r.json()["matched"] for r in results) == 160
        wait_for(lambda: _metric(base, "automl_live_window_labels") == 160, 20, "the window")
    label_writers = {
        path.name.split("-")[2].split(".")[0]
        for path in Path(log_dir).glob("predictions-*.jsonl")
        if '"kind":"label"' in path.read_text()
    }
    assert len(label_writers) == 2  # labels were joined by both worker processes


def test_an_unwritable_log_dir_never_stops_predictions(pipeline_run, churn_df, tmp_path):
    _, summary, _ = pipeline_run
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = _log_args(tmp_path, blocker / "logs")
    with serve(summary["bento_tag"], *args) as base:
        answers = _predict(base, _rows(churn_df, 40, seed=4))
        assert len(answers) == 40
        wait_for(
            lambda: (
                _metric(base, "automl_prediction_log_dropped_total", reason="write_error") == 40
            ),
            20,
            "the dropped predictions to be counted",
        )
        assert _metric(base, "automl_prediction_log_healthy") == 0
        assert _metric(base, "automl_prediction_log_errors_total", kind="log_file") >= 1
        r = _feedback(base, [{"id": answers[0]["id"], "label": "Yes"}])
        assert r.status_code == 503 and r.json()["error"]["reason"] == "store"
        # degraded, not unready: the pod keeps answering /predict
        status = httpx.get(f"{base}/status", timeout=10)
        assert status.status_code == 200, status.text
        body = status.json()
        assert body["status"] == "degraded" and body["model"] == summary["bento_tag"].split(":")[0]
        assert body["prediction_log"]["failing"] == ["log_file", "store"]
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200


# (method, content type, body, expected status, words in the answer)
BAD_FEEDBACK = [
    ("POST", "application/json", b"{not json", 400, ["not valid JSON"]),
    ("POST", "application/json", b'{"records": []}', 400, ["expected an object"]),
    ("POST", "application/json", b'{"labels": {"id": "a"}}', 400, ["expected an object"]),
    ("POST", "application/json", b'{"labels": []}', 400, ["'labels' is empty"]),
    ("POST", "application/json", b"[1, 2]", 400, ["expected an object"]),
    ("POST", "application/json", b'{"labels": [' + b'{"id": 1},' * 10_000 + b"1]}", 400,
     ["at most 10000"]),
    ("POST", "application/x-python-pickle", b"\x80\x04K\x01.", 415, ["application/json"]),
    ("POST", "text/plain", b'{"labels": [{"id": "a", "label": "No"}]}', 415, ["application/json"]),
    ("POST", "application/json", b'{"labels": ["' + b"x" * (2 * 1024 * 1024) + b'"]}', 413,
     ["request body is over"]),
    ("GET", "", b"", 405, ["use POST"]),
    # well-formed bodies whose every item is refused: 422 with a report per item
    ("POST", "application/json", b'{"labels": [{"id": "nobody", "label": "No"}]}', 422,
     ["unknown_id"]),
    ("POST", "application/json", b'{"labels": [{"id": null, "label": "No"}, {"label": "No"}]}',
     422, ["bad_id"]),
    ("POST", "application/json", b'{"labels": [{"id": "x", "label": ["No"]}]}', 422,
     ["wrong_type", "expected one of the classes"]),
    ("POST", "application/json", b'{"labels": [3, "a", null]}', 422, ["bad_id"]),
]  # fmt: skip


def test_bad_feedback_gets_a_4xx_json_answer_and_the_server_stays_healthy(pipeline_run, tmp_path):
    _, summary, _ = pipeline_run
    args = [*_log_args(tmp_path), "--max-body-mb", "1"]
    with serve(summary["bento_tag"], *args) as base, httpx.Client(timeout=60) as client:
        for method, ctype, content, status, words in BAD_FEEDBACK:
            headers = {"content-type": ctype, **AUTH} if ctype else AUTH
            r = client.request(method, f"{base}/feedback", content=content, headers=headers)
            assert r.status_code == status, (content[:60], r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/json"
            for word in words:
                assert word in r.text, (content[:60], word, r.text[:300])
        assert client.get(f"{base}/readyz").status_code == 200
        assert _metric(base, "automl_feedback_labels_total", outcome="bad_id") == 5
        # /predict's rejected-request count (and its alert) is not moved by /feedback
        assert _metric(base, "automl_requests_rejected_total") == 0


def test_feedback_without_logging_is_409(server):
    r = _feedback(server, [{"id": "a", "label": "No"}])
    assert r.status_code == 409 and r.json()["error"]["reason"] == "logging_off"
    status = httpx.get(f"{server}/status", timeout=10)
    assert status.status_code == 200
    assert status.json()["status"] == "ok"
    assert status.json()["prediction_log"] == {"status": "off"}
    assert httpx.post(f"{server}/status", timeout=10).status_code == 405


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--log-exclude", "tenure,ssn"], ["--log-exclude 'ssn'", "not a column"]),
        (["--log-predictions", "always"], ["--log-predictions", "always"]),
        (["--log-sample-rate", "0"], ["--log-sample-rate"]),
        (["--quality-window", "0"], ["--quality-window"]),
    ],
)
def test_bad_logging_flags_exit_2_before_serving(pipeline_run, args, words):
    _, summary, _ = pipeline_run
    done = subprocess.run(
        [*CLI, "serve", "--model", summary["bento_tag"], "--port", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
