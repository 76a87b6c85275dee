"""Turning request records and tables into model input, and model output into answers.

`kfp-automl predict` (a table) and the service (JSON records) use the same functions, so
batch and online scoring cannot transform data differently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Schema

MAX_ID_LENGTH = 128


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


def _categorical(values) -> np.ndarray:
    """Text values as an object array with NaN for missing (what the fitted imputer expects)."""
    return np.array([np.nan if v is None or v != v else str(v) for v in values], dtype=object)


def model_columns(values: Mapping[str, Any], schema: Schema) -> dict[str, np.ndarray]:
    """The model's input columns: the one place batch and online scoring make them.

    `values` holds each feature's checked values (a list of Python values with None for
    missing, or an array); numeric features become float64 with NaN for missing, every
    other feature text (str) with NaN for missing, in schema order.
    """
    out: dict[str, np.ndarray] = {}
    for f in schema.features:
        column = values[f.name]
        if f.numeric:
            if isinstance(column, np.ndarray) and column.dtype == np.float64:
                out[f.name] = column
            else:
                out[f.name] = np.array([np.nan if v is None else v for v in column], dtype=float)
        else:
            out[f.name] = _categorical(column)
    return out


def coerce_frame(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Select the model's feature columns from a table and give them the model's input dtypes.

    A table's columns are typed already (pyarrow reads them); a numeric feature may also
    be text that parses as numbers (a CSV column with a stray value read as text) or
    booleans. A value that is not a number names its row.
    """
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise RecordError(
            None,
            missing[0],
            f"required column is missing ({len(missing)} missing in all)",
            "missing_field",
        )
    checked: dict[str, Any] = {}
    for f in schema.features:
        col = df[f.name]
        if f.numeric:
            if pd.api.types.is_bool_dtype(col):
                col = col.astype(float)
            converted = pd.to_numeric(col, errors="coerce")
            bad = converted.isna() & col.notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise RecordError(i, f.name, f"expected a number, got {col.iloc[i]!r}")
            checked[f.name] = converted.to_numpy(dtype=float)
        else:
            checked[f.name] = col.tolist()
    return pd.DataFrame(model_columns(checked, schema), index=df.index)


def _check_number(i: int, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(i, name, f"expected a number or null, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise RecordError(i, name, "expected a finite number", "non_finite")
    return number


def check_id(value: Any) -> str | None:
    """The problem with a caller-supplied prediction id, or None when it is usable."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"expected a string or an integer id, got {type(value).__name__}"
    text = str(value)
    if not 0 < len(text) <= MAX_ID_LENGTH or not text.isprintable():
        return f"an id is 1 to {MAX_ID_LENGTH} printable characters"
    return None


def parse_request(body: bytes) -> list[Any]:
    """The `records` list of a /predict request body, or a RecordError (reason bad_json)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(None, None, f"the body is not valid JSON: {exc}", "bad_json") from None
    if not isinstance(payload, dict) or "records" not in payload:
        raise RecordError(None, "records", 'expected an object {"records": [...]}', "bad_json")
    records = payload["records"]
    if not isinstance(records, list):
        raise RecordError(None, "records", "expected a list of records", "bad_json")
    return records


def _columns(
    records: list[Any], schema: Schema, unknown_fields: str, id_field: str | None = None
) -> dict[str, list]:
    """Check every record against the schema and gather its values column by column.

    With `id_field`, a record may carry its own prediction id in that field (checked,
    unique within the request); it is not a feature.
    """
    if not records:
        raise RecordError(None, None, "'records' is empty: send at least one record", "empty")
    features = schema.features
    known = set(schema.names)
    if id_field:
        _check_ids(records, id_field)
        known.add(id_field)
    columns: dict[str, list] = {f.name: [None] * len(records) for f in features}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RecordError(
                i, None, f"expected an object of field values, got {type(rec).__name__}"
            )
        if unknown_fields == "reject" and len(rec.keys() - known):
            extra = sorted(rec.keys() - known)[0]
            raise RecordError(
                i, extra, "unknown field (this service rejects them)", "unknown_field"
            )
        for f in features:
            name = f.name
            try:
                value = rec[name]
            except KeyError:
                raise RecordError(
                    i, name, "required field is missing (send null if unknown)", "missing_field"
                ) from None
            if value is None:
                continue
            if f.numeric:
                columns[name][i] = _check_number(i, name, value)
            elif isinstance(value, str | int | float | bool):
                columns[name][i] = value
            else:
                raise RecordError(i, name, f"expected a string or null, got {type(value).__name__}")
    return columns


def _check_ids(records: list[Any], id_field: str) -> None:
    seen: set[str] = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or rec.get(id_field) is None:
            continue
        problem = check_id(rec[id_field])
        if problem is None and str(rec[id_field]) in seen:
            problem = "the same id appears twice in this request"
        if problem is not None:
            raise RecordError(i, id_field, problem, "bad_id")
        seen.add(str(rec[id_field]))


def check_records(
    records: list[Any],
    schema: Schema,
    unknown_fields: str = "ignore",
    id_field: str | None = None,
) -> None:
    """Raise a RecordError naming the first record and field the model cannot take."""
    _columns(records, schema, unknown_fields, id_field)


def records_to_columns(
    records: list[Any], schema: Schema, unknown_fields: str = "ignore"
) -> dict[str, np.ndarray]:
    """Validate JSON records (one dict per row) and gather the model's input columns.

    One pass over the values checks and gathers them (see model_columns for the dtypes);
    `unknown_fields` is "ignore" (extra fields are dropped) or "reject".
    """
    return model_columns(_columns(records, schema, unknown_fields), schema)


def records_to_frame(
    records: list[Any], schema: Schema, unknown_fields: str = "ignore"
) -> pd.DataFrame:
    """The model's input frame of JSON records (see records_to_columns)."""
    return pd.DataFrame(records_to_columns(records, schema, unknown_fields))


def predict_frame(model: Any, X: pd.DataFrame) -> pd.DataFrame:
    """Predictions (and one proba_<class> column per class for classifiers).

    A classifier is asked once, for probabilities; the prediction is the most
    probable class, which is what its own predict() returns.
    """
    if not hasattr(model, "predict_proba"):
        return pd.DataFrame({"prediction": model.predict(X)}, index=X.index)
    proba = model.predict_proba(X)
    classes = model.classes_
    out = {"prediction": classes[np.argmax(proba, axis=1)]}
    for j, cls in enumerate(classes):
        out[f"proba_{cls}"] = proba[:, j]
    return pd.DataFrame(out, index=X.index)


def prediction_records(result: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON object per record: its prediction and, for classifiers, its class probabilities."""
    preds = result["prediction"].tolist()
    proba_cols = [c for c in result.columns if c.startswith("proba_")]
    if not proba_cols:
        return [{"prediction": p} for p in preds]
    classes = [c.removeprefix("proba_") for c in proba_cols]
    rows = result[proba_cols].to_numpy(dtype=float).tolist()
    return [
        {"prediction": p, "probabilities": dict(zip(classes, row, strict=True))}
        for p, row in zip(preds, rows, strict=True)
    ]
