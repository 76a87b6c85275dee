"""components/prepare/prepare.py: task inference, validation, split, column roles, schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kfp_automl.components.prepare.prepare import (
    MAX_CLASSES,
    MIN_ROWS,
    MIN_ROWS_PER_CLASS,
    describe_features,
    infer_task,
    prepare,
    split,
    validate,
)
from kfp_automl.errors import UserError

rng = np.random.default_rng(123)

# --- infer_task ------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "requested", "expected"),
    [
        pytest.param(pd.Series(["yes", "no"] * 30), "auto", "classification", id="strings"),
        pytest.param(pd.Series([True, False] * 30), "auto", "classification", id="bool"),
        pytest.param(pd.Series(rng.normal(size=200)), "auto", "regression", id="continuous-float"),
        pytest.param(pd.Series([0, 1, 2] * 40), "auto", "classification", id="small-int-labels"),
        # integer labels read from a CSV with a missing target come back as floats
        pytest.param(
            pd.Series([0.0, 1.0] * 50), "auto", "classification", id="integral-float-labels"
        ),
        pytest.param(pd.Series(np.arange(200)), "auto", "regression", id="int-many-values"),
        pytest.param(
            pd.Series(rng.normal(size=100)), "classification", "classification", id="forced-clf"
        ),
        pytest.param(pd.Series([0, 1] * 50), "regression", "regression", id="forced-reg"),
    ],
)
def test_infer_task(y, requested, expected):
    assert infer_task(y, requested) == expected


def test_infer_task_regression_on_strings_names_column_and_value():
    y = pd.Series(["high", "low", "high"] * 20, name="grade")
    with pytest.raises(UserError) as info:
        infer_task(y, "regression")
    message = str(info.value)
    assert "'grade'" in message
    assert "'high'" in message or "'low'" in message


def test_infer_task_unknown_task():
    with pytest.raises(
        UserError, match=r"unknown task 'clustering'.*auto.*classification.*regression"
    ):
        infer_task(pd.Series([1.0, 2.0]), "clustering")


# --- validate --------------------------------------------------------------


def _table(n: int, target) -> pd.DataFrame:
    r = np.random.default_rng(n)
    return pd.DataFrame({"x": r.normal(size=n), "c": r.choice(["u", "v"], size=n), "t": target})


@pytest.mark.parametrize(
    ("df", "target", "task", "match"),
    [
        pytest.param(pd.DataFrame({"x": [], "t": []}), "t", "auto", r"no rows", id="empty"),
        pytest.param(
            pd.DataFrame({"alpha": [1, 2], "beta": [3, 4]}),
            "gamma",
            "auto",
            r"target column 'gamma' not found; columns are: alpha, beta",
            id="unknown-target",
        ),
        pytest.param(
            pd.DataFrame({"t": ["a", "b"] * 40}),
            "t",
            "auto",
            r"only the target column 't'",
            id="only-target",
        ),
        pytest.param(
            _table(MIN_ROWS - 1, ["a", "b"] * ((MIN_ROWS - 1) // 2) + ["a"]),
            "t",
            "auto",
            rf"only {MIN_ROWS - 1} rows have a value for target 't'; at least {MIN_ROWS}",
            id="too-few-rows",
        ),
        pytest.param(
            _table(60, ["a", "b"] * 22 + [None] * 16),
            "t",
            "auto",
            r"only 44 rows have a value",  # rows without a target do not count
            id="too-few-rows-after-missing-target",
        ),
        pytest.param(
            _table(60, ["yes"] * 60), "t", "auto", r"single class \('yes'\)", id="single-class"
        ),
        pytest.param(
            _table(60, ["a"] * 30 + ["b"] * 28 + ["c"] * 2),
            "t",
            "auto",
            rf"class 'c' has only 2 rows; every class needs at least {MIN_ROWS_PER_CLASS}",
            id="rare-class",
        ),
        pytest.param(
            _table((MAX_CLASSES + 5) * 3, [f"k{i}" for i in range(MAX_CLASSES + 5)] * 3),
            "t",
            "auto",
            rf"has {MAX_CLASSES + 5} classes \(at most {MAX_CLASSES}\)",
            id="too-many-classes",
        ),
        pytest.param(
            _table(60, ["a", "b"] * 30), "t", "magic", r"unknown task 'magic'", id="bad-task"
        ),
    ],
)
def test_validate_rejects_bad_tables(df, target, task, match):
    with pytest.raises(UserError, match=match):
        validate(df, target, task)


def test_prepare_rejects_a_table_with_only_constant_features():
    df = pd.DataFrame({"row": np.arange(60), "k": [1] * 60, "t": ["a", "b"] * 30})
    with pytest.raises(
        UserError,
        match=r"no usable feature columns besides target 't' \(row: identifier.*k: constant",
    ):
        prepare(df, "t")


def test_validate_unknown_target_lists_at_most_20_columns():
    df = pd.DataFrame({f"col{i}": [1, 2] for i in range(30)})
    with pytest.raises(UserError) as info:
        validate(df, "label")
    message = str(info.value)
    assert "col19" in message and "col20" not in message
    assert message.endswith(", ...")


def test_validate_drops_and_counts_rows_with_missing_target():
    target = ["a", "b"] * 50
    for i in (3, 10, 11, 57, 99):
        target[i] = None
    df = _table(100, target)
    data, task, n_missing = validate(df, "t")
    assert task == "classification"
    assert n_missing == 5
    assert len(data) == 95
    assert data["t"].notna().all()
    assert list(data.index) == list(range(95))
    # the surviving rows are the original ones, in order
    kept = df.loc[df["t"].notna(), "x"].to_numpy()
    np.testing.assert_array_equal(data["x"].to_numpy(), kept)


def test_validate_missing_numeric_target_counts_nan():
    y = rng.normal(size=80)
    y[:4] = np.nan
    data, task, n_missing = validate(_table(80, y), "t")
    assert (task, n_missing, len(data)) == ("regression", 4, 76)


# --- split -----------------------------------------------------------------


def _imbalanced(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    labels = np.array(["a"] * int(n * 0.7) + ["b"] * int(n * 0.2) + ["c"] * int(n * 0.1))
    r = np.random.default_rng(seed)
    r.shuffle(labels)
    return pd.DataFrame({"id": np.arange(n), "x": r.normal(size=n), "t": labels})


def test_split_is_stratified_disjoint_and_complete():
    df = _imbalanced()
    train, valid, test = split(df, "t", "classification", seed=7)
    ids = [set(part["id"]) for part in (train, valid, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(df["id"])
    assert len(train) + len(valid) + len(test) == len(df)
    # 15% / 15% of 1000 rows, give or take sklearn's rounding
    assert abs(len(test) - 150) <= 2 and abs(len(valid) - 150) <= 2
    whole = df["t"].value_counts(normalize=True)
    for part in (train, valid, test):
        share = part["t"].value_counts(normalize=True).reindex(whole.index, fill_value=0)
        assert (share - whole).abs().max() < 0.01, share
    for part in (train, valid, test):
        assert list(part.index) == list(range(len(part)))


def test_split_is_reproducible_per_seed():
    df = _imbalanced()
    first = split(df, "t", "classification", seed=1)
    again = split(df, "t", "classification", seed=1)
    other = split(df, "t", "classification", seed=2)
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert set(first[2]["id"]) != set(other[2]["id"])
    assert set(first[1]["id"]) != set(other[1]["id"])


def test_split_regression_covers_all_rows():
    df = pd.DataFrame({"id": np.arange(300), "t": rng.normal(size=300)})
    train, valid, test = split(df, "t", "regression", seed=0, valid_fraction=0.2, test_fraction=0.1)
    assert sorted(pd.concat([train, valid, test])["id"]) == list(range(300))
    assert abs(len(test) - 30) <= 1 and abs(len(valid) - 60) <= 1


@pytest.mark.parametrize(
    ("valid", "test"), [(0, 0.15), (0.15, 0), (0.5, 0.1), (0.1, 0.7), (-0.1, 0.2)]
)
def test_split_rejects_bad_fractions(valid, test):
    with pytest.raises(UserError, match="between 0 and 0.5"):
        split(_imbalanced(100), "t", "classification", valid_fraction=valid, test_fraction=test)


# --- describe_features -----------------------------------------------------


def _roles_frame(n: int = 60) -> pd.DataFrame:
    num = np.linspace(-3.5, 9.25, n)
    num[::10] = np.nan  # 6 of 60 missing; the extremes -3.5 is among them (index 0)
    return pd.DataFrame(
        {
            "num": num,
            "count": np.arange(n) % 7,
            "colour": ["red"] * 30 + ["blue"] * 20 + ["green"] * 10,
            "const": [7] * n,
            "all_missing": [np.nan] * n,
            "all_none": pd.Series([None] * n, dtype=object),
            "ident": [f"cust-{i:04d}" for i in range(n)],
            "when": pd.date_range("2024-01-01", periods=n, freq="D"),
            "t": ["a", "b"] * (n // 2),
        }
    )


def test_describe_features_roles_and_reasons():
    features, dropped = describe_features(_roles_frame(), "t")
    kept = {f["name"]: f for f in features}
    assert list(kept) == ["num", "count", "colour", "when"]  # column order kept; no target
    reasons = {d["name"]: d["reason"] for d in dropped}
    assert set(reasons) == {"const", "all_missing", "all_none", "ident"}
    assert "constant" in reasons["const"]
    assert "missing" in reasons["all_missing"] and "missing" in reasons["all_none"]
    assert "identifier" in reasons["ident"]
    assert (kept["when"]["role"], kept["when"]["kind"]) == ("datetime", "categorical")
    assert kept["when"]["min"] == "2024-01-01T00:00:00"

    num = kept["num"]
    assert num["kind"] == "numeric"
    assert num["min"] == pytest.approx(np.nanmin(_roles_frame()["num"]))
    assert num["max"] == pytest.approx(9.25)
    assert num["min"] > -3.5  # index 0 (the smallest value) is missing
    assert num["missing_rate"] == pytest.approx(0.1)
    assert "categories" not in num
    assert kept["count"]["kind"] == "numeric"
    assert (kept["count"]["min"], kept["count"]["max"]) == (0.0, 6.0)
    assert kept["count"]["missing_rate"] == 0.0

    colour = kept["colour"]
    assert colour["kind"] == "categorical"
    assert colour["categories"] == ["red", "blue", "green"]  # most frequent first
    assert colour["n_categories"] == 3
    assert "min" not in colour


def test_describe_features_keeps_continuous_numeric_even_if_unique():
    # every value distinct, but a measurement is not an identifier
    df = pd.DataFrame({"x": rng.normal(size=100), "t": ["a", "b"] * 50})
    features, dropped = describe_features(df, "t")
    assert [f["name"] for f in features] == ["x"]
    assert dropped == []


def test_describe_features_keeps_categorical_with_repeats():
    # unique in most but not every row: not an identifier
    values = [f"v{i}" for i in range(59)] + ["v0"]
    df = pd.DataFrame({"c": values, "t": ["a", "b"] * 30})
    features, dropped = describe_features(df, "t")
    assert [f["name"] for f in features] == ["c"]
    assert features[0]["n_categories"] == 59


# --- prepare ---------------------------------------------------------------


def _churn_like(n: int = 400) -> pd.DataFrame:
    r = np.random.default_rng(5)
    tenure = r.integers(0, 72, size=n)
    charges = r.uniform(20, 120, size=n).round(2)
    contract = r.choice(["month", "one_year", "two_year"], size=n)
    churn = np.where((tenure < 12) & (contract == "month") | (r.random(n) < 0.1), "Yes", "No")
    df = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "tenure": tenure,
            "charges": charges,
            "contract": contract,
            "country": "NL",
            "churn": churn,
        }
    )
    df.loc[[4, 40, 123], "churn"] = None
    df.loc[[7, 8], "charges"] = np.nan
    return df


def test_prepare_schema_and_splits():
    df = _churn_like()
    prepared = prepare(df, "churn", seed=3)
    s = prepared.schema.to_dict()  # what the schema file holds
    assert s["task"] == "classification"
    assert s["target"] == "churn"
    assert s["classes"] == ["No", "Yes"]
    rows = s["rows"]
    assert rows["input"] == 400
    assert rows["missing_target"] == 3
    assert rows["train"] + rows["valid"] + rows["test"] == 400 - 3
    for name, part in (
        ("train", prepared.train),
        ("valid", prepared.valid),
        ("test", prepared.test),
    ):
        assert rows[name] == len(part)
        assert part["churn"].notna().all()
    names = [f["name"] for f in s["features"]]
    assert names == ["tenure", "charges", "contract"]
    assert {d["name"] for d in s["dropped"]} == {"customer_id", "country"}
    # splits carry exactly the kept features plus the target
    for part in (prepared.train, prepared.valid, prepared.test):
        assert list(part.columns) == [*names, "churn"]
    json.dumps(s)  # written with write_json, read by other steps: must be plain JSON


def test_prepare_integer_classes_are_plain_json_ints():
    df = _churn_like()
    df["churn"] = df["churn"].map({"No": 0, "Yes": 1})  # floats (NaN present)
    s = prepare(df, "churn").schema.to_dict()
    assert s["task"] == "classification"
    assert s["classes"] == [0, 1]
    assert json.loads(json.dumps(s))["classes"] == [0, 1]


def test_prepare_regression_has_no_classes():
    df = _churn_like().drop(columns=["churn"])
    df["spend"] = df["charges"].fillna(50) * df["tenure"] + rng.normal(size=len(df))
    s = prepare(df, "spend", task="auto").schema.to_dict()
    assert s["task"] == "regression"
    assert "classes" not in s
    assert s["rows"]["missing_target"] == 0
    assert sum(s["rows"][k] for k in ("train", "valid", "test")) == len(df)
