"""Reading user tables and writing outputs atomically.

Tables are read with pandas (pyarrow for Parquet); local paths and fsspec URLs
both work. Every output file is written to a temporary name beside its final
path and renamed, so a failure never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.common.errors import UserError

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


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet/JSON Lines table; user mistakes become a UserError."""
    path = str(path)
    fmt = table_format(path)
    if not _is_url(path):
        local = Path(path.removeprefix("file://"))
        if not local.exists():
            raise UserError(f"data file not found: {path}")
        if local.is_dir():
            raise UserError(f"data path is a directory, not a file: {path}")
        if local.stat().st_size == 0:
            raise UserError(f"data file is empty: {path}")
    try:
        if fmt == "csv":
            df = pd.read_csv(path)
        elif fmt == "tsv":
            df = pd.read_csv(path, sep="\t")
        elif fmt == "parquet":
            df = pd.read_parquet(path, engine="pyarrow")
        else:
            df = pd.read_json(path, lines=True)
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"data file is not readable (permission denied): {path}") from None
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"data file has no columns: {path}") from None
    except ImportError as exc:
        raise UserError(f"reading {path} needs an optional package: {exc}") from None
    except Exception as exc:  # parser errors differ per format and engine
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {path} as {fmt}: {first}") from None
    if df.shape[1] == 0:
        raise UserError(f"data file has no columns: {path}")
    return df


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the final file normal modes
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet, atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
