"""Turning request records and tables into model input, and model output into answers.

`kfp-automl predict` (a table) and the service (JSON records) use the same functions, so
batch and online scoring cannot transform data differently.

A /predict request is checked here too: its framing headers (check_framing), its body
(parse_request, one parse with kfp_automl.runtime.jsonbody) and its records
(check_records, which returns the canonical records: the model's fields and the id, with
the values that were checked). The service scores exactly those canonical records
(canonical_body), so nothing the checks did not see can reach the model or the log.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Feature, Schema
from kfp_automl.runtime.jsonbody import JsonBodyError, loads

MAX_ID_LENGTH = 128
MAX_RECORDS = 100_000  # records in one /predict request
MAX_TEXT_CHARS = 32_768  # characters of a value of a free-text feature
MAX_VALUE_CHARS = 1_024  # characters of a value of any other non-numeric feature
_SHOWN_CHARS = 80  # of a value or field name quoted in an error message
# the headers that say how a body is framed and what it is; each may appear once
FRAMING_HEADERS = (b"content-type", b"content-length", b"transfer-encoding")
# the key of the answer item of a record the model failed on (score_in_parts)
UNSCORED = "__unscored__"
log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A request record the model cannot score; names the record and the field."""

    def __init__(
        self, index: int | None, field: str | None, problem: str, reason: str = "wrong_type"
    ):
        if field is not None and len(field) > _SHOWN_CHARS:  # a client's field name can be huge
            field = field[:_SHOWN_CHARS] + "..."
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


def _shown(value: Any) -> str:
    """`value` as an error message quotes it: its repr, cut short."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return "a very large integer"
    text = repr(value[: _SHOWN_CHARS + 1] if isinstance(value, str) else value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _check_number(i: int, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(i, name, f"expected a number or null, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise RecordError(i, name, "expected a finite number", "non_finite")
    return number


def _check_text(i: int, f: Feature, value: Any) -> None:
    """A value of a non-numeric feature: a string (or a JSON number or boolean, read as its
    text) of bounded length that is valid Unicode."""
    if isinstance(value, str):
        limit = MAX_TEXT_CHARS if f.role == "text" else MAX_VALUE_CHARS
        if len(value) > limit:
            raise RecordError(
                i, f.name, f"a value is at most {limit} characters, got {len(value)}", "too_long"
            )
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
                raise RecordError(
                    i, f.name, "the text is not valid Unicode (a lone surrogate)", "bad_json"
                ) from None
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if value.bit_length() > 3 * MAX_VALUE_CHARS:  # over ~900 digits: never a category
            raise RecordError(i, f.name, "an integer this large is not a category", "too_long")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(i, f.name, "expected a finite number", "non_finite")
    else:
        raise RecordError(i, f.name, f"expected a string or null, got {type(value).__name__}")


def check_id(value: Any) -> str | None:
    """The problem with a caller-supplied prediction id, or None when it is usable."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"expected a string or an integer id, got {type(value).__name__}"
    text = str(value)
    if not 0 < len(text) <= MAX_ID_LENGTH or not text.isprintable():
        return f"an id is 1 to {MAX_ID_LENGTH} printable characters"
    return None


def check_framing(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise a RecordError unless a request's headers frame one JSON body unambiguously.

    Each of Content-Type, Content-Length and Transfer-Encoding appears at most once, and
    not Content-Length with Transfer-Encoding (reason bad_framing: parsers disagree about
    which one counts); the content type is application/json, in UTF-8 if a charset is
    given, and the body is not compressed (reason unsupported_media_type).
    """
    seen: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        key = name.lower()
        if key in FRAMING_HEADERS or key == b"content-encoding":
            seen.setdefault(key, []).append(value)
    for key in FRAMING_HEADERS:
        if len(seen.get(key, ())) > 1:
            problem = f"{len(seen[key])} {key.decode()} headers: send exactly one"
            raise RecordError(None, None, problem, "bad_framing")
    if b"content-length" in seen and b"transfer-encoding" in seen:
        problem = "content-length and transfer-encoding together: send one of them"
        raise RecordError(None, None, problem, "bad_framing")
    media, *params = seen.get(b"content-type", [b""])[0].decode("latin-1").split(";")
    if media.strip().lower() != "application/json":
        problem = "send the body as application/json"
        raise RecordError(None, None, problem, "unsupported_media_type")
    for param in params:
        pname, _, pvalue = param.partition("=")
        charset = pvalue.strip().strip('"').lower()
        if pname.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            problem = "send the body in UTF-8 (charset=utf-8)"
            raise RecordError(None, None, problem, "unsupported_media_type")
    for coding in b",".join(seen.get(b"content-encoding", [])).split(b","):
        if coding.strip().lower() not in (b"", b"identity"):
            problem = f"content-encoding {_shown(coding.strip().decode('latin-1'))} is not "
            problem += "accepted: send the body uncompressed"
            raise RecordError(None, None, problem, "unsupported_media_type")


def parse_request(body: bytes) -> list[Any]:
    """The `records` list of a /predict request body, or a RecordError.

    The body is parsed once, by kfp_automl.runtime.jsonbody (bounded nesting, no duplicate
    keys, no NaN, UTF-8 only): reason bad_json; over MAX_RECORDS records: too_large.
    """
    try:
        payload = loads(body)
    except JsonBodyError as exc:
        raise RecordError(None, None, str(exc), "bad_json") from None
    if not isinstance(payload, dict) or "records" not in payload:
        raise RecordError(None, "records", 'expected an object {"records": [...]}', "bad_json")
    records = payload["records"]
    if not isinstance(records, list):
        raise RecordError(None, "records", "expected a list of records", "bad_json")
    if len(records) > MAX_RECORDS:
        problem = f"{len(records)} records: send at most {MAX_RECORDS} per request"
        raise RecordError(None, "records", problem, "too_large")
    return records


def _columns(
    records: list[Any],
    schema: Schema,
    unknown_fields: str,
    id_field: str | None = None,
    canonical: list[dict[str, Any]] | None = None,
) -> dict[str, list]:
    """Check every record against the schema and gather its values column by column.

    With `id_field`, a record may carry its own prediction id in that field (checked,
    unique within the request); it is not a feature. With `canonical`, each record's
    checked values (its features, and its id when it has one) are appended to it as a dict.
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
            else:
                _check_text(i, f, value)
                columns[name][i] = value
        if canonical is not None:
            kept = {f.name: rec[f.name] for f in features}
            if id_field and rec.get(id_field) is not None:
                kept[id_field] = rec[id_field]
            canonical.append(kept)
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
) -> list[dict[str, Any]]:
    """The canonical records: each record's features (and its id in `id_field`, when it has
    one) with the values that were checked, and nothing else. Raises a RecordError naming
    the first record and field the model cannot take."""
    canonical: list[dict[str, Any]] = []
    _columns(records, schema, unknown_fields, id_field, canonical)
    return canonical


def canonical_body(records: list[dict[str, Any]]) -> bytes:
    """The /predict body of canonical records (check_records) that the model is handed."""
    return json.dumps({"records": records}, ensure_ascii=False, separators=(",", ":")).encode()


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

    A classifier is asked once, for probabilities; the prediction is what its own
    predict() returns: the most probable class, or with a tuned decision threshold the
    positive class at or above it (runtime/threshold.py).
    """
    from kfp_automl.runtime.threshold import labels

    if not hasattr(model, "predict_proba"):
        return pd.DataFrame({"prediction": model.predict(X)}, index=X.index)
    proba = model.predict_proba(X)
    classes = model.classes_
    out = {"prediction": labels(model, proba, classes)}
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


def score_in_parts(
    records: list[dict[str, Any]], score: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """`score(records)`; should it raise, each half is scored on its own, and so on down to
    single records: the others get their answers, and a record the model fails on alone
    gets the item {UNSCORED: True}. The first failure is logged."""
    try:
        return score(records)
    except Exception:
        log.exception("the model failed on a batch of %d checked records", len(records))
    return _halves(records, score)


def _halves(records: list[dict[str, Any]], score) -> list[dict[str, Any]]:
    if len(records) <= 1:
        return [{UNSCORED: True} for _ in records]
    answers: list[dict[str, Any]] = []
    for part in (records[: len(records) // 2], records[len(records) // 2 :]):
        try:
            answers += score(part)
        except Exception:
            answers += _halves(part, score)
    return answers


def unscored_index(answer_body: bytes) -> int | None:
    """The index of the first item of a JSON list of answers that is not scored, if any."""
    if UNSCORED.encode() not in answer_body:  # the usual case, found without parsing
        return None
    items = json.loads(answer_body)
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and UNSCORED in item and "prediction" not in item:
            return i
    return None
