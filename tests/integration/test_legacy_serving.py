"""A model file written by release 0.1.0 packages into today's Bento and serves as it answered."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from kfp_automl.components.package.package import package
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.schema import Schema
from tests.integration.servers import json_records, serve

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"

pytestmark = pytest.mark.slow


def test_a_0_1_0_model_is_served_by_a_bento_built_today(tmp_path):
    info = ModelInfo(
        sha256=(LEGACY / "sha256").read_text().strip(),
        family="ensemble",
        params=[],
        metric="roc_auc",
        greater_is_better=True,
        valid_score=0.8,
    )
    packaged = package(
        model_dir=LEGACY,
        model_info=info,
        schema=Schema.read(LEGACY / "schema.json"),
        archive_path=tmp_path / "legacy.bento",
        name="automl-legacy",
    )
    rows = pd.read_parquet(LEGACY / "rows.parquet")
    rows["signup"] = rows["signup"].dt.strftime("%Y-%m-%d")  # JSON has no dates: ISO text
    expected = pd.read_parquet(LEGACY / "expected.parquet")
    with serve(str(tmp_path / "legacy.bento")) as base:
        answer = httpx.post(f"{base}/predict", json={"records": json_records(rows)}, timeout=60)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert [a["prediction"] for a in got] == expected["prediction"].tolist()
    proba = np.array([[a["probabilities"]["no"], a["probabilities"]["yes"]] for a in got])
    assert np.allclose(proba, expected[["proba_no", "proba_yes"]].to_numpy(), rtol=0, atol=1e-9)
    assert packaged.bento_tag.startswith("automl-legacy:")
