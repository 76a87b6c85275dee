"""A Bento built by release 0.1.0: refused by `serve` with the way out, read by `predict`, and
packaged again by `repackage` into a Bento that serves its model as 0.1.0 answered."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.support.servers import CLI, json_records, serve

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"
ARCHIVE = LEGACY / "automl-legacy.bento"  # built by 0.1.0's package step

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """A BentoML store of its own (see tests/support/servers.py: serve)."""
    return {"BENTOML_HOME": str(tmp_path / "bentoml")}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def _expected() -> pd.DataFrame:
    return pd.read_parquet(LEGACY / "expected.parquet")


def test_serving_a_0_1_0_bento_says_how_to_repackage_it(home):
    done = _cli("serve", "--model", str(ARCHIVE), "--port", "1", env=home)
    assert done.returncode == 2
    # an archive no registry records a digest for is checked for its members only, and says so
    warning, line = done.stderr.strip().splitlines()
    assert warning.startswith("warning: ") and "records no digest" in warning
    assert line.startswith("error: Bento automl-legacy:") and "kfp-automl repackage" in line


def test_predict_reads_a_0_1_0_bento(home, tmp_path):
    out = tmp_path / "scored.parquet"
    done = _cli(
        "predict", "--model", str(ARCHIVE), "--data", str(LEGACY / "rows.parquet"),
        "--output", str(out), env=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got, expected = pd.read_parquet(out), _expected()
    assert (got["prediction"] == expected["prediction"]).all()
    assert np.allclose(
        got[["proba_no", "proba_yes"]], expected[["proba_no", "proba_yes"]], atol=1e-12
    )


def test_a_repackaged_0_1_0_bento_serves_as_0_1_0_answered(home, tmp_path):
    new = tmp_path / "new.bento"
    done = _cli("repackage", "--model", str(ARCHIVE), "--output", str(new), env=home)
    assert done.returncode == 0, done.stderr
    rows = pd.read_parquet(LEGACY / "rows.parquet")
    rows["signup"] = rows["signup"].dt.strftime("%Y-%m-%d")  # JSON has no dates: ISO text
    with serve(str(new), env=home) as base:
        answer = httpx.post(f"{base}/predict", json={"records": json_records(rows)}, timeout=60)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert answer.status_code == 200, answer.text
    got, expected = answer.json(), _expected()
    assert [a["prediction"] for a in got] == expected["prediction"].tolist()
    proba = np.array([[a["probabilities"]["no"], a["probabilities"]["yes"]] for a in got])
    assert np.allclose(proba, expected[["proba_no", "proba_yes"]].to_numpy(), rtol=0, atol=1e-9)
    # the drift references came along, the predictions' bins out of 0.1.0's profile
    reference = [
        line for line in metrics.splitlines() if line.startswith("automl_feature_reference_share{")
    ]
    assert any('feature="__prediction__"' in line for line in reference)
    assert any('feature="x1"' in line for line in reference)
