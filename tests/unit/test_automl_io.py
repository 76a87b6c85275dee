"""kfp_automl/runtime/records.py: request records, model input, answers, hash-checked loading."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from kfp_automl.components.tune.families import build_model
from kfp_automl.runtime.model_file import (
    MODEL_FILE,
    ModelIntegrityError,
    load_model,
    save_model,
    sha256_file,
)
from kfp_automl.runtime.records import (
    RecordError,
    check_records,
    coerce_frame,
    parse_request,
    predict_frame,
    prediction_records,
    records_to_frame,
)
from tests.support.frames import schema_for, synthetic_frame

SCHEMA = schema_for("classification")  # x1, x2 numeric; colour categorical


def _rec(**overrides):
    rec = {"x1": 0.5, "x2": 3, "colour": "red"}
    rec.update(overrides)
    return rec


def _without(field):
    rec = _rec()
    del rec[field]
    return rec


# --- records_to_frame ------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "index", "field", "match"),
    [
        pytest.param([], None, None, r"'records' is empty", id="empty-list"),
        pytest.param(
            [_rec(), "x1=3"], 1, None, r"record 1: expected an object.*got str", id="string-record"
        ),
        pytest.param([[0.5, 3, "red"]], 0, None, r"got list", id="list-record"),
        pytest.param([None], 0, None, r"got NoneType", id="null-record"),
        pytest.param(
            [_rec(), _rec(), _without("x2")],
            2,
            "x2",
            r"field 'x2': required field is missing",
            id="missing-numeric",
        ),
        pytest.param(
            [_without("colour")],
            0,
            "colour",
            r"required field is missing",
            id="missing-categorical",
        ),
        pytest.param(
            [_rec(x1="1.5")],
            0,
            "x1",
            r"expected a number or null, got '1.5'",
            id="string-for-number",
        ),
        pytest.param(
            [_rec(), _rec(x2=True)],
            1,
            "x2",
            r"expected a number or null, got True",
            id="bool-for-number",
        ),
        pytest.param([_rec(x1=[1.0])], 0, "x1", r"expected a number", id="list-for-number"),
        pytest.param([_rec(x1=float("nan"))], 0, "x1", r"finite", id="nan"),
        pytest.param([_rec(x1=float("inf"))], 0, "x1", r"finite", id="inf"),
        pytest.param([_rec(), _rec(x2=float("-inf"))], 1, "x2", r"finite", id="minus-inf"),
        pytest.param(
            [_rec(colour={"name": "red"})],
            0,
            "colour",
            r"expected a string or null, got dict",
            id="dict-for-string",
        ),
        pytest.param([_rec(colour=["red"])], 0, "colour", r"got list", id="list-for-string"),
    ],
)
def test_records_to_frame_rejects(records, index, field, match):
    with pytest.raises(RecordError, match=match) as info:
        records_to_frame(records, SCHEMA)
    err = info.value
    assert (err.index, err.field) == (index, field)
    assert err.as_dict() == {
        "record": index,
        "field": field,
        "problem": err.problem,
        "reason": err.reason,
    }
    expected_reason = (
        "missing_field"
        if "missing" in match
        else "non_finite"
        if "finite" in match
        else "wrong_type"
    )
    if not records:
        expected_reason = "empty"
    assert err.reason == expected_reason
    json.dumps(err.as_dict())  # becomes the body of a 400 answer


def test_records_to_frame_rejects_integer_too_large_for_a_float():
    """BUG (kfp_automl/runtime/records.py:records_to_frame): a JSON integer beyond
    float range (json.loads('1' + '0' * 400) is a Python int) passes the checks and
    then pd.to_numeric raises OverflowError, which the service turns into a 500
    instead of a 400 naming the record and field."""
    huge = json.loads("1" + "0" * 400)
    with pytest.raises(RecordError) as info:
        records_to_frame([_rec(), _rec(x2=huge)], SCHEMA)
    assert (info.value.index, info.value.field) == (1, "x2")


def test_records_to_frame_accepts_nulls_as_missing():
    frame = records_to_frame([_rec(x1=None), _rec(colour=None), _rec(x2=None, x1=-1)], SCHEMA)
    assert list(frame.columns) == ["x1", "x2", "colour"]
    assert frame["x1"].isna().tolist() == [True, False, False]
    assert frame["x2"].isna().tolist() == [False, False, True]
    # a null category must stay *missing* (imputed like in training), not the text "None"/"nan"
    assert frame["colour"].isna().tolist() == [False, True, False]
    assert frame["colour"].iloc[0] == "red"
    assert frame["x1"].dtype == float and frame["x2"].dtype == float


def test_records_to_frame_ignores_unknown_fields_and_keeps_schema_order():
    frame = records_to_frame(
        [{"colour": "blue", "extra": [1, 2], "x2": 1, "x1": 2.0, "id": "abc"}], SCHEMA
    )
    assert list(frame.columns) == ["x1", "x2", "colour"]
    assert frame.iloc[0].tolist() == [2.0, 1.0, "blue"]


def test_records_to_frame_non_string_categories_become_text():
    frame = records_to_frame([_rec(colour=3), _rec(colour=True), _rec(colour=2.5)], SCHEMA)
    assert frame["colour"].tolist() == ["3", "True", "2.5"]


# --- coerce_frame ----------------------------------------------------------


def test_coerce_frame_missing_column():
    df = pd.DataFrame({"x1": [1.0], "other": [2]})
    with pytest.raises(RecordError) as info:
        coerce_frame(df, SCHEMA)
    assert info.value.index is None
    assert info.value.field == "x2"  # the first missing one, in schema order
    assert "2 missing in all" in str(info.value)


def test_coerce_frame_non_numeric_value_names_row():
    df = pd.DataFrame({"x1": ["1.5", "2", "abc", "4"], "x2": [1, 2, 3, 4], "colour": list("abcd")})
    with pytest.raises(RecordError, match=r"expected a number, got 'abc'") as info:
        coerce_frame(df, SCHEMA)
    assert (info.value.index, info.value.field) == (2, "x1")


def test_coerce_frame_converts_types_and_drops_extra_columns():
    df = pd.DataFrame(
        {
            "colour": ["red", None, "blue"],
            "x1": ["1.5", None, "-2"],  # numeric text, e.g. from a CSV of strings
            "x2": [True, False, True],
            "target": ["y", "n", "y"],
        },
        index=[10, 11, 12],
    )
    out = coerce_frame(df, SCHEMA)
    assert list(out.columns) == ["x1", "x2", "colour"]
    assert list(out.index) == [10, 11, 12]
    assert out["x1"].iloc[0] == 1.5 and math.isnan(out["x1"].iloc[1]) and out["x1"].iloc[2] == -2
    assert out["x2"].tolist() == [1.0, 0.0, 1.0]
    assert out["colour"].isna().tolist() == [False, True, False]


# --- predictions -----------------------------------------------------------


@pytest.fixture(scope="module")
def multiclass_model():
    df = synthetic_frame(240, "multiclass", seed=3)
    model = build_model(schema_for("multiclass"), {"family": "linear"})
    return model.fit(df.drop(columns=["target"]), df["target"])


def test_predict_frame_classification(multiclass_model):
    X = records_to_frame([_rec(), _rec(x1=-2.0, colour="teal"), _rec(x1=None, colour=None)], SCHEMA)
    out = predict_frame(multiclass_model, X)
    classes = list(multiclass_model.classes_)
    assert classes == ["a", "b", "c"]
    assert list(out.columns) == ["prediction", "proba_a", "proba_b", "proba_c"]
    proba = out[["proba_a", "proba_b", "proba_c"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert out["prediction"].tolist() == [classes[i] for i in proba.argmax(axis=1)]
    assert list(out.index) == list(X.index)


def test_predict_frame_regression_has_no_proba():
    df = synthetic_frame(120, "regression")
    model = build_model(schema_for("regression"), {"family": "linear"})
    model.fit(df.drop(columns=["target"]), df["target"])
    out = predict_frame(model, df.drop(columns=["target"]).head(5))
    assert list(out.columns) == ["prediction"]
    answer = prediction_records(out)
    assert len(answer) == 5 and all(set(r) == {"prediction"} for r in answer)
    assert all(type(r["prediction"]) is float for r in answer)


def test_prediction_records_shape(multiclass_model):
    X = records_to_frame([_rec(), _rec(x1=3.0)], SCHEMA)
    answer = prediction_records(predict_frame(multiclass_model, X))
    assert len(answer) == 2
    for r in answer:
        assert isinstance(r["prediction"], str)
        assert list(r["probabilities"]) == ["a", "b", "c"]  # class names without proba_
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
        assert r["prediction"] == max(r["probabilities"], key=r["probabilities"].get)
    assert json.loads(json.dumps(answer)) == answer  # plain JSON, no numpy types


def test_prediction_records_integer_classes_are_plain_ints():
    result = pd.DataFrame(
        {
            "prediction": np.array([0, 1], dtype=np.int64),
            "proba_0": [0.8, 0.3],
            "proba_1": [0.2, 0.7],
        }
    )
    answer = prediction_records(result)
    assert [type(r["prediction"]) for r in answer] == [int, int]
    assert answer[1]["probabilities"] == {"0": 0.3, "1": 0.7}


@pytest.mark.parametrize(
    ("body", "field", "match"),
    [
        (b"{records", None, "not valid JSON"),
        (b"\xff\xfe", None, "not UTF-8"),
        (b"[1, 2]", "records", "expected an object"),
        (b'{"rows": []}', "records", "expected an object"),
        (b'{"records": {"a": 1}}', "records", "list of records"),
    ],
)
def test_parse_request_rejects_bad_bodies(body, field, match):
    with pytest.raises(RecordError, match=match) as info:
        parse_request(body)
    assert info.value.reason == "bad_json" and info.value.field == field


def test_parse_request_and_check_records_accept_a_good_body():
    records = parse_request(json.dumps({"records": [_rec(), _rec(x1=None)]}).encode())
    assert len(records) == 2
    check_records(records, SCHEMA)  # no error
    with pytest.raises(RecordError) as info:
        check_records([_rec(), {**_rec(), "extra": 1}], SCHEMA, unknown_fields="reject")
    assert (info.value.index, info.value.field, info.value.reason) == (1, "extra", "unknown_field")


def test_save_and_load_model_with_hash(tmp_path, multiclass_model):
    sha = save_model(multiclass_model, tmp_path)
    path = tmp_path / MODEL_FILE
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    assert [p.name for p in tmp_path.iterdir()] == [MODEL_FILE]  # no temp file left behind
    loaded = load_model(tmp_path, sha)
    X = records_to_frame([_rec(), _rec(x1=-1.0)], SCHEMA)
    pd.testing.assert_frame_equal(predict_frame(loaded, X), predict_frame(multiclass_model, X))


def test_load_model_refuses_modified_file(tmp_path, multiclass_model):
    sha = save_model(multiclass_model, tmp_path)
    with open(tmp_path / MODEL_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match=rf"expected {sha[:12]}.*refusing to load"):
        load_model(tmp_path, sha)


def test_load_model_refuses_wrong_hash(tmp_path, multiclass_model):
    sha = save_model(multiclass_model, tmp_path)
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        load_model(tmp_path, wrong)


@pytest.mark.parametrize("sha", ["", None])
def test_load_model_refuses_missing_hash(tmp_path, multiclass_model, sha):
    save_model(multiclass_model, tmp_path)
    with pytest.raises(ModelIntegrityError, match="no hash recorded"):
        load_model(tmp_path, sha)


def test_load_model_checks_hash_before_unpickling(tmp_path):
    # a file that is not a pickle at all: the hash check must fail first, without joblib
    (tmp_path / MODEL_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ModelIntegrityError):
        load_model(tmp_path, "ab" * 32)
