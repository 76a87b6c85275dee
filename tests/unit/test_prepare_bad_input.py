"""The bad-input table (tests/support/bad_tables.py) through read_table + prepare, and random frames.

Every case: a UserError whose one-line message names the column/row/flag and
the rule. Random frames (hypothesis): prepare returns valid outputs or raises
UserError, never anything else.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from kfp_automl.components.prepare.prepare import Options, prepare
from kfp_automl.components.prepare.profile import build_profile
from kfp_automl.errors import UserError
from kfp_automl.runtime.records import check_records, records_to_frame
from kfp_automl.runtime.transformers import build_preprocessor
from kfp_automl.tables.io import read_table
from tests.support.bad_tables import CASES, unicode_frame


def _options(args: list[str]) -> Options:
    opts = Options()
    for flag, value in zip(args[::2], args[1::2], strict=True):
        key = flag.removeprefix("--").replace("-", "_")
        if key in ("time_column", "group_column"):
            setattr(opts, key, value)
        else:
            getattr(opts, key).append(value)
    return opts


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_table_gets_one_clear_line(case, tmp_path):
    path = case.write(tmp_path)
    with pytest.raises(UserError) as info:
        df = read_table(path)
        prepare(df, case.target, options=_options(case.args))
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    for word in case.words:
        assert word in message, (word, message)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_cheap_check_finds_the_same_mistake_prepare_finds(case, tmp_path, monkeypatch):
    """The CLI's check before a run: prepare's message, without prepare's leakage guard."""
    from kfp_automl.components.prepare import prepare as module

    def no_guard(*args, **kwargs):
        raise AssertionError("check() must not run the leakage guard")

    path = case.write(tmp_path)
    try:
        df = read_table(path)
    except UserError:
        return  # a reading mistake: read_table's, before either
    with pytest.raises(UserError) as full:
        prepare(df, case.target, options=_options(case.args))
    monkeypatch.setattr(module, "association", no_guard)
    with pytest.raises(UserError) as cheap:
        module.check(df, case.target, options=_options(case.args))
    assert str(cheap.value) == str(full.value)


def test_the_cheap_check_passes_a_good_table_without_the_leakage_guard(monkeypatch):
    from kfp_automl.components.prepare import prepare as module
    from tests.support.bad_tables import good_frame

    monkeypatch.setattr(module, "association", None)  # would fail if called
    checked = module.check(good_frame(), "label")
    assert checked.task == "classification" and len(checked.y) == 120


def test_wrong_delimiter_is_detected_and_noted(tmp_path):
    path = tmp_path / "semi.csv"
    frame = unicode_frame()
    frame.to_csv(path, sep=";", index=False)
    df = read_table(path)
    assert list(df.columns) == list(frame.columns)
    s = prepare(df, "Zielgröße").schema
    assert any("';'-separated" in w for w in s.warnings)


def test_all_nan_column_is_dropped_with_a_warning_not_an_error():
    df = unicode_frame().assign(blank=np.nan)
    s = prepare(df, "Zielgröße").schema
    assert {"name": "blank", "reason": "every value is missing"} in s.dropped
    assert "column 'blank' is empty: dropped" in s.warnings


def test_unicode_column_names_work_from_file_to_serving(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    path = tmp_path / "unicode.parquet"
    unicode_frame().to_parquet(path, index=False)
    p = prepare(read_table(path), "Zielgröße")
    names = p.schema.names
    assert names == ["größe", "価格 (円)", "😀 mood"]
    json.loads(json.dumps(p.schema.to_dict(), ensure_ascii=False))
    assert set(build_profile(p.train, p.schema).features) == set(names)
    model = Pipeline(
        [("preprocess", build_preprocessor(p.schema)), ("model", LogisticRegression())]
    )
    model.fit(p.train[names], p.train["Zielgröße"])
    records = [{"größe": 0.3, "価格 (円)": "安い", "😀 mood": "good"}]
    check_records(records, p.schema)
    assert model.predict(records_to_frame(records, p.schema))[0] in ("ja", "nein")


# ---- random frames --------------------------------------------------------------------------

_values = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["a", "b", "yes", "no", "2024-01-02", "x y z w v"]),
    st.booleans(),
)


def _column(kind: str, name: str):
    spec = {
        "int": (int, st.integers(-3, 3)),
        "float": (float, st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")))),
        "text": (object, st.sampled_from(["a", "b", "c", None])),
        "mixed": (object, _values),
        "bool": (bool, st.booleans()),
    }[kind]
    return hpd.column(name=name, dtype=spec[0], elements=spec[1])


@st.composite
def random_tables(draw):
    kinds = draw(
        st.lists(st.sampled_from(["int", "float", "text", "mixed", "bool"]), min_size=1, max_size=5)
    )
    n = draw(st.integers(0, 160))
    cols = [_column(k, f"c{i}") for i, k in enumerate(kinds)]
    df = draw(hpd.data_frames(cols, index=hpd.range_indexes(min_size=n, max_size=n)))
    target = draw(
        st.sampled_from(
            [
                st.sampled_from(["p", "q"]),
                st.sampled_from(["p", "q", None]),
                st.floats(-100, 100),
                st.integers(0, 2),
                st.just("only"),
            ]
        )
    )
    df["y"] = draw(st.lists(target, min_size=len(df), max_size=len(df)))
    return df


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_tables())
def test_random_frames_give_valid_outputs_or_a_user_error(df):
    try:
        p = prepare(df, "y")
    except UserError as exc:
        assert str(exc) and len(str(exc).splitlines()) == 1
        return
    s = p.schema
    names = s.names
    assert names and s.task in ("classification", "regression")
    for part in (p.train, p.valid, p.test):
        assert len(part) > 0 and list(part.columns) == [*names, "y"]
        assert part["y"].notna().all()
    assert s.rows["train"] + s.rows["valid"] + s.rows["test"] <= len(df)
    json.dumps(s.to_dict(), allow_nan=False)
    profile = build_profile(p.train, s)
    json.dumps(profile.to_dict(), allow_nan=False)
    pre = build_preprocessor(s)
    out = pre.fit_transform(p.train[names], p.train["y"])
    assert np.isfinite(out).all()
    assert np.isfinite(pre.transform(p.test[names])).all()


def test_random_frame_strategy_reaches_both_outcomes():
    """The property above must see successes as well as errors, or it proves little."""
    outcomes = set()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    @given(random_tables())
    def probe(df):
        try:
            prepare(df, "y")
            outcomes.add("ok")
        except UserError:
            outcomes.add("error")

    probe()
    assert outcomes == {"ok", "error"}


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_tables(), st.sampled_from(["csv", "jsonl", "parquet"]))
def test_random_frames_through_a_file_give_outputs_or_a_user_error(tmp_path_factory, df, fmt):
    path = tmp_path_factory.mktemp("frames") / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(path)
    try:
        p = prepare(read_table(path), "y")
    except UserError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert len(p.train) and len(p.valid) and len(p.test)
    json.dumps(p.schema.to_dict())
