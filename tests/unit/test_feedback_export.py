"""`kfp-automl export-feedback`: a log directory written by the real writer -> a table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from kfp_automl.cli.main import main
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.feedback.export import append_to, feedback_table, parse_since
from kfp_automl.serving.prediction_log import CALLER_FIELD, LogSettings, PredictionLog
from kfp_automl.serving.quality import QualityMetrics
from tests.support.frames import schema_dict, synthetic_frame


@pytest.fixture
def log_dir(tmp_path):
    """A log of 30 predictions, 20 of them labelled (5 of those sent twice)."""
    schema = Schema.from_dict({**schema_dict("classification"), "classes": ["no", "yes"]})
    metrics = QualityMetrics("m", "v1", "classification", "roc_auc", None, CollectorRegistry())
    settings = LogSettings(mode="on", directory=str(tmp_path / "logs"), exclude=("x2",))
    plog = PredictionLog(settings, "m", "v1", schema, metrics)
    frame = synthetic_frame(30)
    records = [
        {k: (None if pd.isna(v) else v) for k, v in r.items() if k != "target"}
        for r in frame.to_dict("records")
    ]
    answers = [{"prediction": "yes", "probabilities": {"no": 0.4, "yes": 0.6}}] * 30
    plog.submit([f"r{i}" for i in range(30)], records, answers)
    plog.flush()
    labels = [{"id": f"r{i}", "label": frame["target"][i]} for i in range(20)]
    plog.feedback(labels + labels[:5])
    plog.close()
    return tmp_path / "logs", frame


def test_labelled_predictions_become_rows_with_the_training_schema(log_dir):
    directory, frame = log_dir
    fresh = feedback_table(directory)
    assert (fresh.predictions, fresh.labelled, fresh.target) == (30, 20, "target")
    assert list(fresh.table.columns) == ["x1", "x2", "colour", "target"]
    assert fresh.excluded == ["x2"] and fresh.table["x2"].isna().all()
    assert fresh.table["target"].tolist() == frame["target"][:20].tolist()
    expected = frame["x1"][:20].to_numpy()
    assert fresh.table["x1"].to_numpy() == pytest.approx(expected, nan_ok=True)


def test_since_filters_by_prediction_time(log_dir):
    directory, _ = log_dir
    assert feedback_table(directory, since=time.time() + 60).labelled == 0
    assert feedback_table(directory, since=time.time() - 60).labelled == 20


def test_append_keeps_the_original_columns_and_dtypes(log_dir, tmp_path):
    directory, frame = log_dir
    original = synthetic_frame(50, seed=3).assign(customer="c")  # a column the model dropped
    path = tmp_path / "train.csv"
    original.to_csv(path, index=False)
    table = append_to(str(path), feedback_table(directory))
    assert list(table.columns) == list(original.columns)
    assert len(table) == 70 and table["customer"].isna().sum() == 20
    assert table["target"].tolist()[50:] == frame["target"][:20].tolist()


@pytest.mark.parametrize(
    ("text", "ok"),
    [("7d", True), ("12h", True), ("90m", True), ("2026-11-20", True)]
    + [("2026-11-20T08:00:00+01:00", True), ("yesterday", False), ("7 days", False)],
)
def test_parse_since(text, ok):
    if ok:
        assert parse_since(text, now=2_000_000_000.0) < 2_000_000_000.0
    else:
        with pytest.raises(UserError, match="--since"):
            parse_since(text)


def test_parse_since_ages_and_dates():
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1970-01-02") == 86400.0  # UTC when no offset is given
    assert parse_since("1970-01-02T01:00:00+01:00") == 86400.0


# (arguments with {dir}/{tmp} placeholders, words the one-line message must contain)
BAD_EXPORTS = [
    (["--log-dir", "{tmp}/nowhere", "--output", "{tmp}/o.parquet"], ["nowhere", "not a directory"]),
    (["--log-dir", "{tmp}", "--output", "{tmp}/o.parquet"], ["no prediction log"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.xlsx"], ["cannot tell the format", "o.xlsx"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.csv", "--since", "soon"], ["--since", "soon"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.csv", "--since", "1d", "--model", "x"], ["--model"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.csv", "--since", "2999-01-01"], ["no labelled"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.csv", "--append-to", "{tmp}/no.csv"], ["not found"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.csv", "--append-to", "{tmp}/no_target.csv"], ["target"]),
    (["--log-dir", "{dir}", "--output", "{tmp}/o.csv", "--append-to", "{tmp}/no_x1.csv"], ["'x1'"]),
    (["--output", "{tmp}/o.csv", "--bogus"], ["--bogus"]),
    (["--log-dir", "{dir}"], ["--output"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), BAD_EXPORTS)
def test_bad_exports_exit_2_with_one_line(log_dir, tmp_path, capsys, args, words):
    directory, frame = log_dir
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    frame.drop(columns=["target"]).to_csv(scratch / "no_target.csv", index=False)
    frame.drop(columns=["x1"]).to_csv(scratch / "no_x1.csv", index=False)
    before = sorted(p.name for p in scratch.iterdir())
    filled = [a.replace("{dir}", str(directory)).replace("{tmp}", str(scratch)) for a in args]
    assert main(["export-feedback", *filled]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert sorted(p.name for p in scratch.iterdir()) == before  # nothing written


def test_export_writes_a_table_run_accepts(log_dir, tmp_path, capsys):
    directory, _ = log_dir
    out = tmp_path / "fresh.parquet"
    assert main(["export-feedback", "--log-dir", str(directory), "--output", str(out)]) == 0
    assert "wrote 20 rows" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert list(table.columns) == ["x1", "x2", "colour", "target"] and len(table) == 20


def test_two_callers_with_the_same_id_export_their_own_labels(tmp_path):
    schema = Schema.from_dict({**schema_dict("classification"), "classes": ["no", "yes"]})
    metrics = QualityMetrics("m", "v1", "classification", "roc_auc", None, CollectorRegistry())
    settings = LogSettings(mode="on", directory=str(tmp_path / "logs"), id_field="id")
    plog = PredictionLog(settings, "m", "v1", schema, metrics)
    records = [
        {"x1": 1.0, "x2": 2.0, "colour": "red", "id": "c1", CALLER_FIELD: "crm"},
        {"x1": 9.0, "x2": 8.0, "colour": "blue", "id": "c1", CALLER_FIELD: "shop"},
    ]
    answers = [{"prediction": "yes", "probabilities": {"no": 0.4, "yes": 0.6}}] * 2
    plog.submit(["c1", "c1"], records, answers)
    plog.flush()
    plog.feedback([{"id": "c1", "label": "no"}], caller="crm")
    plog.feedback([{"id": "c1", "label": "yes"}], caller="shop")
    plog.close()
    table = feedback_table(tmp_path / "logs").table
    assert sorted(zip(table["x1"], table["target"], strict=True)) == [(1.0, "no"), (9.0, "yes")]


FORMULAS = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain", "-3"]
FORMULAS += ["x\r=cmd|' /C calc'!A0"]  # a reader splitting rows at a bare CR would start one here


def _formula_log(tmp_path) -> Path:
    """A log whose categorical feature holds values a spreadsheet would run as formulas."""
    schema = Schema.from_dict({**schema_dict("classification"), "classes": ["no", "yes"]})
    metrics = QualityMetrics("m", "v1", "classification", "roc_auc", None, CollectorRegistry())
    plog = PredictionLog(
        LogSettings(mode="on", directory=str(tmp_path / "logs")), "m", "v1", schema, metrics
    )
    records = [{"x1": -1.5, "x2": float(i), "colour": v} for i, v in enumerate(FORMULAS)]
    answers = [{"prediction": "yes", "probabilities": {"no": 0.4, "yes": 0.6}}] * len(records)
    ids = [f"r{i}" for i in range(len(records))]
    plog.submit(ids, records, answers)
    plog.flush()
    plog.feedback([{"id": i, "label": "no"} for i in ids])
    plog.close()
    return tmp_path / "logs"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".csv.gz"])
def test_exported_csv_cells_never_start_a_formula(tmp_path, suffix):
    directory = _formula_log(tmp_path)
    out = tmp_path / f"fresh{suffix}"
    assert main(["export-feedback", "--log-dir", str(directory), "--output", str(out)]) == 0
    sep = "\t" if suffix == ".tsv" else ","
    table = pd.read_csv(out, sep=sep, keep_default_na=False)
    # "-3" is a number to a spreadsheet, not a formula; the cells with a CR are quoted whole
    assert sorted(table["colour"]) == sorted([f"'{v}" for v in FORMULAS[:6]] + FORMULAS[6:])
    assert (table["x1"] == -1.5).all()  # numbers stay numbers


def test_raw_csv_and_parquet_keep_every_value(tmp_path):
    directory = _formula_log(tmp_path)
    raw, parquet = tmp_path / "raw.csv", tmp_path / "fresh.parquet"
    assert main(["export-feedback", "--log-dir", str(directory), "--output", str(raw),
                 "--raw-csv"]) == 0  # fmt: skip
    assert main(["export-feedback", "--log-dir", str(directory), "--output", str(parquet)]) == 0
    got = pd.read_csv(raw, keep_default_na=False)["colour"].tolist()
    assert {v for v in FORMULAS if "\r" not in v} <= set(got)  # as they are (a bare CR splits)
    assert sorted(pd.read_parquet(parquet)["colour"]) == sorted(FORMULAS)


def test_lines_written_before_owners_still_join(tmp_path, log_dir):
    directory, _ = log_dir
    for path in directory.glob("predictions-*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        for line in lines:
            line.pop("owner", None)
            line.pop("by", None)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (directory / "feedback.db").unlink()
    for extra in ("feedback.db-wal", "feedback.db-shm"):
        (directory / extra).unlink(missing_ok=True)
    assert feedback_table(directory).labelled == 20
