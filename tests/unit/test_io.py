"""kfp_automl/tables/io.py: table formats, reading user tables, atomic writes, JSON."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path, read_json, write_json
from kfp_automl.tables.io import (
    DEFAULT_DATASET,
    DEFAULT_TARGET,
    read_table,
    table_format,
    write_parquet,
)

# --- table_format ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("data.csv", "csv"),
        ("DATA.CSV", "csv"),
        ("data.tsv", "tsv"),
        ("data.parquet", "parquet"),
        ("data.pq", "parquet"),
        ("data.jsonl", "jsonl"),
        ("data.ndjson", "jsonl"),
        ("data.csv.gz", "csv"),
        ("data.tsv.bz2", "tsv"),
        ("data.jsonl.zst", "jsonl"),
        ("/a/b.c/data.parquet", "parquet"),
        ("s3://bucket/dir/data.parquet?versionId=3", "parquet"),
    ],
)
def test_table_format_from_extension(path, fmt):
    assert table_format(path) == fmt


@pytest.mark.parametrize("path", ["data.txt", "data.xlsx", "data.gz", "data", "data.csv.tar"])
def test_table_format_unknown_extension_names_supported_ones(path):
    with pytest.raises(UserError) as info:
        table_format(path)
    message = str(info.value)
    assert repr(path) in message
    for ext in (".csv", ".tsv", ".parquet", ".jsonl"):
        assert ext in message


# --- read_table round trips ------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "n": [1, 2, 3, 4],
            "x": [0.5, np.nan, -2.25, 1e6],
            "s": ["a", "b", None, "d,e"],  # a comma inside a CSV field must survive quoting
        }
    )


def _assert_same(read: pd.DataFrame, original: pd.DataFrame) -> None:
    assert list(read.columns) == list(original.columns)
    assert len(read) == len(original)
    assert read["n"].tolist() == original["n"].tolist()
    np.testing.assert_allclose(read["x"].to_numpy(float), original["x"].to_numpy(float))
    assert read["s"].isna().tolist() == original["s"].isna().tolist()
    assert read["s"].dropna().tolist() == original["s"].dropna().tolist()


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("t.csv", lambda df, p: df.to_csv(p, index=False)),
        ("t.csv.gz", lambda df, p: df.to_csv(p, index=False, compression="gzip")),
        ("t.tsv", lambda df, p: df.to_csv(p, sep="\t", index=False)),
        ("t.parquet", lambda df, p: df.to_parquet(p, index=False)),
        ("t.jsonl", lambda df, p: df.to_json(p, orient="records", lines=True)),
    ],
)
def test_read_table_round_trip(tmp_path, name, write):
    original = _frame()
    path = tmp_path / name
    write(original, path)
    _assert_same(read_table(path), original)
    _assert_same(read_table(str(path)), original)  # str and PathLike both work


def test_read_table_accepts_file_url(tmp_path):
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    _assert_same(read_table(f"file://{path}"), _frame())


def test_write_parquet_round_trip(tmp_path):
    path = tmp_path / "sub" / "t.parquet"  # parent directory is created
    write_parquet(path, _frame())
    _assert_same(read_table(path), _frame())
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]


# --- read_table bad inputs -------------------------------------------------


def _missing(tmp: Path) -> str:
    return str(tmp / "nope.csv")


def _directory(tmp: Path) -> str:
    d = tmp / "dir.csv"
    d.mkdir()
    return str(d)


def _write(name: str, content: bytes):
    def make(tmp: Path) -> str:
        p = tmp / name
        p.write_bytes(content)
        return str(p)

    return make


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(_missing, r"not found", id="missing-file"),
        pytest.param(lambda t: f"file://{t}/nope.csv", r"not found", id="missing-file-url"),
        pytest.param(_directory, r"is a directory", id="directory"),
        pytest.param(_write("empty.csv", b""), r"is empty", id="empty-csv"),
        pytest.param(_write("empty.parquet", b""), r"is empty", id="empty-parquet"),
        pytest.param(_write("newline.csv", b"\n"), r"has no columns", id="csv-no-columns"),
        pytest.param(_write("blank.csv", b"\n  \n\n"), r"has no columns", id="csv-blank-lines"),
        pytest.param(
            _write("garbage.parquet", b"this is not parquet at all"),
            r"cannot read .*garbage\.parquet as parquet",
            id="garbage-parquet",
        ),
        pytest.param(
            _write("bad.jsonl", b'{"a": 1}\n{not json\n'),
            r"cannot read .*bad\.jsonl as jsonl",
            id="bad-jsonl",
        ),
        pytest.param(
            _write("notgzip.csv.gz", b"a,b\n1,2\n"),
            r"cannot read .*notgzip\.csv\.gz as csv",
            id="csv-gz-not-gzip",
        ),
        pytest.param(_write("data.xlsx", b"PK\x03\x04"), r"cannot tell the format", id="xlsx"),
    ],
)
def test_read_table_bad_inputs_raise_user_error(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(UserError, match=match) as info:
        read_table(path)
    assert "Traceback" not in str(info.value)
    assert len(str(info.value).splitlines()) == 1  # one `error: ...` line for the CLI


def test_read_table_header_only_csv_has_columns_but_no_rows(tmp_path):
    # Not an error here: validate() reports "no rows" with the target's context.
    path = tmp_path / "h.csv"
    path.write_text("a,b\n")
    df = read_table(path)
    assert list(df.columns) == ["a", "b"]
    assert len(df) == 0


# --- atomic_path -----------------------------------------------------------


def test_atomic_path_exception_leaves_nothing(tmp_path):
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(final) as tmp:
        assert tmp.parent == tmp_path
        assert tmp != final
        tmp.write_text("half written")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_exception_keeps_previous_version(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(KeyError), atomic_path(final) as tmp:
        tmp.write_text("new")
        raise KeyError("x")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_success_replaces_with_normal_permissions(tmp_path):
    final = tmp_path / "nested" / "out.txt"
    old_umask = os.umask(0o022)
    try:
        with atomic_path(final) as tmp:
            assert not final.exists()  # nothing visible under the final name until the end
            tmp.write_text("done")
    finally:
        os.umask(old_umask)
    assert final.read_text() == "done"
    # mkstemp creates 0600; the final file must get the usual 0666 & ~umask
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert [p.name for p in final.parent.iterdir()] == ["out.txt"]


# --- JSON ------------------------------------------------------------------


def test_write_json_round_trip_with_numpy_scalars(tmp_path):
    obj = {
        "i": np.int64(7),
        "i32": np.int32(-3),
        "f": np.float32(0.5),
        "f64": np.float64(0.1),
        "b": np.bool_(True),
        "nested": [np.int64(1), {"x": np.float64(2.5)}],
        "plain": "text",
    }
    path = tmp_path / "o.json"
    write_json(path, obj)
    back = read_json(path)
    assert back == {
        "i": 7,
        "i32": -3,
        "f": 0.5,
        "f64": 0.1,
        "b": True,
        "nested": [1, {"x": 2.5}],
        "plain": "text",
    }
    assert type(back["i"]) is int
    assert type(back["b"]) is bool
    assert path.read_text().endswith("\n")


def test_write_json_round_trip_with_numpy_arrays(tmp_path):
    """BUG (kfp_automl/files.py:_json_default): ndarrays have `.item`, so the
    `tolist` branch is never reached; a multi-element array raises ValueError and a
    one-element array is written as a bare scalar instead of a list."""
    path = tmp_path / "a.json"
    write_json(path, {"many": np.array([1, 2, 3]), "one": np.array([0.5])})
    assert read_json(path) == {"many": [1, 2, 3], "one": [0.5]}


def test_write_json_rejects_unserialisable_object_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.json"
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(path, {"x": object()})
    assert list(tmp_path.iterdir()) == []


# --- the bundled demo table -----------------------------------------------


def test_default_dataset_is_the_telco_churn_table():
    assert DEFAULT_DATASET.is_file()
    df = read_table(DEFAULT_DATASET)
    assert len(df) == 7043
    assert DEFAULT_TARGET == "churn"
    assert "churn" in df.columns
    assert df["churn"].notna().all()
    assert df["churn"].nunique() == 2
    assert df["total_charges"].isna().sum() > 0


# --- URLs, type clashes, notes ---------------------------------------------


def test_read_table_over_http_from_a_real_server(tmp_path):
    import functools
    import http.server
    import threading

    _frame().to_parquet(tmp_path / "t.parquet", index=False)
    _frame().to_csv(tmp_path / "t.csv.gz", index=False, compression="gzip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        _assert_same(read_table(f"{base}/t.parquet"), _frame())
        _assert_same(read_table(f"{base}/t.csv.gz"), _frame())
        with pytest.raises(UserError, match=r"not found: http://.*/nope\.csv"):
            read_table(f"{base}/nope.csv")
    finally:
        server.shutdown()
        server.server_close()


def test_read_table_numbers_then_text_late_in_a_big_file(tmp_path):
    # pyarrow infers a column's type from the first block; text far below must not fail the read
    n = 400_000
    values = [str(i) for i in range(n)]
    values[-3] = "n/a?"
    path = tmp_path / "late.csv"
    pd.DataFrame({"x": values, "y": np.arange(n)}).to_csv(path, index=False)
    df = read_table(path)
    assert len(df) == n and df["x"].iloc[-3] == "n/a?"
    assert pd.api.types.is_integer_dtype(df["y"])


def test_read_table_types_columns(tmp_path):
    path = tmp_path / "typed.csv"
    path.write_text("d,b,s,n\n2024-01-02,true,x,1.5\n2024-02-03,false,,\n")
    df = read_table(path)
    assert pd.api.types.is_datetime64_any_dtype(df["d"])
    assert pd.api.types.is_bool_dtype(df["b"])
    assert pd.isna(df["s"].iloc[1]) and pd.isna(df["n"].iloc[1])  # empty strings are missing


@pytest.mark.parametrize(
    "url", ["https://ann:s3cret@example.com/t.csv", "s3://KEY:SECRET@bucket/t.parquet"]
)
def test_read_table_refuses_a_password_in_the_url(url):
    with pytest.raises(
        UserError, match=r"holds a password: pass credentials through the environment"
    ) as info:
        read_table(url)
    assert "s3cret" not in str(info.value) and "SECRET" not in str(info.value)


# --- the data version KFP's cache is keyed on -------------------------------------------------


def test_data_version_changes_with_the_bytes_not_the_name(tmp_path):
    from kfp_automl.tables.io import data_version

    path = tmp_path / "t.csv"
    path.write_text("a,y\n1,0\n2,1\n")
    first = data_version(str(path))
    assert first.startswith("sha256:") and data_version(f"file://{path}") == first
    path.write_text("a,y\n1,0\n2,1\n")  # rewritten, same bytes: the same version
    assert data_version(str(path)) == first
    path.write_text("a,y\n1,0\n3,1\n")
    assert data_version(str(path)) != first


def test_data_version_of_the_demo_table_and_bad_paths(tmp_path):
    from kfp_automl.errors import UserError
    from kfp_automl.tables.io import DEFAULT_DATASET, data_version

    assert data_version("") == data_version(str(DEFAULT_DATASET))
    with pytest.raises(UserError, match="not found"):
        data_version(str(tmp_path / "missing.csv"))
    with pytest.raises(UserError, match="password"):
        data_version("https://user:secret@example.com/t.csv")
