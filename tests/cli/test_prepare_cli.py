"""`kfp-automl run` on the bad-input table: exit 2, one `error: ...` line, nothing written."""

from __future__ import annotations

import json

import pytest

from kfp_automl.cli.main import main
from kfp_automl.cli.prepare_options import prepare_params
from tests.support.bad_tables import CASES, good_frame


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_rejects_bad_table(case, tmp_path, capsys):
    path = case.write(tmp_path)
    out = tmp_path / "out"
    argv = ["run", "--data", str(path), "--target", case.target, "--output", str(out), *case.args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in case.words:
        assert word in err[0], (word, err[0])
    assert not out.exists()  # no partial artifact, not even the output directory


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--drop", "age", "--numeric", "age"], ["column 'age' is given two roles"]),
        (["--schema-file", "{dir}/none.yaml"], ["--schema-file", "cannot be read"]),
        (["--group-column", "nope"], ["--group-column 'nope' is not a column"]),
        (["--numeric", "label"], ["--numeric names the target column 'label'"]),
    ],
)
def test_run_rejects_bad_prepare_flags(args, words, tmp_path, capsys):
    data = tmp_path / "ok.csv"
    good_frame().to_csv(data, index=False)
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    out = tmp_path / "out"
    assert main(["run", "--data", str(data), "--target", "label", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not out.exists()


def test_prepare_flags_and_schema_file_become_pipeline_parameters(tmp_path):
    spec = tmp_path / "roles.yaml"
    spec.write_text("columns:\n  plan: text\n  'a, b': boolean\ndrop: [spend]\n")
    flags = {
        "param_drop_columns": ("age",),
        "param_categorical_columns": ("plan,x",),
        "param_numeric_columns": (),
        "schema_file": str(spec),
        "param_time_column": "when",
        "param_group_column": None,
    }
    params, options = prepare_params(flags)
    assert json.loads(params["drop_columns"]) == ["spend", "age"]
    assert json.loads(params["categorical_columns"]) == ["plan", "x"]  # the flag wins over the file
    assert json.loads(params["boolean_columns"]) == ["a, b"]  # a comma in a name survives
    assert "text_columns" not in params  # no role given: the pipeline's default stays
    assert options.time_column == "when" and options.group_column == ""
    assert set(flags) == {"param_time_column", "param_group_column"}  # the rest were taken
    assert options.categorical == ["plan", "x"]
