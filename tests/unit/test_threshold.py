"""A binary classifier's decision threshold: tuned on out-of-fold predictions, and answered
with by every path that turns probabilities into labels (predict, serving's fast path,
batch scoring, the gate)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kfp_automl.runtime import threshold
from kfp_automl.runtime.metrics import METRICS
from tests.support.frames import schema_for, synthetic_frame

CLASSES = np.array(["no", "yes"])
SCHEMA = schema_for("classification")


def _imbalanced(n: int = 3000, seed: int = 0):
    """Labels with 10% positives and probabilities that rank them well but sit low: the
    best f1 is well below 0.5."""
    rng = np.random.default_rng(seed)
    y01 = (rng.random(n) < 0.1).astype(int)
    p = np.clip(0.08 + 0.3 * y01 + rng.normal(scale=0.12, size=n), 0.001, 0.999)
    return CLASSES[y01], np.column_stack([1 - p, p])


def test_the_threshold_that_maximises_f1_is_found_below_one_half():
    y, proba = _imbalanced()
    tuned = threshold.tune(y, proba, METRICS["f1"], CLASSES)
    assert tuned is not None and tuned.pos_label == "yes"
    assert 0.1 < tuned.threshold < 0.4
    assert tuned.score > tuned.at_half + threshold.MIN_GAIN
    # no other threshold on a fine grid does better on these rows
    grid = np.linspace(0.01, 0.99, 99)
    f1 = METRICS["f1"].fn
    best_on_grid = max(f1(y, CLASSES[(proba[:, 1] >= t).astype(int)], proba, CLASSES) for t in grid)
    assert tuned.score >= best_on_grid - 1e-12
    assert f"{tuned.threshold:.3f} on P(yes)" in tuned.describe("f1")


@pytest.mark.parametrize("name", ["accuracy", "roc_auc", "log_loss"])
def test_metrics_the_most_probable_class_serves_get_no_threshold(name):
    y, proba = _imbalanced()
    assert threshold.tune(y, proba, METRICS[name], CLASSES) is None


def test_no_threshold_for_more_than_two_classes():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(3), size=300)
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    assert threshold.tune(y, proba, METRICS["f1_macro"], np.array(["a", "b", "c"])) is None


def test_a_gain_under_the_minimum_keeps_the_most_probable_class():
    # balanced classes, symmetric probabilities: 0.5 is already (about) the best
    rng = np.random.default_rng(2)
    y01 = rng.integers(0, 2, 4000)
    p = np.clip(0.5 + (y01 - 0.5) * 0.5 + rng.normal(scale=0.2, size=4000), 0.001, 0.999)
    proba = np.column_stack([1 - p, p])
    assert threshold.tune(CLASSES[y01], proba, METRICS["balanced_accuracy"], CLASSES) is None


def _fitted(tuned, family: str = "hist_gb"):
    """A family's fitted pipeline on the synthetic table, inside the threshold when given."""
    from kfp_automl.components.tune.families import FAMILIES, build_model, flat_config

    df = synthetic_frame(600, "classification", seed=3)
    X, y = df.drop(columns=["target"]), df["target"]
    config = flat_config(family, FAMILIES[family].initial)
    model = threshold.with_threshold(build_model(SCHEMA, config, 0), tuned)
    return model.fit(X, y), X


def test_labels_from_probabilities_are_what_predict_returns():
    tuned = threshold.Tuned(0.2, "yes", 0.7, 0.6)
    model, X = _fitted(tuned)
    proba = model.predict_proba(X)
    got = threshold.labels(model, proba)
    np.testing.assert_array_equal(got, model.predict(X))
    # the threshold changes answers: more "yes" than the most probable class gives
    assert (got == "yes").sum() > (CLASSES[proba.argmax(1)] == "yes").sum()
    assert threshold.threshold_of(model) == (0.2, "yes")
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X), got)
    # no threshold: the most probable class
    plain, _ = _fitted(None)
    assert threshold.threshold_of(plain) is None
    p = plain.predict_proba(X)
    np.testing.assert_array_equal(threshold.labels(plain, p), plain.predict(X))


@pytest.mark.parametrize("family", ["hist_gb", "random_forest", "linear"])
def test_the_serving_fast_path_and_batch_scoring_answer_with_the_threshold(family):
    from kfp_automl.runtime.fast_path import ServingModel, serving_model
    from kfp_automl.runtime.records import predict_frame

    model, X = _fitted(threshold.Tuned(0.2, "yes", 0.7, 0.6), family)
    # the fast path serves the pipeline the threshold wraps
    fast = serving_model(model, SCHEMA)
    assert isinstance(fast, ServingModel) and fast.decision_threshold == (0.2, "yes")
    frame = predict_frame(fast, X)
    np.testing.assert_array_equal(frame["prediction"].to_numpy(), model.predict(X))
    np.testing.assert_array_equal(fast.predict(X), model.predict(X))
    np.testing.assert_allclose(frame["proba_yes"].to_numpy(), model.predict_proba(X)[:, 1])


def test_the_gate_scores_the_thresholded_answers():
    from kfp_automl.components.gate.gate import _scores

    model, X = _fitted(threshold.Tuned(0.2, "yes", 0.7, 0.6))
    pred, proba, classes = _scores(model, X)
    np.testing.assert_array_equal(pred, model.predict(X))
    assert (pred != np.asarray(classes)[proba.argmax(axis=1)]).any()  # not the most probable
