"""A model file written by release 0.1.0 (classes under `components.*`) loads and answers as it did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.fast_path import ServingModel, serving_model
from kfp_automl.runtime.model_file import MODEL_FILE, ModelIntegrityError, load_model
from kfp_automl.runtime.records import coerce_frame, predict_frame

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"


@pytest.fixture(scope="module")
def legacy():
    sha = (LEGACY / "sha256").read_text().strip()
    schema = Schema.read(LEGACY / "schema.json")  # written by 0.1.0's prepare
    rows = pd.read_parquet(LEGACY / "rows.parquet")
    expected = pd.read_parquet(LEGACY / "expected.parquet")
    return load_model(LEGACY, sha), schema, rows, expected


def test_the_fixture_names_the_old_module_paths():
    """Without this the test below would prove nothing: the pickle really says components.*."""
    data = (LEGACY / MODEL_FILE).read_bytes()
    assert b"components.common.preprocess" in data
    assert b"kfp_automl" not in data


def test_a_0_1_0_model_answers_as_it_did(legacy):
    model, schema, rows, expected = legacy
    assert type(model).__name__ == "VotingClassifier"
    got = predict_frame(model, coerce_frame(rows, schema))
    assert list(got.columns) == list(expected.columns)
    assert (got["prediction"].to_numpy() == expected["prediction"].to_numpy()).all()
    proba = [c for c in expected.columns if c.startswith("proba_")]
    assert np.allclose(got[proba].to_numpy(), expected[proba].to_numpy(), rtol=0, atol=1e-12)


def test_its_transformers_are_todays_classes(legacy):
    from kfp_automl.runtime import transformers

    model = legacy[0]
    steps = model.estimators_[0].named_steps["preprocess"].transformers_
    used = {
        type(s).__module__ for _, pipe, _ in steps if hasattr(pipe, "steps") for _, s in pipe.steps
    }
    assert transformers.__name__ in used


def test_the_serving_fast_path_takes_a_0_1_0_model(legacy):
    model, schema, rows, expected = legacy
    fast = serving_model(model, schema, coerce_frame(rows, schema))
    assert isinstance(fast, ServingModel)
    proba = [c for c in expected.columns if c.startswith("proba_")]
    got = predict_frame(fast, coerce_frame(rows, schema))
    assert np.allclose(got[proba].to_numpy(), expected[proba].to_numpy(), rtol=0, atol=1e-12)


def test_the_digest_is_still_checked_before_unpickling(tmp_path):
    (tmp_path / MODEL_FILE).write_bytes((LEGACY / MODEL_FILE).read_bytes() + b"\0")
    sha = (LEGACY / "sha256").read_text().strip()
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        load_model(tmp_path, sha)
