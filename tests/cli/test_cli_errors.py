"""Bad input to `kfp-automl`: exit 2, one `error: ...` line, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kfp_automl.cli.main import main


def _fill(args: list[str], names: dict) -> list[str]:
    """Replace {name} placeholders (names contain dots, so no str.format)."""
    out = []
    for a in args:
        for key, value in names.items():
            a = a.replace("{" + key + "}", str(value))
        out.append(a)
    return out


@pytest.fixture
def tables(tmp_path, churn_df):
    small = churn_df.head(200)
    paths = {}

    def put(name, df, **kw):
        p = tmp_path / name
        df.to_csv(p, index=False, **kw)
        paths[name] = p

    put("ok.csv", small)
    put("single_class.csv", small.assign(churn="No"))
    put("header_only.csv", small.head(0))
    put("few_rows.csv", small.head(10))
    put("zero_target.csv", small.assign(churn=range(len(small))))
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet at all")
    paths["garbage.parquet"] = tmp_path / "garbage.parquet"
    (tmp_path / "empty.csv").write_bytes(b"")
    paths["empty.csv"] = tmp_path / "empty.csv"
    paths["missing.csv"] = tmp_path / "missing.csv"
    return paths


# (arguments with {table} placeholders, words the message must contain)
BAD_RUNS = [
    (["--data", "{missing.csv}", "--target", "churn"], ["not found", "missing.csv"]),
    (["--data", "{garbage.parquet}", "--target", "churn"], ["cannot read", "garbage.parquet"]),
    (["--data", "{empty.csv}", "--target", "churn"], ["empty"]),
    (["--data", "{header_only.csv}", "--target", "churn"], ["no rows"]),
    (["--data", "{ok.csv}", "--target", "nope"], ["'nope'", "not found", "tenure"]),
    (["--data", "{single_class.csv}", "--target", "churn"], ["single class", "'No'"]),
    (["--data", "{few_rows.csv}", "--target", "churn"], ["only 10 rows"]),
    (
        ["--data", "{ok.csv}", "--target", "churn", "--task", "regression"],
        ["numeric target", "'churn'"],
    ),
    (["--data", "{ok.csv}", "--target", "churn", "--task", "clustering"], ["--task", "clustering"]),
    (["--data", "{ok.csv}", "--target", "churn", "--metric", "rmse"], ["'rmse'", "classification"]),
    (["--data", "{ok.csv}", "--target", "churn", "--metric", "bogus"], ["unknown metric"]),
    (
        ["--data", "{ok.csv}", "--target", "churn", "--families", "svm"],
        ["unknown model family", "'svm'"],
    ),
    (
        [
            "--data",
            "{zero_target.csv}",
            "--target",
            "churn",
            "--task",
            "regression",
            "--metric",
            "mape",
        ],
        ["mape", "equal to 0"],
    ),
    (["--data", "{ok.csv}"], ["--target is required"]),
    (["--target", "tenure"], ["needs --data"]),
    (["--time-budget", "1"], ["--time-budget"]),
    (["--no-such-flag"], ["--no-such-flag"]),
    (["--warm-start", "{missing.csv}"], ["--warm-start", "leaderboard not found"]),
    (["--warm-start", "{ok.csv}"], ["--warm-start", "not a leaderboard"]),
    (["--search-algorithm", "bayes"], ["--search-algorithm", "bayes"]),
    (["--validation", "kfold"], ["--validation", "kfold"]),
]


@pytest.mark.parametrize("args,words", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_run_rejects_bad_input(args, words, tables, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "--output", str(out)] + _fill(args, tables)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    assert not out.exists()  # nothing written, not even the output directory


def test_bad_input_exits_before_ray_or_bentoml_in_a_real_process(tables, tmp_path):
    """A real process: no traceback, and neither Ray nor BentoML was even imported."""
    code = (
        "import sys; from kfp_automl.cli.main import main; rc = main(sys.argv[1:]); "
        "print('ray' in sys.modules, 'bentoml' in sys.modules); sys.exit(rc)"
    )
    args = [
        "run",
        "--data",
        str(tables["single_class.csv"]),
        "--target",
        "churn",
        "--output",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: target 'churn' has a single class")


BAD_PREDICTS = [
    (
        ["--model", "automl-nothing:v1", "--data", "{ok.csv}", "--output", "{out}/p.csv"],
        ["no Bento", "automl-nothing:v1"],
    ),
    (
        ["--model", "{missing.csv}.bento", "--data", "{ok.csv}", "--output", "{out}/p.csv"],
        ["Bento archive not found"],
    ),
    (
        ["--model", "{ok.csv}", "--data", "{ok.csv}", "--output", "{out}/p.csv"],
        ["not a Bento archive"],
    ),
    (["--model", "x", "--data", "{missing.csv}", "--output", "{out}/p.csv"], ["not found"]),
    (
        ["--model", "x", "--data", "{ok.csv}", "--output", "{out}/p.xlsx"],
        ["cannot tell the format"],
    ),
]


@pytest.mark.parametrize("args,words", BAD_PREDICTS, ids=[a[1] for a, _ in BAD_PREDICTS])
def test_predict_rejects_bad_input(args, words, tables, tmp_path, capsys):
    assert main(["predict"] + _fill(args, tables | {"out": tmp_path / "out"})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    assert not (tmp_path / "out").exists()


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "predict", "serve", "compile"):
        assert command in out


def test_compile_writes_yaml(tmp_path, capsys):
    assert main(["compile", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "training.yaml").read_text().startswith("# PIPELINE DEFINITION")
