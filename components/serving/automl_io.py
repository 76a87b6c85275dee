"""Turning request records into model input, and model output into answers.

Shipped inside every Bento next to service.py, so it depends only on what the
Bento installs (numpy, pandas, joblib, scikit-learn): no kfp-automl imports.
`kfp-automl predict` uses the same functions, so batch and online scoring
cannot transform data differently.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

MODEL_FILE = "model.joblib"


class ModelIntegrityError(RuntimeError):
    """The model file is not the one this project wrote."""


class RecordError(ValueError):
    """A request record the model cannot score; names the record and the field."""

    def __init__(
        self, index: int | None, field: str | None, problem: str, reason: str = "wrong_type"
    ):
        self.index, self.field, self.problem, self.reason = index, field, problem, reason
        where = []
        if index is not None:
            where.append(f"record {index}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "record": self.index,
            "field": self.field,
            "problem": self.problem,
            "reason": self.reason,
        }


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(directory: str | os.PathLike[str], sha256: str) -> Any:
    """Load `directory/model.joblib` only if its SHA-256 is `sha256`."""
    path = Path(directory) / MODEL_FILE
    if not sha256:
        raise ModelIntegrityError(f"no hash recorded for {path}; refusing to load it")
    actual = sha256_file(path)
    if actual != sha256:
        raise ModelIntegrityError(
            f"{path} has sha256 {actual[:12]}..., expected {sha256[:12]}...; refusing to load it"
        )
    return joblib.load(path)


def _features(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return schema["features"]


def coerce_frame(df: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Select the model's feature columns from `df` and give them the training dtypes."""
    missing = [f["name"] for f in _features(schema) if f["name"] not in df.columns]
    if missing:
        raise RecordError(
            None,
            missing[0],
            f"required column is missing ({len(missing)} missing in all)",
            "missing_field",
        )
    out = {}
    for f in _features(schema):
        col = df[f["name"]]
        if f["kind"] == "numeric":
            if pd.api.types.is_bool_dtype(col):
                col = col.astype(float)
            converted = pd.to_numeric(col, errors="coerce")
            bad = converted.isna() & col.notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise RecordError(i, f["name"], f"expected a number, got {col.iloc[i]!r}")
            out[f["name"]] = converted.astype(float)
        else:
            out[f["name"]] = col.astype(object).where(col.notna(), np.nan).astype("str")
    return pd.DataFrame(out, index=df.index)


def records_to_frame(
    records: list[Any], schema: dict[str, Any], unknown_fields: str = "ignore"
) -> pd.DataFrame:
    """Validate JSON records (one dict per row) and build the model's input frame.

    `unknown_fields` is "ignore" (extra fields are dropped) or "reject".
    """
    if not records:
        raise RecordError(None, None, "'records' is empty: send at least one record", "empty")
    names = [f["name"] for f in _features(schema)]
    kinds = {f["name"]: f["kind"] for f in _features(schema)}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RecordError(
                i, None, f"expected an object of field values, got {type(rec).__name__}"
            )
        if unknown_fields == "reject" and len(rec.keys() - kinds.keys()):
            extra = sorted(rec.keys() - kinds.keys())[0]
            raise RecordError(
                i, extra, "unknown field (this service rejects them)", "unknown_field"
            )
        for name in names:
            if name not in rec:
                raise RecordError(
                    i, name, "required field is missing (send null if unknown)", "missing_field"
                )
            value = rec[name]
            if value is None:
                continue
            if kinds[name] == "numeric":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise RecordError(i, name, f"expected a number or null, got {value!r}")
                try:
                    finite = math.isfinite(value)
                except OverflowError:  # an integer too large for a float
                    finite = False
                if not finite:
                    raise RecordError(i, name, "expected a finite number", "non_finite")
            elif not isinstance(value, str | int | float | bool):
                raise RecordError(i, name, f"expected a string or null, got {type(value).__name__}")
    frame = pd.DataFrame.from_records(records, columns=names)
    return coerce_frame(frame, schema)


def predict_frame(model: Any, X: pd.DataFrame) -> pd.DataFrame:
    """Predictions (and one proba_<class> column per class for classifiers)."""
    out = pd.DataFrame({"prediction": model.predict(X)}, index=X.index)
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        for j, cls in enumerate(model.classes_):
            out[f"proba_{cls}"] = proba[:, j]
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def predictions_payload(result: pd.DataFrame) -> dict[str, Any]:
    """JSON answer for /predict: predictions, and probabilities per class when present."""
    payload: dict[str, Any] = {"predictions": [_plain(v) for v in result["prediction"]]}
    proba_cols = [c for c in result.columns if c.startswith("proba_")]
    if proba_cols:
        proba = result[proba_cols].astype(float)
        payload["probabilities"] = proba.rename(columns=lambda c: c.removeprefix("proba_")).to_dict(
            "records"
        )
    return payload
