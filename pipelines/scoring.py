"""Batch scoring with a packaged model (`kfp-automl predict`)."""

from __future__ import annotations

import pandas as pd

from components.common.errors import UserError
from components.common.io import atomic_path, table_format
from components.serving.automl_io import RecordError, coerce_frame, predict_frame
from pipelines.bentos import PackagedModel


def score_table(df: pd.DataFrame, packaged: PackagedModel) -> pd.DataFrame:
    """The input columns plus `prediction` (and `proba_<class>` for classifiers)."""
    try:
        X = coerce_frame(df, packaged.schema)
    except RecordError as exc:
        where = f"row {exc.index}, " if exc.index is not None else ""
        raise UserError(f"{where}column {exc.field!r}: {exc.problem}") from None
    out = predict_frame(packaged.model, X)
    clash = [c for c in out.columns if c in df.columns]
    if clash:
        raise UserError(
            f"the input already has a column named {clash[0]!r}; rename it before scoring"
        )
    return pd.concat([df, out], axis=1)


def write_table(df: pd.DataFrame, path: str) -> None:
    """Write by extension (CSV, TSV, Parquet, JSON Lines), atomically."""
    fmt = table_format(path)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False, compression="gzip" if path.endswith(".gz") else None)
        elif fmt == "tsv":
            df.to_csv(tmp, sep="\t", index=False)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True)
