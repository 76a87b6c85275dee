"""Reference bins, drift statistics, calibration and the service's metric series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from kfp_automl.components.prepare.profile import build_profile
from kfp_automl.runtime.drift import (
    MISSING,
    OTHER,
    bin_index,
    bin_shares,
    calibrate,
    categorical_bins,
    js,
    numeric_bins,
    prediction_bins,
    psi,
)
from kfp_automl.runtime.names import PREDICTION
from kfp_automl.serving.monitoring import Monitor


def test_numeric_bins_are_quantiles_with_a_missing_bin():
    values = pd.Series(np.arange(1000, dtype=float))
    spec = numeric_bins(values)
    assert spec.bins[-1] == MISSING and len(spec.bins) == 11
    shares = bin_shares(values, spec)
    assert np.allclose(shares[:-1], 0.1, atol=0.002) and shares[-1] == 0
    idx = bin_index(pd.Series([-5.0, np.nan, 5000.0]), spec)
    assert idx.tolist() == [0, 10, 9]


def test_binary_numeric_feature_gets_few_bins():
    spec = numeric_bins(pd.Series([0, 1] * 50))
    assert len(spec.bins) <= 4
    assert bin_shares(pd.Series([0, 1] * 50), spec).max() == pytest.approx(0.5)


def test_categorical_bins_other_and_missing():
    values = pd.Series(["a"] * 5 + ["b"] * 3 + ["c"])
    spec = categorical_bins(values, max_bins=2)
    assert spec.categories == ("a", "b") and spec.bins == ("c0", "c1", OTHER, MISSING)
    idx = bin_index(pd.Series(["b", "zzz", None, "a", 3]), spec)
    assert idx.tolist() == [1, 2, 3, 0, 2]


def test_drift_statistics():
    p = np.array([0.25, 0.25, 0.5])
    assert psi(p, p) == 0 and js(p, p) == 0
    q = np.array([0.5, 0.25, 0.25])
    expected_psi = (0.25 - 0.5) * np.log(0.5) + (0.5 - 0.25) * np.log(2)
    assert psi(p, q) == pytest.approx(expected_psi)
    assert 0 < js(p, q) <= np.log(2)
    # empty bins do not explode: clamped before the log
    assert np.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))


def test_calibrated_threshold_separates_noise_from_shift():
    rng = np.random.default_rng(1)
    ref = pd.Series(rng.normal(size=20_000))
    spec = numeric_bins(ref)
    shares = bin_shares(ref, spec)
    thresholds = calibrate(ref, spec, window=200)
    fresh = [psi(bin_shares(pd.Series(rng.normal(size=200)), spec), shares) for _ in range(200)]
    assert np.mean(np.array(fresh) > thresholds["psi"]) < 0.02
    shifted = psi(bin_shares(pd.Series(rng.normal(1.0, size=200)), spec), shares)
    assert shifted > thresholds["psi"]


def test_profile_of_the_churn_table(churn_df):
    from kfp_automl.components.prepare.prepare import prepare

    prepared = prepare(churn_df, "churn")
    profile = build_profile(prepared.train, prepared.schema)
    assert set(profile.features) == set(prepared.schema.names)
    for name, spec in profile.features.items():
        assert sum(spec.shares) == pytest.approx(1, abs=1e-6), name
        assert len(spec.shares) == len(spec.bins)
        assert spec.thresholds["psi"] > 0 and spec.thresholds["js"] > 0
    assert profile.features["total_charges"].shares[-1] > 0  # its missing values
    assert profile.data_fingerprint == prepared.schema.data_fingerprint
    pred = prediction_bins(prepared.test["churn"], "classification", ["No", "Yes"])
    assert pred.categories == ("No", "Yes") and sum(pred.shares) == pytest.approx(1)


def _metrics(registry) -> dict[tuple, float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_monitor_counts_bins_quality_and_keeps_series_bounded(churn_df):
    from kfp_automl.components.prepare.prepare import prepare

    prepared = prepare(churn_df, "churn")
    profile = build_profile(prepared.train, prepared.schema)
    prediction = prediction_bins(prepared.test["churn"], "classification", ["No", "Yes"])
    registry = CollectorRegistry()
    mon = Monitor(
        profile, "m", "v1", {"task": "classification"}, registry=registry, prediction=prediction
    )
    before = _metrics(registry)
    X = prepared.test.drop(columns="churn").head(50).copy()
    X.loc[X.index[0], "contract"] = "Never seen"
    X.loc[X.index[1], "tenure"] = 10_000
    X.loc[X.index[2], "monthly_charges"] = np.nan
    mon.observe(X, np.array(["No"] * 50))
    after = _metrics(registry)

    def value(m, name, **labels):
        return m[(name, tuple(sorted({"model": "m", "version": "v1", **labels}.items())))]

    assert value(after, "automl_records_total") == 50
    tenure_bins = list(profile.features["tenure"].bins)
    assert (
        sum(value(after, "automl_feature_bin_total", feature="tenure", bin=b) for b in tenure_bins)
        == 50
    )
    assert value(after, "automl_feature_unseen_category_total", feature="contract") == 1
    assert value(after, "automl_feature_out_of_range_total", feature="tenure") == 1
    assert value(after, "automl_feature_missing_total", feature="monthly_charges") == 1
    assert value(after, "automl_feature_bin_total", feature=PREDICTION, bin="c0") == 50

    rng = np.random.default_rng(0)
    for _ in range(20):  # random values never create new series
        Y = X.sample(frac=1.0, random_state=int(rng.integers(1000))).reset_index(drop=True)
        Y["tenure"] = rng.normal(100, 50, size=len(Y))
        Y["payment_method"] = [f"new-{i}" for i in rng.integers(0, 10_000, size=len(Y))]
        mon.observe(Y, rng.choice(["No", "Yes"], size=len(Y)))
    assert set(_metrics(registry)) == set(before)


def test_monitor_counts_request_columns_as_it_counts_a_frame(churn_df):
    """The service hands observe() the request's columns (records_to_columns), not a frame."""
    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.runtime.records import records_to_columns, records_to_frame

    prepared = prepare(churn_df.head(800), "churn")
    profile = build_profile(prepared.train, prepared.schema)
    X = prepared.test.drop(columns="churn").head(40).astype(object)
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in X.to_dict("records")]
    records[0]["contract"], records[1]["tenure"], records[2]["monthly_charges"] = "Never", 1e4, None
    preds = np.array(["No", "Yes"] * 20)
    counted = []
    for batch in (
        records_to_columns(records, prepared.schema),
        records_to_frame(records, prepared.schema),
    ):
        registry = CollectorRegistry()
        Monitor(profile, "m", "v1", registry=registry).observe(batch, preds)
        counted.append({k: v for k, v in _metrics(registry).items() if "_created" not in k[0]})
    assert counted[0] == counted[1]
    assert any(
        k[0] == "automl_feature_out_of_range_total" and v == 1 for k, v in counted[0].items()
    )
    assert sum(v for k, v in counted[0].items() if k[0] == "automl_records_total") == 40


@pytest.mark.parametrize("size", [1, 5, 16])
def test_small_batches_are_counted_as_numpy_counts_them(churn_df, monkeypatch, size):
    """Up to SMALL_BATCH records are binned in plain Python: the same counts as numpy's."""
    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.runtime.records import records_to_columns
    from kfp_automl.serving import monitoring

    prepared = prepare(churn_df.head(800), "churn")
    profile = build_profile(prepared.train, prepared.schema)
    prediction = prediction_bins(prepared.test["churn"], "classification", ["No", "Yes"])
    X = prepared.test.drop(columns="churn").head(size).astype(object)
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in X.to_dict("records")]
    records[0].update(contract="Never", tenure=-5.0, monthly_charges=None, payment_method=None)
    records[-1].update(tenure=1e4, total_charges=float(profile.features["total_charges"].edges[0]))
    columns = records_to_columns(records, prepared.schema)
    preds = np.array(["No", "Yes", "Maybe"] * size)[:size]
    counted = []
    for small in (monitoring.SMALL_BATCH, 0):
        monkeypatch.setattr(monitoring, "SMALL_BATCH", small)
        registry = CollectorRegistry()
        Monitor(profile, "m", "v1", registry=registry, prediction=prediction).observe(
            columns, preds
        )
        counted.append({k: v for k, v in _metrics(registry).items() if "_created" not in k[0]})
    assert counted[0] == counted[1]
    assert counted[0][
        (
            "automl_feature_out_of_range_total",
            (("feature", "tenure"), ("model", "m"), ("version", "v1")),
        )
    ] == (2 if size > 1 else 1)
