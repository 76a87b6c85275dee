"""The inputs a model was fitted on, kept as hashes, so the gate compares two models only on
holdout rows neither has seen.

Each run splits its own data. When a run retrains on a table that has grown (yesterday's rows
plus today's), today's holdout is drawn afresh and most of it is rows yesterday's champion was
fitted on: scored there, the champion looks better than it is, and the gate favours it. So the
tune step writes, beside the model, the sorted distinct 64-bit hashes of the inputs of every row
the shipped model learned from (`training_rows.npy`, after the schema's coercion, so that the
same record hashes alike in every run), with its SHA-256 in the model's metadata; the package
step records where the file is and its digest in the registry entry; the gate reads the
champion's, checks the digest, and leaves out of the comparison every holdout row whose inputs
the champion was fitted on.

The file stays in the pipeline's artifact store beside the model artifact, never in the Bento:
a served artifact does not carry what would tell whether a given record was in training.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path
from kfp_automl.runtime.model_file import sha256_file
from kfp_automl.runtime.records import coerce_frame

ROWS_FILE = "training_rows.npy"
MAX_BYTES = 1 << 30  # 128 million distinct training inputs


class RowsMissing(UserError):
    """The file is not there (an artifact store cleaned since, a pipeline root removed)."""


def input_keys(df: pd.DataFrame, schema: Schema) -> np.ndarray:
    """The sorted distinct hashes (uint64) of the rows' inputs, as `schema` coerces them."""
    X = coerce_frame(df, schema)[list(schema.names)]
    if len(X) == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.unique(pd.util.hash_pandas_object(X, index=False).to_numpy().astype(np.uint64))


def write(keys: np.ndarray, directory: str | Path) -> str:
    """`directory/training_rows.npy` (atomically); its SHA-256."""
    target = Path(directory) / ROWS_FILE
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(keys, dtype=np.uint64), allow_pickle=False)
    return sha256_file(target)


def read(uri: str, sha256: str) -> np.ndarray:
    """The hashes at `uri` (a path or an object-store URL), only if the file's SHA-256 is
    `sha256`; a UserError saying why otherwise (missing, too large, another digest, not ours)."""
    import fsspec

    from kfp_automl.registry.archive import check_source, copy_capped, display_url
    from kfp_automl.tables.io import fsspec_url

    shown = display_url(uri)
    check_source(uri, "the champion's training rows")
    buffer = io.BytesIO()
    try:
        fs, path = fsspec.core.url_to_fs(fsspec_url(uri))
        with fs.open(path, "rb") as src:
            _, digest = copy_capped(src, buffer, MAX_BYTES, shown)
    except UserError:
        raise
    except FileNotFoundError:
        raise RowsMissing(f"the champion's training rows are gone from {shown}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {shown}: {exc}") from None
    if digest != sha256:
        raise UserError(
            f"{shown} has sha256 {digest[:12]}..., the registry records {sha256[:12]}...; "
            "it is not used"
        )
    buffer.seek(0)
    try:
        keys = np.load(buffer, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{shown} is not a file of training-row hashes: {exc}") from None
    if keys.dtype != np.uint64 or keys.ndim != 1:
        raise UserError(
            f"{shown} is not a file of training-row hashes ({keys.dtype}, {keys.ndim}-d)"
        )
    return keys


def seen(df: pd.DataFrame, schema: Schema, keys: np.ndarray) -> np.ndarray:
    """For each row of `df`, whether a model fitted on the rows `keys` hashes saw its inputs."""
    if len(df) == 0:
        return np.zeros(0, dtype=bool)
    X = coerce_frame(df, schema)[list(schema.names)]
    hashes = pd.util.hash_pandas_object(X, index=False).to_numpy().astype(np.uint64)
    return np.isin(hashes, keys, assume_unique=False)
