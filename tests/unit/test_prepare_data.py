"""Prepare on messy tables: roles, overrides, cleaning, leakage, splits, schema, profile, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kfp_automl.components.prepare.prepare import Options, prepare, run
from kfp_automl.components.prepare.profile import build_profile
from kfp_automl.errors import UserError
from kfp_automl.files import read_json
from kfp_automl.runtime.drift import bin_index, categorical_bins, column_bin_index
from kfp_automl.runtime.records import check_records
from tests.support.frames import messy


def _by_name(schema):
    """Each feature as the schema file writes it (JSON), by name."""
    features = schema.to_dict()["features"] if hasattr(schema, "to_dict") else schema["features"]
    return {f["name"]: f for f in features}


def test_roles_are_inferred_and_every_decision_recorded():
    p = prepare(messy(), "churn")
    s = p.schema.to_dict()
    feats = _by_name(s)
    assert {n: f["role"] for n, f in feats.items()} == {
        "tenure": "numeric",
        "plan": "categorical",
        "city": "categorical",
        "paperless": "boolean",
        "signed_up": "datetime",
        "comment": "text",
    }
    assert {n: f["kind"] for n, f in feats.items()}["paperless"] == "categorical"
    dropped = {d["name"]: d["reason"] for d in s["dropped"]}
    assert dropped["row_id"].startswith("identifier")
    assert dropped["customer"].startswith("identifier")
    assert dropped["country"].startswith("constant")
    assert dropped["empty"] == "every value is missing"
    assert dropped["outcome_code"].startswith("leakage")
    assert any("outcome_code" in w and "leakage" in w for w in s["warnings"])
    decided = {(d["column"], d["action"]) for d in s["decisions"]}
    assert ("city", "encoding") in decided and ("tenure", "imputation") in decided
    assert ("comment", "role text") in decided and ("(all)", "split") in decided
    assert s["required"] == list(feats)
    assert feats["plan"]["categories"] == sorted(
        feats["plan"]["categories"], key=lambda c: -(messy()["plan"] == c).sum()
    )
    assert feats["signed_up"]["min"] >= "2021-01-01"
    assert 0 <= feats["tenure"]["association"] < 0.98
    for part in (p.train, p.valid, p.test):
        assert list(part.columns) == [*feats, "churn"]
    json.dumps(s)


def test_overrides_from_flags_and_schema_file(tmp_path):
    df = messy()
    spec = tmp_path / "roles.yaml"
    spec.write_text("columns:\n  tenure: categorical\n  paperless: drop\ndrop: [comment]\n")
    opts = Options(numeric=["tenure"], datetime=[], text=[], schema_file=str(spec), drop=["city"])
    s = prepare(df, "churn", options=opts).schema.to_dict()
    feats = _by_name(s)
    assert feats["tenure"]["role"] == "numeric"  # the flag wins over the file
    assert "paperless" not in feats and "comment" not in feats and "city" not in feats
    reasons = {d["name"]: d["reason"] for d in s["dropped"]}
    assert reasons["city"] == "dropped on request"
    json_spec = tmp_path / "roles.json"
    json_spec.write_text(json.dumps({"columns": {"plan": "text"}}))
    assert (
        _by_name(prepare(df, "churn", options=Options(schema_file=str(json_spec))).schema)["plan"][
            "role"
        ]
        == "text"
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (Options(drop=["nope"]), r"--drop names column 'nope', which is not in the table"),
        (Options(numeric=["churn"]), r"--numeric names the target column 'churn'"),
        (Options(numeric=["plan"], categorical=["plan"]), r"column 'plan' is given two roles"),
        (Options(numeric=["plan"]), r"--numeric plan: no value of column 'plan' is a number"),
        (Options(datetime=["plan"]), r"column 'plan' is not a date/time column: row 1 has 'basic'"),
        (Options(time_column="nope"), r"--time-column 'nope' is not a column"),
        (Options(time_column="plan"), r"--time-column 'plan' must hold dates/times or numbers"),
        (Options(group_column="country"), r"--group-column 'country' has 1 groups"),
        (Options(time_column="tenure", group_column="plan"), r"cannot be combined"),
    ],
)
def test_bad_overrides_name_the_flag_and_column(options, match):
    with pytest.raises(UserError, match=match):
        prepare(messy(), "churn", options=options)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("- a\n- b\n", r"must be a mapping"),
        ("columns: [a]\n", r"'columns' must map"),
        ("columns: {plan: colour}\n", r"unknown column role 'colour'"),
        ("columns: {plan: [\n", r"not valid YAML/JSON"),
    ],
)
def test_bad_schema_file(tmp_path, content, match):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        prepare(messy(), "churn", options=Options(schema_file=str(path)))
    with pytest.raises(UserError, match=r"--schema-file .* cannot be read"):
        prepare(messy(), "churn", options=Options(schema_file=str(tmp_path / "none.yaml")))


def test_repeated_rows_are_kept_on_one_side_and_missing_targets_dropped():
    df = messy()
    df = pd.concat([df, df.iloc[:25], df.iloc[:10]], ignore_index=True)  # 35 repeats
    df.loc[[100, 101, 102], "churn"] = None
    p = prepare(df, "churn")
    s = p.schema.to_dict()
    assert s["rows"]["duplicates"] == 35 and s["rows"]["missing_target"] == 3
    assert not s["rows"]["duplicates_dropped"]
    assert s["rows"]["train"] + s["rows"]["valid"] + s["rows"]["test"] == len(df) - 3
    # a row and its copies are in one split only: never scored on a copy of a training row
    sides = [set(map(tuple, part.astype(str).to_numpy())) for part in (p.train, p.valid, p.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    kept = next(d for d in s["decisions"] if d["action"] == "kept repeated rows")
    assert "35 rows repeat an earlier row" in kept["reason"]


def test_drop_duplicates_drops_repeats_and_counts_them():
    df = messy()
    df = pd.concat([df, df.iloc[:25]], ignore_index=True)
    df.loc[[100, 101, 102], "churn"] = None
    s = prepare(df, "churn", options=Options(drop_duplicates=True)).schema.to_dict()
    assert s["rows"]["duplicates"] == 25 and s["rows"]["missing_target"] == 3
    assert s["rows"]["duplicates_dropped"] == 1
    assert s["rows"]["train"] + s["rows"]["valid"] + s["rows"]["test"] == len(df) - 28


def test_regression_leak_and_monotone_copy_are_dropped():
    r = np.random.default_rng(3)
    df = pd.DataFrame({"x": r.normal(size=800), "z": r.normal(size=800)})
    df["price"] = 3 * df["x"] + r.normal(size=800)
    df["price_eur"] = df["price"] * 0.9 + 1  # the target in another unit
    s = prepare(df, "price").schema.to_dict()
    assert [f["name"] for f in s["features"]] == ["x", "z"]
    assert s["dropped"][0]["name"] == "price_eur" and "leakage" in s["dropped"][0]["reason"]


def test_time_split_puts_the_latest_rows_in_test():
    df = messy()
    p = prepare(df, "churn", options=Options(time_column="signed_up"))
    t = {k: pd.to_datetime(getattr(p, k)["signed_up"]) for k in ("train", "valid", "test")}
    assert t["train"].max() <= t["valid"].min() and t["valid"].max() <= t["test"].min()
    assert p.schema.split["strategy"] == "time"


def test_group_split_never_shares_a_group():
    df = messy()
    df["household"] = np.arange(len(df)) // 4
    p = prepare(df, "churn", options=Options(group_column="household"))
    assert "household" not in _by_name(p.schema)
    groups = {}
    original = df.drop_duplicates(subset=[c for c in df.columns if c != "household"])
    for k in ("train", "valid", "test"):
        part = getattr(p, k)
        merged = part.merge(
            original[["tenure", "city", "comment", "household"]], on=["tenure", "city", "comment"]
        )
        groups[k] = set(merged["household"])
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["valid"])
    again = prepare(df, "churn", options=Options(group_column="household"))
    pd.testing.assert_frame_equal(p.test, again.test)  # seeded


def test_profile_has_counts_edges_and_target_and_matches_serving_bins():
    p = prepare(messy(), "churn")
    profile = build_profile(p.train, p.schema)
    tenure = profile.features["tenure"]
    assert sum(tenure.counts) == len(p.train) and len(tenure.edges) == len(tenure.bins) - 2
    assert tenure.counts[-1] == int(p.train["tenure"].isna().sum())
    assert set(profile.unmonitored) == {"signed_up", "comment"}
    assert "paperless" in profile.features  # booleans are binned like categories
    assert sum(profile.target.counts) == len(p.train)
    city = p.train["city"]
    spec = categorical_bins(city)
    np.testing.assert_array_equal(column_bin_index(city, spec), bin_index(city, spec))


def test_serving_accepts_records_shaped_like_the_schema():
    s = prepare(messy(), "churn").schema
    record = {
        "tenure": 3,
        "plan": "pro",
        "city": "town1",
        "paperless": True,
        "signed_up": "2022-05-01",
        "comment": "ok",
    }
    check_records([record, {**record, "tenure": None}], s)


def _paths(out):
    return {f"{k}_path": str(out[k]) for k in ("train", "valid", "test", "schema", "profile")}


def test_run_writes_every_output_and_nothing_on_error(tmp_path):
    data = tmp_path / "t.csv"
    messy().to_csv(data, index=False)
    out = {
        k: tmp_path / "out" / k
        for k in ("train", "valid", "test", "schema", "profile", "report.html", "summary.md")
    }
    schema = run(
        data=str(data),
        target="churn",
        **_paths(out),
        report_path=str(out["report.html"]),
        summary_path=str(out["summary.md"]),
    )
    assert all(p.exists() for p in out.values())
    assert read_json(out["schema"]) == json.loads(json.dumps(schema.to_dict()))
    html = out["report.html"].read_text()
    for section in (
        "overview",
        "warnings",
        "target",
        "columns",
        "distributions",
        "dropped",
        "decisions",
    ):
        assert f'<section id="{section}">' in html
    assert "outcome_code" in html and "leakage" in html and html.count("<img") >= 6
    md = out["summary.md"].read_text()
    assert "## Warnings" in md and "`outcome_code`: leakage" in md
    bad = tmp_path / "bad"
    with pytest.raises(UserError):
        run(
            data=str(data),
            target="nope",
            **_paths({k: bad / k for k in ("train", "valid", "test", "schema", "profile")}),
            report_path=str(bad / "r.html"),
            summary_path=str(bad / "s.md"),
        )
    assert not bad.exists() or not any(bad.iterdir())


def test_infinite_numbers_become_missing_with_a_warning():
    df = messy()
    df["ratio"] = np.random.default_rng(2).normal(size=len(df))
    df.loc[[10, 20], "ratio"] = [np.inf, -np.inf]
    s = prepare(df, "churn").schema
    ratio = _by_name(s)["ratio"]
    assert np.isfinite([ratio["min"], ratio["max"]]).all()
    assert any("'ratio': 2 infinite values (row 11: inf)" in w for w in s.warnings)
    json.loads(json.dumps(s.to_dict(), allow_nan=False))
    profile = build_profile(prepare(df, "churn").train, s)
    json.dumps(profile.to_dict(), allow_nan=False)


def test_clipping_and_rare_grouping_are_reported_from_the_train_rows():
    df = messy()
    df.loc[5, "tenure"] = 10_000.0  # an outlier
    df.loc[[7, 8], "plan"] = "legacy"  # a rare category
    p = prepare(df, "churn")
    decided = {(d["column"], d["action"]): d["reason"] for d in p.schema.decisions}
    assert decided[("tenure", "clipping")].startswith("clipped to [")
    if 10_000.0 in set(p.train["tenure"]):
        assert "train values beyond" in decided[("tenure", "clipping")]
    grouping = decided[("plan", "grouping")]
    assert "'legacy'" in grouping and "grouped as '(rare)'" in grouping


def test_placeholders_in_a_number_column_are_missing_values():
    df = messy()
    df["income"] = np.random.default_rng(4).normal(50, 5, size=len(df)).round(1).astype(object)
    df.loc[[3, 9], "income"] = "?"
    df.loc[12, "income"] = " - "
    s = prepare(df, "churn").schema
    assert _by_name(s)["income"]["role"] == "numeric"
    assert _by_name(s)["income"]["missing_rate"] > 0
    assert any("'income': 3 placeholder values ('?', ' - ')" in w for w in s.warnings)
