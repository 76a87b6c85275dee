"""components/evaluate/importance.inspection_model: the report's permutation importance and
partial dependence through the serving path give exactly what they give through sklearn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kfp_automl.components.evaluate.importance import (
    inspection_model,
    partial_dependence,
    permutation_importance,
)
from kfp_automl.components.tune import ensemble
from kfp_automl.components.tune.families import FAMILIES, build_model, flat_config
from kfp_automl.runtime.metrics import resolve_metric
from tests.support.frames import schema_for, synthetic_frame

CASES = [
    ("classification", "linear"),
    ("classification", "random_forest"),
    ("multiclass", "hist_gb"),
    ("multiclass", "extra_trees"),
    ("regression", "lightgbm"),
    ("regression", "random_forest"),
]


def _small(config: dict) -> dict:
    """Fewer boosting rounds: the diagnostics are compared, not the model's quality."""
    return {k: min(v, 20) if k == "hist_gb.max_iter" else v for k, v in config.items()}


def _model(task: str, families: list[str]):
    df = synthetic_frame(300, task, seed=1)
    schema = schema_for(task)
    X, y = df.drop(columns="target"), df["target"]
    kind = "regression" if task == "regression" else "classification"
    members = [build_model(schema, _small(flat_config(f, FAMILIES[f].initial))) for f in families]
    model = members[0] if len(members) == 1 else ensemble.build(kind, [(m, 1) for m in members])
    test = synthetic_frame(90, task, seed=2)
    n_classes = len(set(y)) if kind == "classification" else 0
    return model.fit(X, y), schema, test, resolve_metric("", kind, n_classes)


def _same_diagnostics(model, schema, test, metric):
    X, y = test.drop(columns="target"), test["target"]
    answering = inspection_model(model, X, schema)
    assert answering is not model  # the serving path reproduced the model
    plain = permutation_importance(model, X, y, metric, seed=3)
    fast = permutation_importance(answering, X, y, metric, seed=3)
    assert fast.features == plain.features and fast.mean == plain.mean and fast.std == plain.std
    features = ["x1", "colour", "x2"]
    for a, b in zip(
        partial_dependence(answering, X, features, schema, seed=3),
        partial_dependence(model, X, features, schema, seed=3),
        strict=True,
    ):
        assert (a.feature, a.grid, a.outputs) == (b.feature, b.grid, b.outputs)
        assert np.array_equal(np.asarray(a.average), np.asarray(b.average))


@pytest.mark.parametrize(("task", "family"), CASES)
def test_every_task_gets_the_same_diagnostics(task, family):
    _same_diagnostics(*_model(task, [family]))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_an_ensemble_gets_the_same_diagnostics(task):
    _same_diagnostics(*_model(task, ["linear", "random_forest", "hist_gb"]))


def test_binary_dependence_is_the_positive_class_only():
    model, schema, test, _ = _model("classification", ["linear"])
    X = test.drop(columns="target")
    (dep,) = partial_dependence(inspection_model(model, X, schema), X, ["x1"], schema)
    assert dep.outputs == ["P(yes)"] and len(dep.average) == 1


def test_a_model_the_serving_path_cannot_reproduce_is_used_as_it_is():
    df = synthetic_frame(200, "classification")
    X = df[["x1", "x2"]].fillna(0.0)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, df["target"])
    full = schema_for("classification")
    schema = dataclasses.replace(
        full, features=tuple(f for f in full.features if f.name != "colour")
    )
    assert inspection_model(model, X, schema) is model
