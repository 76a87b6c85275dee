"""kfp_automl/runtime/transformers.py: the in-model preprocessing, fitted on train only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, TargetEncoder

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.runtime.records import records_to_frame
from kfp_automl.runtime.transformers import (
    RARE,
    BooleanEncoder,
    CategoryCleaner,
    Clipper,
    DatetimeFeatures,
    TextFeatures,
    boolean_values,
    build_preprocessor,
    category_strings,
)

rng = np.random.default_rng(0)


def _feature(name, role, kind=None, **extra):
    return {
        "name": name,
        "role": role,
        "kind": kind or ("numeric" if role == "numeric" else "categorical"),
        **extra,
    }


def _mixed(n: int = 400) -> tuple[pd.DataFrame, pd.Series, dict]:
    r = np.random.default_rng(1)
    x = r.normal(size=n)
    x[::17] = np.nan
    city = r.choice([f"city{i}" for i in range(40)], size=n)
    colour = r.choice(["red", "blue", "green"], size=n).astype(object)
    colour[::23] = None
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(r.integers(0, 900, size=n), unit="D")
    words = np.array(
        ["cheap fast delivery", "slow service again", "great product love it", "broken on arrival"]
    )
    df = pd.DataFrame(
        {
            "x": x,
            "flag": r.choice(["Yes", "No"], size=n),
            "city": city,
            "colour": colour,
            "when": when,
            "note": words[r.integers(0, 4, size=n)],
        }
    )
    y = pd.Series(np.where(np.nan_to_num(x) + (df["flag"] == "Yes") > 0.5, "a", "b"))
    schema = Schema.from_dict(
        {
            "task": "classification",
            "target": "y",
            "features": [
                _feature("x", "numeric"),
                _feature("flag", "boolean"),
                _feature("city", "categorical", n_categories=40),
                _feature("colour", "categorical", n_categories=3),
                _feature("when", "datetime"),
                _feature("note", "text"),
            ],
        }
    )
    return df, y, schema


def test_category_strings_canonical_and_missing():
    s = category_strings(pd.Series([3.0, 2.5, np.nan, 1e20]))
    assert s.tolist()[:2] == ["3", "2.5"] and pd.isna(s.iloc[2])
    assert category_strings(pd.Series([True, None], dtype=object)).tolist()[0] == "True"
    assert category_strings(pd.Series([1, 2])).tolist() == ["1", "2"]


def test_boolean_values_reads_words_numbers_and_bools():
    got = boolean_values(pd.Series(["Yes", "no", "TRUE", "0", None, "maybe"]))
    np.testing.assert_array_equal(got[:4], [1, 0, 1, 0])
    assert np.isnan(got[4]) and np.isnan(got[5])
    np.testing.assert_array_equal(boolean_values(pd.Series([True, False])), [1.0, 0.0])


def test_clipper_learns_bounds_on_fit_rows_only():
    train = pd.DataFrame({"v": np.arange(1000, dtype=float)})
    clip = Clipper((0.01, 0.99)).fit(train)
    out = clip.transform(pd.DataFrame({"v": [-1e9, 500.0, 1e9, np.nan, np.inf]}))
    assert out[0, 0] == pytest.approx(np.quantile(np.arange(1000), 0.01))
    assert out[1, 0] == 500.0
    assert out[2, 0] == pytest.approx(np.quantile(np.arange(1000), 0.99))
    assert np.isnan(out[3, 0]) and np.isnan(out[4, 0])  # inf is treated as missing


def test_category_cleaner_groups_rare_and_unseen():
    train = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 50 + ["r"] * 2 + [None] * 3})
    cleaner = CategoryCleaner().fit(train)
    out = cleaner.transform(pd.DataFrame({"c": ["a", "r", "zzz", None]}))
    assert out[:, 0].tolist() == ["a", RARE, RARE, "(missing)"]


def test_datetime_features_parts_that_vary_and_text_input():
    train = pd.DataFrame({"t": pd.date_range("2020-01-01", periods=400, freq="D")})
    dt = DatetimeFeatures().fit(train)
    names = dt.get_feature_names_out().tolist()
    assert "t_year" in names and "t_month" in names and "t_weekday" in names
    assert "t_hour" not in names  # every time is midnight in train
    typed = dt.transform(train.head(3))
    as_text = dt.transform(pd.DataFrame({"t": ["2020-01-01", "2020-01-02T00:00:00", "2020-01-03"]}))
    np.testing.assert_allclose(typed, as_text)
    assert np.isnan(dt.transform(pd.DataFrame({"t": ["not a date"]}))).all()


def test_boolean_encoder_and_text_features_shapes():
    enc = BooleanEncoder().fit(pd.DataFrame({"b": ["yes", "no"]}))
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"b": ["no", True]}))[:, 0], [0, 1])
    docs = pd.DataFrame({"d": ["red apple pie", "green apple", "blue sky", None] * 10})
    text = TextFeatures(n_components=2).fit(docs)
    assert text.transform(docs).shape == (40, 2)
    assert text.get_feature_names_out().tolist() == ["d_text0", "d_text1"]


def test_build_preprocessor_groups_and_encoders():
    df, y, schema = _mixed()
    pre = build_preprocessor(schema)
    names = [name for name, _, _ in pre.transformers]
    assert names == [
        "numeric",
        "boolean",
        "categorical_city",
        "categorical_colour",
        "datetime",
        "text",
    ]
    steps = {name: t for name, t, _ in pre.transformers}
    assert isinstance(steps["categorical_city"].steps[-1][1], TargetEncoder)  # 40 > 20 categories
    assert isinstance(steps["categorical_colour"].steps[-1][1], OneHotEncoder)
    onehot = build_preprocessor(schema, categorical_encoding="onehot")
    assert isinstance(
        dict((n, t) for n, t, _ in onehot.transformers)["categorical_city"].steps[-1][1],
        OneHotEncoder,
    )
    with pytest.raises(UserError, match="unknown categorical encoding 'hash'"):
        build_preprocessor(schema, categorical_encoding="hash")


def test_target_encoding_is_cross_fitted_inside_the_pipeline():
    # fit_transform encodes each training row with the other folds' targets, so a category
    # with a random target does not look predictive on the rows it was learned from
    n = 600
    df = pd.DataFrame({"shop": [f"s{i % 30}" for i in range(n)]})
    y = pd.Series(rng.choice(["a", "b"], size=n))
    schema = Schema.from_dict(
        {
            "task": "classification",
            "target": "y",
            "features": [_feature("shop", "categorical", n_categories=30)],
        }
    )
    pre = build_preprocessor(schema, categorical_encoding="target")
    crossed = pre.fit_transform(df, y)
    plain = pre.transform(df)  # the encoding learned on all rows
    assert not np.allclose(crossed, plain)
    by_shop = pd.DataFrame({"shop": df["shop"], "v": crossed[:, 0]}).groupby("shop")["v"].nunique()
    assert (by_shop > 1).all()  # one category gets different values in different folds


def test_pipeline_scores_training_frame_and_serving_records_identically():
    df, y, schema = _mixed()
    model = Pipeline(
        [
            ("preprocess", build_preprocessor(schema, scale_numeric=True)),
            ("model", LogisticRegression(max_iter=500)),
        ]
    )
    model.fit(df.iloc[:300], y.iloc[:300])
    rows = df.iloc[300:]
    records = []
    for rec in rows.to_dict(orient="records"):
        rec = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        rec["when"] = rec["when"].isoformat()  # JSON has no datetime type
        rec["flag"] = rec["flag"] == "Yes"  # a JSON boolean for a yes/no column
        records.append(rec)
    served = records_to_frame(records, schema)
    np.testing.assert_allclose(model.predict_proba(rows), model.predict_proba(served), atol=1e-9)


def test_unseen_and_missing_values_at_predict_time_do_not_fail():
    df, y, schema = _mixed()
    model = Pipeline(
        [
            ("preprocess", build_preprocessor(schema, scale_numeric=True)),
            ("model", LogisticRegression(max_iter=500)),
        ]
    )
    model.fit(df, y)
    odd = pd.DataFrame(
        {
            "x": [np.nan],
            "flag": ["maybe"],
            "city": ["atlantis"],
            "colour": [None],
            "when": ["garbage"],
            "note": [None],
        }
    )
    proba = model.predict_proba(odd)
    assert proba.shape == (1, 2) and np.isfinite(proba).all()


def test_old_schema_without_roles_still_builds():
    schema = Schema.from_dict(  # version 1: no roles
        {
            "target": "y",
            "task": "regression",
            "features": [
                {"name": "a", "kind": "numeric"},
                {"name": "b", "kind": "categorical", "n_categories": 2},
            ],
        }
    )
    X = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0] * 10, "b": ["u", "v"] * 20})
    out = build_preprocessor(schema).fit_transform(X, np.arange(40.0))
    assert out.shape[0] == 40 and np.isfinite(out).all()


def test_datetime_values_iso_guessed_layout_and_mixed():
    from kfp_automl.runtime.transformers import datetime_values

    iso = datetime_values(pd.Series(["2024-01-02", "2024-01-02T10:00:00+02:00", None]))
    assert iso.tolist()[:2] == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-02 08:00")]
    dotted = datetime_values(pd.Series(["27.07.2020", "01.12.2021", "31.12.2021"] * 1000))
    assert dotted.iloc[0] == pd.Timestamp("2020-07-27") and dotted.notna().all()
    mixed = datetime_values(pd.Series(["27.07.2020", "2021-03-04", "March 5, 2022", "nope"]))
    assert mixed.tolist()[:3] == [
        pd.Timestamp(d) for d in ("2020-07-27", "2021-03-04", "2022-03-05")
    ]
    assert pd.isna(mixed.iloc[3])
