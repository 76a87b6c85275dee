"""A messy table through the whole pipeline and batch scoring: every column role, a time split."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from tests.support.frames import messy
from tests.support.servers import CLI

pytestmark = pytest.mark.slow


def test_messy_table_trains_packages_and_scores(tmp_path):
    data = tmp_path / "messy.csv"
    messy(1500, seed=4).to_csv(data, index=False)
    out = tmp_path / "out"
    run = [*CLI, "run", "--data", str(data), "--target", "churn", "--time-column", "signed_up"]
    run += ["--drop", "row_id", "--time-budget", "20", "--max-trials", "4", "--output", str(out)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    schema = json.loads((out / "schema.json").read_text())
    roles = {f["name"]: f["role"] for f in schema["features"]}
    assert roles == {
        "tenure": "numeric",
        "plan": "categorical",
        "city": "categorical",
        "paperless": "boolean",
        "signed_up": "datetime",
        "comment": "text",
    }
    assert schema["split"]["strategy"] == "time"
    assert {d["name"] for d in schema["dropped"]} == {
        "row_id",
        "customer",
        "country",
        "empty",
        "outcome_code",
    }
    report = (out / "data_report.html").read_text()
    assert s["data_report_html"] == str(out / "data_report.html") and "leakage" in report
    assert 0.5 < s["test_score"] <= 1
    preds = tmp_path / "pred.csv"
    score = [
        *CLI,
        "predict",
        "--model",
        s["bento_tag"],
        "--data",
        str(data),
        "--output",
        str(preds),
    ]
    proc = subprocess.run(score, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = pd.read_csv(preds)
    assert len(scored) == 1500 and set(scored["prediction"]) <= {"yes", "no"}
    assert scored[["proba_no", "proba_yes"]].sum(axis=1).round(6).eq(1).all()
