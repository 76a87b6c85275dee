"""Reading user tables and writing tables atomically.

Tables are read with pyarrow into typed columns (CSV, TSV, Parquet, JSON Lines,
optionally compressed); local paths and fsspec URLs both work. Every table is
written to a temporary name beside its final path and renamed, so a failure never
leaves a half-written file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path

DEFAULT_DATASET = Path(__file__).parent / "data" / "wa_churn.csv.gz"


DEFAULT_TARGET = "churn"


_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


_COMPRESSION = (".gz", ".bz2", ".zip", ".xz", ".zst")


def table_format(path: str) -> str:
    """Return the table format for `path` from its extension (compression suffixes allowed)."""
    name = path.lower().split("?", 1)[0]
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt
    supported = ", ".join(sorted(_FORMATS))
    raise UserError(f"cannot tell the format of {path!r}: use one of {supported} (optionally .gz)")


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def fsspec_url(url: str) -> str:
    """`url` as fsspec reads it: KFP names its MinIO artifact store `minio://BUCKET/KEY`,
    which is S3 (s3fs, endpoint from AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3)."""
    return "s3://" + url.removeprefix("minio://") if url.startswith("minio://") else url


def storage_options(url: str) -> dict[str, str]:
    """fsspec options for `url`: an S3 endpoint from the environment is passed explicitly, so a
    process whose endpoint changes never reuses a cached file system bound to the old one."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and fsspec_url(url).startswith(("s3://", "s3a://")):
        return {"endpoint_url": endpoint}
    return {}


# What an object store's metadata says about an object's content, strongest first: a
# version id or generation changes on every write; an ETag or checksum changes with the bytes.
_VERSION_KEYS = ("VersionId", "generation", "ETag", "etag", "md5Hash", "crc32c", "checksum")


def data_version(path: str) -> str:
    """A string that changes whenever the table at `path` changes (KFP keys its cache on it).

    Empty `path` is the built-in demo table. A local file is hashed (SHA-256 of its bytes);
    a URL is asked for its version id, generation, ETag or checksum (s3://, minio://, gs://),
    and hashed by streaming when its store records none of them (http(s)://, ...).
    """
    import hashlib

    import fsspec

    path = str(path) or str(DEFAULT_DATASET)
    _refuse_credentials(path)
    try:
        url = fsspec_url(path.removeprefix("file://"))
        fs, where = fsspec.core.url_to_fs(url, **storage_options(url))
        info = fs.info(where)
        for key in _VERSION_KEYS:
            value = info.get(key)
            if value not in (None, ""):
                return f"{key.lower()}:{str(value).strip(chr(34))}:size={info.get('size')}"
        digest = hashlib.sha256()
        with fs.open(where, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except PermissionError:
        raise UserError(f"data file is not readable (permission denied): {path}") from None
    except ImportError as exc:
        raise UserError(f"reading {path} needs an optional package: {exc}") from None
    except IsADirectoryError:
        raise UserError(f"data path is a directory, not a file: {path}") from None


MAX_RETYPED_COLUMNS = 50  # columns re-read as text after a type clash, before giving up


_DELIMITERS = (",", ";", "\t", "|")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet/JSON Lines table into typed columns; user mistakes become a UserError.

    Local paths and fsspec URLs (http(s)://, s3://, gs://, ... with the matching
    fsspec back end installed) both work; credentials come from the back end's
    usual environment (never from arguments). Parsing is pyarrow's (typed
    columns, multithreaded, no row-by-row Python). Notes about how the file was
    read (a sniffed delimiter, columns read as text) are in `df.attrs["read_notes"]`.
    """
    path = str(path)
    fmt = table_format(path)
    _refuse_credentials(path)
    if not _is_url(path):
        local = Path(path.removeprefix("file://"))
        if not local.exists():
            raise UserError(f"data file not found: {path}")
        if local.is_dir():
            raise UserError(f"data path is a directory, not a file: {path}")
        if local.stat().st_size == 0:
            raise UserError(f"data file is empty: {path}")
    notes: list[str] = []
    try:
        if fmt in ("csv", "tsv"):
            table = _read_csv(path, fmt, notes)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            with _open(path) as fh:
                table = pq.read_table(fh)
        else:
            table = _read_jsonl(path, notes)
        df = _to_pandas(table, path)
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"data file is not readable (permission denied): {path}") from None
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except ImportError as exc:
        raise UserError(f"reading {path} needs an optional package: {exc}") from None
    except Exception as exc:  # parser errors differ per format and engine
        reason = _first_line(exc)
        if "ended before the end-of-stream" in reason or "truncated" in reason.lower():
            reason = f"the file is truncated ({reason})"
        elif "Expected" in reason and "columns, got" in reason:
            reason += (
                " (a row has more or fewer fields than the header: wrong delimiter or quoting?)"
            )
        raise UserError(f"cannot read {path} as {fmt}: {reason}") from None
    if df.shape[1] == 0:
        raise UserError(f"data file has no columns: {path}")
    df.attrs["read_notes"] = notes
    return df


def _refuse_credentials(path: str) -> None:
    """A password in a URL would travel as a pipeline parameter: refuse it."""
    from urllib.parse import urlsplit

    if _is_url(path) and urlsplit(path).password is not None:
        scheme = urlsplit(path).scheme
        raise UserError(
            f"the {scheme}:// URL holds a password: pass credentials through the environment "
            "(or a Kubernetes Secret), never in the data URL"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open(path: str):
    """A binary file object for a local path or URL, decompressed by its extension."""
    import fsspec

    url = fsspec_url(path)
    return fsspec.open(url, "rb", compression="infer", **storage_options(url)).open()


def _head(path: str, n_bytes: int = 1 << 16) -> bytes:
    with _open(path) as fh:
        return fh.read(n_bytes)


def _header_line(path: str) -> str:
    head = _head(path)
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"cannot read {path}: the header is not UTF-8 text (byte 0x{first[exc.start]:02x} "
            f"at position {exc.start}); save the file as UTF-8"
        ) from None


def _sniff_delimiter(header: str, expected: str) -> str:
    """The expected delimiter, unless the header has none of it and clearly another one."""
    if expected in header:
        return expected
    counts = {d: header.count(d) for d in _DELIMITERS if d != expected}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else expected


def _read_csv(path: str, fmt: str, notes: list[str]):
    import pyarrow as pa
    from pyarrow import csv

    header = _header_line(path)
    if not header.strip():
        raise UserError(f"data file has no columns: {path}")
    expected = "\t" if fmt == "tsv" else ","
    delimiter = _sniff_delimiter(header, expected)
    if delimiter != expected:
        notes.append(f"read as {delimiter!r}-separated: the header has no {expected!r}")
    text_columns: dict[str, pa.DataType] = {}
    for _ in range(MAX_RETYPED_COLUMNS + 1):
        try:
            with _open(path) as fh:
                return csv.read_csv(
                    fh,
                    parse_options=csv.ParseOptions(delimiter=delimiter),
                    convert_options=csv.ConvertOptions(
                        strings_can_be_null=True, column_types=text_columns
                    ),
                )
        except pa.ArrowInvalid as exc:
            message = _first_line(exc)
            if "invalid UTF8" in message or "invalid utf8" in message.lower():
                raise UserError(
                    f"cannot read {path}: it is not UTF-8 text ({message}); save the file as UTF-8"
                ) from None
            name = _clashing_column(message, header, delimiter)
            if name is None or name in text_columns:
                raise
            # pyarrow guessed the type from the first block; a later value does not fit: read
            # the column as text and let the schema step decide (it names the offending rows)
            text_columns[name] = pa.string()
            notes.append(f"column {name!r} read as text: {message}")
    raise UserError(f"cannot read {path}: too many columns change type part way through")


def _clashing_column(message: str, header: str, delimiter: str) -> str | None:
    import csv as csv_text
    import re

    m = re.search(r"In CSV column #(\d+): .*CSV conversion error", message)
    if not m:
        return None
    names = next(csv_text.reader([header], delimiter=delimiter), [])
    i = int(m.group(1))
    return names[i] if i < len(names) else None


def _read_jsonl(path: str, notes: list[str]):
    import pyarrow as pa
    from pyarrow import json as pj

    try:
        with _open(path) as fh:
            return pj.read_json(fh)
    except pa.ArrowInvalid as exc:
        message = _first_line(exc)
        if "changed from" not in message:
            raise
    # a column with values of different JSON types: read it with pandas (object columns)
    notes.append(f"read with mixed JSON value types ({message})")
    with _open(path) as fh:
        return pd.read_json(fh, lines=True, dtype=False)


def _not_utf8(column) -> str:
    for i, value in enumerate(column.to_pylist()):
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return f"has text that is not UTF-8 (data row {i + 1}: {value!r}); save the file as UTF-8"
    return "holds binary values, not text"


def _to_pandas(table, path: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        df = table
    else:
        import pyarrow as pa

        nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
        if nested:
            raise UserError(
                f"column {nested[0]!r} of {path} holds nested values (lists or objects); "
                "flatten it into plain columns"
            )
        for f in table.schema:
            if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
                raise UserError(f"column {f.name!r} of {path} {_not_utf8(table[f.name])}")
        df = table.to_pandas(split_blocks=True, self_destruct=True, date_as_object=False)
    names = [str(c) for c in df.columns]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise UserError(
                f"column name {name!r} appears twice in {path} (columns {seen[name] + 1} and {i + 1}); "
                "column names must be unique"
            )
        seen[name] = i
    df.columns = names
    return df


def write_parquet(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet, atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _defused(value: Any) -> Any:
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_PREFIXES)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def _text_columns(df: pd.DataFrame):
    for i in range(df.shape[1]):
        values = df.iloc[:, i]
        if (
            isinstance(values.dtype, pd.CategoricalDtype)
            or pd.api.types.is_object_dtype(values.dtype)
            or pd.api.types.is_string_dtype(values.dtype)
        ):
            yield i, values.astype(object)


def _has_carriage_return(df: pd.DataFrame) -> bool:
    return any(
        text.map(lambda v: isinstance(v, str) and "\r" in v).any() for _, text in _text_columns(df)
    )


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every text cell (and column name) that a spreadsheet would run as a formula
    prefixed with a single quote, as OWASP advises for CSV output. Numeric, boolean and
    date columns are untouched, and so is text that is just a number ("-3"), so a
    negative number stays a number."""
    out = df
    for i, text in _text_columns(df):
        risky = text.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_PREFIXES))
        if risky.any():
            if out is df:
                out = df.copy()
            out.isetitem(i, text.map(_defused))
    names = [_defused(c) for c in df.columns]
    if names != list(df.columns):
        out = out.set_axis(names, axis=1) if out is not df else df.set_axis(names, axis=1)
    return out


def write_table(df: pd.DataFrame, path: str, raw_csv: bool = False) -> None:
    """Write by extension (CSV, TSV, Parquet, JSON Lines), atomically.

    CSV and TSV cells that a spreadsheet would run as formulas are neutralised (csv_safe)
    unless `raw_csv`, and a table with a carriage return inside a cell is written with CRLF
    line ends (RFC 4180), so that the cell is quoted and no reader starts a row in it. The
    other formats keep every value as it is.
    """
    fmt = table_format(path)
    ends = "\n"
    if fmt in ("csv", "tsv") and not raw_csv:
        df = csv_safe(df)
        ends = "\r\n" if _has_carriage_return(df) else "\n"
    with atomic_path(path) as tmp:
        if fmt == "csv":
            compression = "gzip" if path.endswith(".gz") else None
            df.to_csv(tmp, index=False, compression=compression, lineterminator=ends)
        elif fmt == "tsv":
            df.to_csv(tmp, sep="\t", index=False, lineterminator=ends)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True)
