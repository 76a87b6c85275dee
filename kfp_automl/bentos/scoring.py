"""Batch scoring with a packaged model (`kfp-automl predict`)."""

from __future__ import annotations

import pandas as pd

from kfp_automl.bentos.lookup import PackagedModel
from kfp_automl.errors import UserError
from kfp_automl.runtime.records import RecordError, coerce_frame, predict_frame


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
