"""`kfp-automl predict` of a table whose text cells are spreadsheet formulas (CSV injection).

The real CLI scores the real small Bento. In CSV output a text cell that a spreadsheet would
run (starting with = + - @ tab or CR) gets a leading single quote; numbers, including
negative ones, stay numbers; `--raw-csv` and Parquet keep every value as it is.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.adversarial.conftest import LEGACY
from tests.support.servers import CLI

pytestmark = pytest.mark.slow

HOSTILE = {
    "colour": ["=cmd|' /C calc'!A0", "+green", "-blue", "@SUM(A1:A9)", "\tamber", "blue"],
    "city": ["c34", '\r=HYPERLINK("http://x")', "c11", "-2", "c24", "c11"],
    "note": ["billing problem", "x\r=cmd|' /C calc'!A0", "great", "ok", "=1+1", "-"],
}


@pytest.fixture(scope="module")
def scored(small_bento, tmp_path_factory):
    """The hostile table scored into CSV, raw CSV and Parquet: {name: path}."""
    root = tmp_path_factory.mktemp("cli-tables")
    rows = pd.read_parquet(LEGACY / "rows.parquet").head(6).reset_index(drop=True)
    for column, values in HOSTILE.items():
        rows[column] = values
    data = root / "hostile.parquet"
    rows.to_parquet(data, index=False)
    env = {**os.environ, "BENTOML_HOME": str(root / "home")}
    out = {}
    for name, extra in (("out.csv", []), ("raw.csv", ["--raw-csv"]), ("out.parquet", [])):
        done = subprocess.run(
            [*CLI, "predict", "--model", str(small_bento), "--data", str(data)]
            + ["--output", str(root / name), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = root / name
    return rows, out


def test_csv_cells_that_start_a_formula_get_a_quote_and_numbers_stay_numbers(scored):
    rows, out = scored
    table = pd.read_csv(out["out.csv"], keep_default_na=False)
    for column, values in HOSTILE.items():
        expected = [
            v if v in ("-2",) or not v.startswith(("=", "+", "-", "@", "\t", "\r")) else "'" + v
            for v in values
        ]
        assert table[column].astype(str).tolist() == expected, column
    assert table["x1"].tolist() == pytest.approx(rows["x1"].tolist())  # negative numbers too
    assert (table["x1"] < 0).any()
    probabilities = [c for c in table.columns if c.startswith("proba_")]
    assert probabilities and table[probabilities].sum(axis=1).tolist() == pytest.approx([1.0] * 6)
    text = Path(out["out.csv"]).read_bytes()
    # a CR inside a cell is quoted (CRLF line ends), so no reader starts a row at it
    assert b'"x\r=cmd' in text and b"\r\n" in text


def test_raw_csv_and_parquet_keep_the_values(scored):
    _, out = scored
    raw = Path(out["raw.csv"]).read_bytes().decode()
    assert "=cmd|' /C calc'!A0" in raw and "'=cmd" not in raw
    parquet = pd.read_parquet(out["out.parquet"])
    for column, values in HOSTILE.items():
        assert parquet[column].tolist() == values, column
