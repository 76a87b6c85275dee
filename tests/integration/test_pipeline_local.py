"""The whole training pipeline through kfp.local, then batch and online scoring.

Real parts only: `kfp-automl run` (kfp.local SubprocessRunner, local Ray,
BentoML store), `kfp-automl predict`, and `kfp-automl serve` (a real
`bentoml serve` on 127.0.0.1) answering POST /predict.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.support.servers import CLI, json_records

pytestmark = pytest.mark.slow


def test_summary_has_every_field(pipeline_run):
    out, s, _ = pipeline_run
    required = {
        "task",
        "metric",
        "best_model",
        "cv_score",
        "test_score",
        "test_metrics",
        "n_trials",
        "bento_tag",
        "bento_archive",
        "report_html",
        "elapsed_s",
    }
    assert required <= set(s)
    assert s["task"] == "classification" and s["metric"] == "roc_auc"
    assert s["best_model"] in {
        "linear",
        "random_forest",
        "extra_trees",
        "hist_gb",
        "lightgbm",
        "ensemble",
    }
    assert 0.5 < s["cv_score"] <= 1 and 0.5 < s["test_score"] <= 1
    assert s["test_metrics"]["roc_auc"] == s["test_score"]
    assert 1 <= s["n_trials"] <= 8
    for key in (
        "bento_archive",
        "report_html",
        "leaderboard_csv",
        "schema_json",
        "data_report_html",
        "search_report_html",
    ):
        assert Path(s[key]).is_file() and Path(s[key]).parent == out
    assert len(pd.read_csv(s["leaderboard_csv"])) <= 8


def test_the_budget_is_the_whole_runs_and_the_run_says_where_it_went(pipeline_run):
    import re

    _, s, stdout = pipeline_run
    assert s["time_budget_s"] == 40
    # tune gave the search what prepare (its elapsed time, from the schema's metadata) and
    # the steps after the search leave
    plan = re.search(r"run budget 40s: (\d+)s spent before the search, about (\d+)s kept", stdout)
    assert plan is not None, stdout
    spent, after = int(plan.group(1)), int(plan.group(2))
    assert spent <= s["step_s"]["prepare"] + 1 and after > 0
    assert {"prepare", "tune", "evaluate", "package", "gate"} <= set(s["step_s"])
    assert 0 < s["refit_s"] < s["step_s"]["tune"] and 0 < s["search_s"] < s["step_s"]["tune"]
    # steps under half a second (often the fingerprint) are left out of the time line
    line = r"time +(fingerprint \d+s, )?prepare \d+s, tune \d+s \(search \d+s, refit \d+s\)"
    assert "(budget 40s)" in stdout and re.search(line, stdout), stdout


def test_first_model_becomes_champion_and_a_second_run_is_gated(
    pipeline_run, small_churn_csv, tmp_path
):
    from kfp_automl.registry.registry import Registry

    _, first, _ = pipeline_run
    assert first["deploy"] is True and "no champion" in first["gate_reason"]
    name, v1 = first["model_tag"].split(":")
    registry = Registry()
    assert registry.champion(name)["version"] == v1  # promoted by the pipeline's dsl.If branch
    out = tmp_path / "second"
    args = ["--data", str(small_churn_csv), "--target", "churn", "--families", "linear"]
    proc = subprocess.run(
        [*CLI, "run", *args, "--max-trials", "2", "--time-budget", "30", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    second = json.loads((out / "summary.json").read_text())
    assert second["champion_before"] == v1
    v2 = second["model_tag"].split(":")[1]
    stages = {v["version"]: v["stage"] for v in registry.versions(name)}
    if second["deploy"]:
        assert stages[v2] == "champion" and stages[v1] == "archived", second["gate_reason"]
    else:
        assert stages[v2] == "challenger" and stages[v1] == "champion", second["gate_reason"]
        assert "step promote" not in proc.stdout
    decision = json.loads(next(out.glob("pipeline_root/*/gate-model/decision")).read_text())
    assert decision["champion_version"] == v1 and decision["p_value"] is not None
    # the same table and seed split alike: the champion was fitted on none of today's holdout,
    # as the hashes of its training inputs (beside its model artifact) tell the gate
    entry = next(v for v in registry.versions(name) if v["version"] == v1)
    assert Path(entry["training_rows_uri"]).is_file() and len(entry["training_rows_sha256"]) == 64
    assert decision["left_out_rows"] == 0 and decision["compared_rows"] > 0
    assert f"on all {decision['compared_rows']} holdout rows" in decision["reason"]


def test_a_run_without_deploy_namespace_contacts_no_cluster(pipeline_run, run_api):
    # the run's kubeconfig points at the stand-in API server; promoted, but not deployed: the
    # deploy step (before promote) deploys nothing without a namespace, and says so
    _, summary, stdout = pipeline_run
    assert summary["deploy"] is True
    assert run_api.state.requests == []
    [release] = Path(summary["pipeline_run_dir"]).rglob("deploy-model/release")
    assert json.loads(release.read_text()) == {
        "format": 1,
        "deployed": False,
        "reason": "deploy_namespace is empty",
    }
    assert "nothing deployed: deploy_namespace is empty" in stdout


def test_progress_output_shows_steps_and_trials(pipeline_run):
    _, s, stdout = pipeline_run
    for step in ("prepare", "tune", "evaluate", "package", "gate", "promote"):
        assert f"step {step} done" in stdout
    assert "trials done" in stdout and "best roc_auc=" in stdout
    assert s["bento_tag"] in stdout and s["report_html"] in stdout
    assert "Got executor_input" not in stdout  # kfp's own chatter stays in run.log


def test_dashboard_artifacts_are_in_the_executor_output(pipeline_run):
    out, _, _ = pipeline_run
    [executor_output] = out.glob("pipeline_root/*/evaluate-model/executor_output.json")
    artifacts = json.loads(executor_output.read_text())["artifacts"]
    cls = artifacts["classification_metrics"]["artifacts"][0]["metadata"]
    assert {"confusionMatrix", "confidenceMetrics"} <= set(cls)
    assert "roc_auc" in artifacts["metrics"]["artifacts"][0]["metadata"]


def test_served_bento_matches_batch_predict(pipeline_run, small_churn_csv, tmp_path, server):
    _, s, _ = pipeline_run
    rows = pd.read_csv(small_churn_csv).tail(25)  # includes rows with a missing total_charges
    assert rows["total_charges"].isna().any()
    inp, pred_path = tmp_path / "rows.csv", tmp_path / "pred.csv"
    rows.to_csv(inp, index=False)
    proc = subprocess.run(
        [
            *CLI,
            "predict",
            "--model",
            s["bento_archive"],
            "--data",
            str(inp),
            "--output",
            str(pred_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    batch = pd.read_csv(pred_path)
    assert list(batch.columns[-3:]) == ["prediction", "proba_No", "proba_Yes"]
    assert np.allclose(batch["proba_No"] + batch["proba_Yes"], 1)

    features = rows.drop(columns=["churn"])
    r = httpx.post(f"{server}/predict", json={"records": json_records(features)}, timeout=60)
    assert r.status_code == 200, r.text
    online = r.json()
    assert [o["prediction"] for o in online] == batch["prediction"].tolist()
    online_yes = [o["probabilities"]["Yes"] for o in online]
    assert np.allclose(online_yes, batch["proba_Yes"], atol=1e-9)


def _one_record(small_churn_csv) -> dict:
    return json_records(pd.read_csv(small_churn_csv).drop(columns=["churn"]).head(1))[0]


def _bad_requests(rec: dict) -> list:
    """(description, request kwargs, status, reason, field named in the answer)"""
    text = {**rec, "tenure": "ten"}
    gone = {k: v for k, v in rec.items() if k != "tenure"}
    return [
        ("text for a number", {"json": {"records": [rec, text]}}, 400, "wrong_type", "tenure"),
        ("missing field", {"json": {"records": [gone]}}, 400, "missing_field", "tenure"),
        ("empty records", {"json": {"records": []}}, 400, "empty", None),
        (
            "pickle",
            {
                "content": b"\x80\x04K\x01.",
                "headers": {"content-type": "application/python-pickle"},
            },
            415,
            "unsupported_media_type",
            None,
        ),
        ("form post", {"data": {"records": "x"}}, 415, "unsupported_media_type", None),
        (
            "not json",
            {"content": b"{records", "headers": {"content-type": "application/json"}},
            400,
            "bad_json",
            None,
        ),
        ("no records key", {"json": {"rows": [rec]}}, 400, "bad_json", "records"),
        ("9 MB body", {"json": {"records": [rec], "pad": "x" * 9_000_000}}, 413, "too_large", None),
    ]


def _rejected(base: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("automl_requests_rejected_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_bad_requests_get_4xx_naming_the_problem_and_are_counted(server, small_churn_csv):
    rec = _one_record(small_churn_csv)
    for desc, kwargs, status, reason, field in _bad_requests(rec):
        before = _rejected(server)
        r = httpx.post(f"{server}/predict", timeout=60, **kwargs)
        assert r.status_code == status, (desc, r.status_code, r.text[:300])
        if field:
            assert field in r.text, desc
        assert r.json()["error"]["reason"] == reason, desc
        assert _rejected(server)[reason] == before[reason] + 1, desc
    # still healthy, and a good request still scores
    assert httpx.get(f"{server}/livez", timeout=5).status_code == 200
    assert httpx.post(f"{server}/predict", json={"records": [rec]}, timeout=30).status_code == 200


def test_metrics_count_records_into_reference_bins(server, small_churn_csv):
    rec = _one_record(small_churn_csv)

    def scrape() -> str:
        return httpx.get(f"{server}/metrics", timeout=10).text

    def value(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = scrape()
    assert (
        httpx.post(f"{server}/predict", json={"records": [rec] * 7}, timeout=30).status_code == 200
    )
    after = scrape()
    assert value(after, "automl_records_total") - value(before, "automl_records_total") == 7
    tenure = 'automl_feature_bin_total{bin="'
    grew = value(after, tenure) - value(before, tenure)
    assert grew == 7 * 20  # 19 features and the prediction, one bin each per record
    for name in (
        "automl_model_info",
        "automl_drift_threshold",
        "automl_feature_reference_share",
        "automl_inference_duration_seconds_bucket",
        "automl_batch_size_records_bucket",
    ):
        assert name in after, name
    assert len(after.splitlines()) == len(scrape().splitlines())  # no new series from traffic


def test_concurrent_requests_are_batched_and_a_bad_one_spoils_nothing(server, small_churn_csv):
    from concurrent.futures import ThreadPoolExecutor

    rec = _one_record(small_churn_csv)
    bad = {**rec, "tenure": "ten"}

    def scrape(name: str) -> float:
        text = httpx.get(f"{server}/metrics", timeout=10).text
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name))

    batches0, records0 = scrape("automl_batch_size_records_count"), scrape("automl_records_total")
    bodies = [[rec]] * 47 + [[bad]]
    with ThreadPoolExecutor(max_workers=16) as pool, httpx.Client(timeout=60) as client:
        answers = list(
            pool.map(lambda b: client.post(f"{server}/predict", json={"records": b}), bodies)
        )
    assert [a.status_code for a in answers[:-1]] == [200] * 47
    assert answers[-1].status_code == 400 and answers[-1].json()["error"]["field"] == "tenure"
    assert all(len(a.json()) == 1 for a in answers[:-1])
    batches = scrape("automl_batch_size_records_count") - batches0
    assert scrape("automl_records_total") - records0 == 47
    assert batches < 47, "16 concurrent clients were never merged into one model call"
