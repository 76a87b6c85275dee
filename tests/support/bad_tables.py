"""The bad-input table for data preparation: files a user might hand us, and what must be said.

Shared by tests/unit/test_prepare_bad_input.py (read_table + prepare) and
tests/cli/test_prepare_cli.py (`kfp-automl run`, exit 2, nothing written).
Each case writes one file and names the words the one-line message must hold.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


def good_frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": r.integers(18, 90, size=n),
            "plan": r.choice(["a", "b", "c"], size=n),
            "spend": r.normal(50, 10, size=n).round(2),
            "label": r.choice(["yes", "no"], size=n),
        }
    )


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _mixed_types() -> bytes:
    df = good_frame()
    df["age"] = df["age"].astype(object)
    df.loc[57, "age"] = "unknown"
    return _csv(df)


def _latin1_row() -> bytes:
    text = good_frame().to_csv(index=False)
    lines = text.splitlines()
    lines[5] = (
        lines[5].replace(",a,", ",caf\xe9,").replace(",b,", ",caf\xe9,").replace(",c,", ",caf\xe9,")
    )
    return ("\n".join(lines) + "\n").encode("latin-1")


@dataclass
class Case:
    id: str
    name: str  # file name (its extension picks the format)
    content: Callable[[], bytes]
    words: list[str]  # the message must contain each
    target: str = "label"
    args: list[str] = field(default_factory=list)

    def write(self, directory: Path) -> Path:
        path = directory / self.name
        path.write_bytes(self.content())
        return path


CASES = [
    Case(
        "unreadable",
        "blob.parquet",
        lambda: b"\x00\x01 not a parquet file",
        ["cannot read", "blob.parquet", "parquet"],
    ),
    Case(
        "truncated-gzip",
        "cut.csv.gz",
        lambda: gzip.compress(_csv(good_frame(5000)))[:2000],
        ["cut.csv.gz", "truncated"],
    ),
    Case(
        "truncated-parquet",
        "cut.parquet",
        lambda: _parquet(good_frame())[:-40],
        ["cannot read", "cut.parquet"],
    ),
    Case(
        "ragged-rows",
        "ragged.csv",
        lambda: b"age,plan,label\n1,a,yes\n2,b,no,extra\n",
        ["ragged.csv", "Expected 3 columns, got 4", "more or fewer fields"],
    ),
    Case(
        "latin1-header",
        "latin.csv",
        lambda: "größe,label\n1,yes\n".encode("latin-1"),
        ["latin.csv", "not UTF-8", "0xf6"],
    ),
    Case("latin1-row", "latin_row.csv", _latin1_row, ["column 'plan'", "not UTF-8", "data row 5"]),
    Case(
        "target-absent",
        "ok.csv",
        lambda: _csv(good_frame()),
        ["'churn'", "not found", "age, plan"],
        target="churn",
    ),
    Case(
        "target-empty",
        "no_target.csv",
        lambda: _csv(good_frame().assign(label=np.nan)),
        ["target column 'label' is empty"],
    ),
    Case(
        "single-class",
        "one_class.csv",
        lambda: _csv(good_frame().assign(label="yes")),
        ["single class", "'yes'"],
    ),
    Case(
        "tiny-class",
        "tiny_class.csv",
        lambda: _csv(good_frame().assign(label=["yes"] * 118 + ["maybe"] * 2)),
        ["class 'maybe' has only 2 rows", "at least 3"],
    ),
    Case(
        "all-nan-features",
        "all_nan.csv",
        lambda: _csv(
            pd.DataFrame(
                {"row": range(80), "a": [np.nan] * 80, "b": [np.nan] * 80, "label": ["x", "y"] * 40}
            )
        ),
        ["no usable feature columns", "row: identifier", "a: every value is missing"],
    ),
    Case(
        "duplicate-column-names",
        "dup.csv",
        lambda: b"age,plan,age,label\n" + b"1,a,2,yes\n3,b,4,no\n" * 40,
        ["column name 'age' appears twice", "columns 1 and 3"],
    ),
    Case(
        "mixed-types",
        "mixed.csv",
        _mixed_types,
        ["column 'age' mixes numbers and text", "row 58", "'unknown'", "--numeric age"],
    ),
    Case(
        "mixed-json-types",
        "mixed.jsonl",
        lambda: b"".join(
            (
                b'{"n": "seven", "label": "yes"}\n'
                if i == 70
                else b'{"n": %d, "label": "%s"}\n' % (i, b"yes" if i % 2 else b"no")
            )
            for i in range(120)
        ),
        ["column 'n' mixes numbers and text", "row 71", "'seven'"],
    ),
    Case(
        "one-row", "one_row.csv", lambda: _csv(good_frame().head(1)), ["only 1 rows", "at least 50"]
    ),
    Case(
        "duplicates-only",
        "dups.csv",
        lambda: b"a,label\n" + b"1,x\n2,y\n" * 40,
        ["only 2 distinct rows", "78 rows repeat them exactly", "at least 50"],
    ),
    Case("header-only", "header.csv", lambda: _csv(good_frame().head(0)), ["no rows"]),
    Case(
        "nested-json",
        "nested.jsonl",
        lambda: b'{"tags": [1, 2], "label": "yes"}\n' * 60,
        ["column 'tags'", "nested values"],
    ),
    Case(
        "unknown-role-column",
        "ok.csv",
        lambda: _csv(good_frame()),
        ["--categorical names column 'colour'", "not in the table"],
        args=["--categorical", "colour"],
    ),
    Case(
        "time-column-with-text",
        "ok.csv",
        lambda: _csv(good_frame()),
        ["--time-column 'plan' must hold dates/times or numbers"],
        args=["--time-column", "plan"],
    ),
]


def unicode_frame(n: int = 200, seed: int = 1) -> pd.DataFrame:
    """A good table whose column names are not ASCII: it must work end to end."""
    r = np.random.default_rng(seed)
    size = r.normal(size=n)
    return pd.DataFrame(
        {
            "größe": size,
            "価格 (円)": r.choice(["安い", "高い", "普通"], size=n),
            "😀 mood": r.choice(["good", "bad"], size=n),
            "Zielgröße": np.where(size + r.normal(scale=0.5, size=n) > 0, "ja", "nein"),
        }
    )
