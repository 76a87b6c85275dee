"""kfp_automl/runtime/fast_path.py: ServingModel answers exactly as the fitted model, faster."""

from __future__ import annotations

import math
import sys
import threading
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from kfp_automl.components.prepare.prepare import prepare
from kfp_automl.components.tune import ensemble
from kfp_automl.components.tune.families import FAMILIES, build_model, flat_config
from kfp_automl.runtime.fast_path import (
    MEMO_MAX_VALUE_BYTES,
    ServingModel,
    _CategoryMemo,
    probe_frame,
    serving_model,
)
from kfp_automl.runtime.records import predict_frame, records_to_frame
from tests.support.frames import schema_for, synthetic_frame

from .test_preprocess import _mixed

ALL_FAMILIES = tuple(FAMILIES)


def _records(X: pd.DataFrame) -> list[dict]:
    """Rows as the service receives them: JSON values, null for missing, dates as text."""
    out = []
    for r in X.astype(object).to_dict("records"):
        rec = {}
        for k, v in r.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
                rec[k] = None
            elif isinstance(v, pd.Timestamp):
                rec[k] = v.isoformat()
            else:
                rec[k] = v
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def churn(churn_df):
    prepared = prepare(churn_df.head(1500), "churn")
    X_train = prepared.train.drop(columns="churn")
    X = records_to_frame(_records(prepared.test.drop(columns="churn")), prepared.schema)
    return prepared.schema, X_train, prepared.train["churn"], X


def _fit(family: str, schema, X, y, **params):
    config = flat_config(family, {**FAMILIES[family].initial, **params})
    return build_model(schema, config).fit(X, y)


def _same(model, fast, X) -> None:
    assert isinstance(fast, ServingModel)
    if hasattr(model, "predict_proba"):
        assert np.array_equal(fast.predict_proba(X), model.predict_proba(X))
        assert list(fast.classes_) == list(model.classes_)
    else:
        assert np.array_equal(fast.predict(X), model.predict(X))
    assert predict_frame(fast, X).equals(predict_frame(model, X))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_answers_exactly_as_sklearn(churn, family):
    schema, X_train, y, X = churn
    model = _fit(family, schema, X_train, y)
    fast = serving_model(model, schema)
    _same(model, fast, X)
    _same(model, fast, X.head(1))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_regression(family):
    df = synthetic_frame(300, "regression")
    schema = schema_for("regression")
    model = _fit(family, schema, df.drop(columns="target"), df["target"])
    X = records_to_frame(_records(df.drop(columns="target").head(80)), schema)
    _same(model, serving_model(model, schema), X)


def test_every_role_and_encoding():
    """Booleans, target-encoded and one-hot categories, datetimes and text."""
    df, y, schema = _mixed()
    for family in ("linear", "random_forest"):
        model = _fit(family, schema, df, y)
        X = records_to_frame(_records(df.head(120)), schema)
        _same(model, serving_model(model, schema), X)


def test_ensemble_shares_identical_preprocessing(churn):
    schema, X_train, y, X = churn
    members = [
        (_fit("random_forest", schema, X_train, y), 3),
        (_fit("lightgbm", schema, X_train, y), 2),
        (_fit("linear", schema, X_train, y), 2),
        (_fit("linear", schema, X_train, y, C=10.0), 1),
    ]
    model = ensemble.build("classification", [(m, w) for m, w in members]).fit(X_train, y)
    fast = serving_model(model, schema)
    _same(model, fast, X)
    # the tree members share one unscaled preprocessor, the linear ones one scaled
    assert fast.n_preprocessors == 2 and len(fast.members) == 4


def test_regression_ensemble():
    df = synthetic_frame(300, "regression")
    schema = schema_for("regression")
    X_train, y = df.drop(columns="target"), df["target"]
    members = [(build_model(schema, flat_config(f, FAMILIES[f].initial)), 1) for f in ALL_FAMILIES]
    model = ensemble.build("regression", members).fit(X_train, y)
    _same(model, serving_model(model, schema), records_to_frame(_records(X_train), schema))


def test_unseen_missing_and_non_text_values(churn):
    schema, X_train, y, X = churn
    model = _fit("random_forest", schema, X_train, y)
    fast = serving_model(model, schema)
    odd = X.head(6).copy()
    odd.loc[odd.index[0], "contract"] = "Decade-long"  # never seen in training
    odd.loc[odd.index[1], "contract"] = np.nan
    _same(model, fast, odd)
    odd["contract"] = odd["contract"].astype(object)
    odd.loc[odd.index[2], "contract"] = 3  # not text: the fitted transformer's own path
    assert np.array_equal(fast.predict_proba(odd), model.predict_proba(odd))


def _memos(fast: ServingModel) -> list[_CategoryMemo]:
    return [b for m in fast.members for b in m.preprocessor.blocks if isinstance(b, _CategoryMemo)]


def _held_bytes(memo: _CategoryMemo) -> int:
    index, rows = memo._memo
    return rows.nbytes + sum(sys.getsizeof(k) for k in index)


def _distinct_values(
    X: pd.DataFrame, columns: list[str], n: int, chars: int, start: int = 0
) -> pd.DataFrame:
    """`n` rows of X whose `columns` hold distinct values of `chars` characters (from `start`)."""
    rows = X.sample(n, replace=True, random_state=start).reset_index(drop=True)
    for c in columns:
        rows[c] = [(f"{c}-{i:07d}-" + "v" * chars)[:chars] for i in range(start, start + n)]
    return rows


def test_memo_beyond_its_bound_still_answers_the_same(churn, monkeypatch):
    schema, X_train, y, X = churn
    monkeypatch.setattr("kfp_automl.runtime.fast_path.MEMO_MAX_VALUES", 2)
    model = _fit("linear", schema, X_train, y)
    fast = ServingModel(model, schema)
    for _ in range(3):
        _same(model, fast, X)
    assert _memos(fast) and all(len(m) <= 2 for m in _memos(fast))


def test_a_long_value_is_answered_and_never_remembered(churn):
    schema, X_train, y, X = churn
    model = _fit("random_forest", schema, X_train, y)
    fast = serving_model(model, schema)
    columns = [m.column for m in _memos(fast)]
    held = [len(m) for m in _memos(fast)]
    long = _distinct_values(X, columns, 50, 2 * MEMO_MAX_VALUE_BYTES)
    for _ in range(2):
        _same(model, fast, long)
    assert [len(m) for m in _memos(fast)] == held
    short = _distinct_values(X, columns, 50, 40)
    _same(model, fast, short)
    assert [len(m) for m in _memos(fast)] == [n + 50 for n in held]


def test_distinct_values_cost_the_model_at_most_its_memo_budget(churn):
    """Hundreds of distinct short values per column: sklearn's answers, memory within budget."""
    schema, X_train, y, X = churn
    model = _fit("linear", schema, X_train, y)
    budget = 64 * 1024
    fast = ServingModel(model, schema, memo_max_bytes=budget)
    columns = [m.column for m in _memos(fast)]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i in range(4):  # 600 distinct values per column in all
            batch = _distinct_values(X, columns, 150, 60, start=i * 150)
            _same(model, fast, batch)
        del batch
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert sum(_held_bytes(m) for m in _memos(fast)) <= budget
    assert sum(len(m) for m in _memos(fast)) > 100  # the memo still works within its budget
    assert grown < budget + 256 * 1024, f"grew by {grown / 1024:.0f} KiB"


def test_concurrent_batches_get_their_own_answers(churn):
    schema, X_train, y, X = churn
    model = _fit("lightgbm", schema, X_train, y)
    fast = ServingModel(model, schema)  # empty memos: the threads fill them together
    chunks = [X.iloc[i::4] for i in range(4)]
    expected = [model.predict_proba(c) for c in chunks]
    failures = []

    def work(i):
        for _ in range(5):
            if not np.array_equal(fast.predict_proba(chunks[i]), expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


class _BatchCentred(TransformerMixin, BaseEstimator):
    """Not row-wise: each value's output depends on the rest of the batch."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        codes = pd.Series(np.asarray(X)[:, 0]).astype("category").cat.codes.to_numpy(float)
        return (codes - codes.mean())[:, None]


def test_a_model_it_cannot_reproduce_is_served_as_it_is(churn, caplog):
    schema, X_train, y, X = churn
    ct = ColumnTransformer([("contract", _BatchCentred(), ["contract"])], sparse_threshold=0)
    model = Pipeline([("preprocess", ct), ("model", LogisticRegression())]).fit(X_train, y)
    assert serving_model(model, schema) is model
    assert "answered differently" in caplog.text


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(RandomForestClassifier(n_estimators=3), id="bare-estimator"),
        pytest.param(
            Pipeline(
                [
                    ("preprocess", ColumnTransformer([], remainder="passthrough")),
                    ("model", LogisticRegression()),
                ]
            ),
            id="passthrough",
        ),
    ],
)
def test_other_layouts_are_served_as_they_are(model):
    schema = schema_for("classification")
    df = synthetic_frame(120)
    X = df[["x1", "x2"]].fillna(0)
    model.fit(X, df["target"])
    assert serving_model(model, schema) is model


def test_probe_rows_reach_every_category_and_missing_values(churn):
    schema = churn[0]
    probe = probe_frame(schema)
    contract = schema.feature("contract")
    assert set(contract.categories) < set(probe["contract"].dropna())
    assert probe.isna().any().all()


def test_faster_than_sklearn_for_a_forest(churn):
    """The point of it: a 100-record batch costs less than through sklearn."""
    schema, X_train, y, X = churn
    model = _fit("random_forest", schema, X_train, y, n_estimators=100)
    fast = serving_model(model, schema)
    batch = X.head(100)

    def best(fn):
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best(fast.predict_proba) < 0.6 * best(model.predict_proba)
