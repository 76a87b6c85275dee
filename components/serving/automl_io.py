"""Turning request records into model input, and model output into answers.

Shipped inside every Bento next to service.py, so it depends only on what the
Bento installs (numpy, pandas, joblib, scikit-learn): no kfp-automl imports.
`kfp-automl predict` uses the same functions, so batch and online scoring
cannot transform data differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

MODEL_FILE = "model.joblib"
MAX_ID_LENGTH = 128
MEMO_MAX_VALUES = 10_000  # distinct values remembered per categorical column by ServingModel

log = logging.getLogger(__name__)


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


def _categorical(values) -> np.ndarray:
    """Text values as an object array with NaN for missing (what the fitted imputer expects)."""
    return np.array([np.nan if v is None or v != v else str(v) for v in values], dtype=object)


def coerce_frame(df: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Select the model's feature columns from `df` and give them the model's input dtypes."""
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
            out[f["name"]] = converted.to_numpy(dtype=float)
        else:
            out[f["name"]] = _categorical(col.tolist())
    return pd.DataFrame(out, index=df.index)


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
    records: list[Any], schema: dict[str, Any], unknown_fields: str, id_field: str | None = None
) -> dict[str, list]:
    """Check every record against the schema and gather its values column by column.

    With `id_field`, a record may carry its own prediction id in that field (checked,
    unique within the request); it is not a feature.
    """
    if not records:
        raise RecordError(None, None, "'records' is empty: send at least one record", "empty")
    features = _features(schema)
    known = {f["name"] for f in features}
    if id_field:
        _check_ids(records, id_field)
        known.add(id_field)
    columns: dict[str, list] = {f["name"]: [None] * len(records) for f in features}
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
            name = f["name"]
            try:
                value = rec[name]
            except KeyError:
                raise RecordError(
                    i, name, "required field is missing (send null if unknown)", "missing_field"
                ) from None
            if value is None:
                continue
            if f["kind"] == "numeric":
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
    schema: dict[str, Any],
    unknown_fields: str = "ignore",
    id_field: str | None = None,
) -> None:
    """Raise a RecordError naming the first record and field the model cannot take."""
    _columns(records, schema, unknown_fields, id_field)


def records_to_columns(
    records: list[Any], schema: dict[str, Any], unknown_fields: str = "ignore"
) -> dict[str, np.ndarray]:
    """Validate JSON records (one dict per row) and gather the model's input columns.

    Numbers as floats (NaN for missing), everything else as text (NaN for
    missing), in schema order. One pass over the values checks and gathers
    them; `unknown_fields` is "ignore" (extra fields are dropped) or "reject".
    """
    columns = _columns(records, schema, unknown_fields)
    out = {}
    for f in _features(schema):
        values = columns[f["name"]]
        if f["kind"] == "numeric":
            out[f["name"]] = np.array([np.nan if v is None else v for v in values], dtype=float)
        else:
            out[f["name"]] = _categorical(values)
    return out


def records_to_frame(
    records: list[Any], schema: dict[str, Any], unknown_fields: str = "ignore"
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


# ---- the serving-time model ---------------------------------------------------------------
#
# A fitted model is a Pipeline (ColumnTransformer, then the estimator) or a soft-voting
# ensemble of such pipelines. Called through sklearn, most of a request's time is the
# ColumnTransformer's fixed cost per column (pandas selection and validation around a
# few array operations): about 15 ms for the built-in churn table's 16 columns, whether
# the batch holds 1 record or 400, and once more for every ensemble member. ServingModel
# runs the same fitted objects with less of that: each categorical column's transform is
# remembered value by value, ensemble members whose fitted preprocessing is identical
# share one transform per batch, and a forest's trees are called without joblib's
# dispatch per tree. serving_model() checks on probe rows that it answers exactly as
# the model does, and otherwise keeps the model.


class _Unsupported(Exception):
    """The model's layout has no faster path here; it is served as it is."""


class _CategoryMemo:
    """A fitted single-column categorical transformer, applied once per distinct value.

    Cleaning, then one-hot, ordinal or target encoding (and scaling) maps each value
    to its own output row, so a value's row is computed by the fitted transformer
    itself the first time the value is seen, and reused after that. Up to
    `max_values` values are remembered; rows for the rest are computed per batch.
    """

    def __init__(self, transformer: Any, column: str, max_values: int = MEMO_MAX_VALUES):
        self.transformer, self.column, self.max_values = transformer, column, max_values
        # (value -> row, rows): replaced as one, so a reader always sees a matching pair
        self._memo: tuple[dict[str | None, int], np.ndarray] = ({}, np.empty((0, 0)))
        self._lock = threading.Lock()

    def _compute(self, keys: list[str | None]) -> np.ndarray:
        values = np.array([np.nan if k is None else k for k in keys], dtype=object)
        out = self.transformer.transform(pd.DataFrame({self.column: values}))
        if not isinstance(out, np.ndarray) or out.ndim != 2:
            raise _Unsupported(f"column {self.column!r}: its transform is not a dense array")
        return out

    def __call__(self, X: pd.DataFrame) -> np.ndarray:
        keys: list[str | None] = []
        for v in X[self.column].tolist():
            if isinstance(v, str):
                keys.append(v)
            elif v is None or (isinstance(v, float) and v != v):
                keys.append(None)
            else:  # not the text the service hands over: the transformer's own path
                return self.transformer.transform(X[[self.column]])
        memo = self._memo
        index, rows = memo
        positions = [index.get(k, -1) for k in keys]
        if -1 not in positions:
            return rows[positions]
        new = list(dict.fromkeys(k for k, i in zip(keys, positions, strict=True) if i < 0))
        block = self._compute(new)
        table = np.vstack([rows, block]) if index else block
        where = {k: len(index) + j for j, k in enumerate(new)}
        positions = [i if i >= 0 else where[k] for k, i in zip(keys, positions, strict=True)]
        with self._lock:
            if self._memo is memo and len(index) + len(where) <= self.max_values:
                self._memo = ({**index, **where}, table)
        return table[positions]


class _Preprocessor:
    """A fitted ColumnTransformer's transform, column block by column block, as it does it."""

    def __init__(self, ct: Any, roles: dict[str, str]):
        if getattr(ct, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
            raise _Unsupported("the ColumnTransformer outputs a frame")
        self.blocks = []
        for _, transformer, columns in ct.transformers_:
            if isinstance(transformer, str):
                if transformer == "drop":
                    continue
                raise _Unsupported(f"{transformer!r} columns")
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise _Unsupported("columns not selected by name")
            if not columns:
                continue  # ColumnTransformer skips an empty selection
            if len(columns) == 1 and roles.get(columns[0]) == "categorical":
                self.blocks.append(_CategoryMemo(transformer, columns[0]))
            else:
                self.blocks.append(lambda X, t=transformer, c=columns: t.transform(X[c]))
        if not self.blocks:
            raise _Unsupported("no columns")

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return np.hstack([block(X) for block in self.blocks])


class _Forest:
    """A fitted random or extra-trees forest (one output), its trees called one after another.

    The sum and the division are the forest's own (sklearn adds the trees' answers in
    order when n_jobs is 1); only joblib's dispatch per tree, which costs more than
    the tree's own prediction for a small batch, is left out.
    """

    def __init__(self, forest: Any):
        self.forest = forest

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self.forest._validate_X_predict(X)
        out = np.zeros((X.shape[0], self.forest.n_classes_), dtype=np.float64)
        for tree in self.forest.estimators_:
            out += tree.predict_proba(X, check_input=False)
        out /= len(self.forest.estimators_)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self.forest._validate_X_predict(X)
        out = np.zeros(X.shape[0], dtype=np.float64)
        for tree in self.forest.estimators_:
            out += tree.predict(X, check_input=False)
        out /= len(self.forest.estimators_)
        return out


def _final(estimator: Any) -> Any:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    forests = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier)
    if isinstance(estimator, (*forests, ExtraTreesRegressor)) and estimator.n_outputs_ == 1:
        return _Forest(estimator)
    return estimator


class _Member:
    """One fitted Pipeline: a shared preprocessor, its further steps, the final estimator."""

    def __init__(self, pipeline: Any, roles: dict[str, str], shared: dict[bytes, _Preprocessor]):
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline

        if not isinstance(pipeline, Pipeline) or not isinstance(
            pipeline.steps[0][1], ColumnTransformer
        ):
            raise _Unsupported(f"{type(pipeline).__name__} is not a ColumnTransformer pipeline")
        ct = pipeline.steps[0][1]
        # members fitted on the same rows with the same settings have identical preprocessing
        key = hashlib.sha256(pickle.dumps(ct)).digest()
        if key not in shared:
            shared[key] = _Preprocessor(ct, roles)
        self.preprocessor = shared[key]
        steps = [s for _, s in pipeline.steps[1:] if s is not None and s != "passthrough"]
        if not steps or steps[-1] is not pipeline.steps[-1][1]:
            raise _Unsupported("the pipeline ends without an estimator")
        self.middle, self.final = steps[:-1], _final(steps[-1])

    def features(self, X: pd.DataFrame, done: dict[int, np.ndarray]) -> np.ndarray:
        key = id(self.preprocessor)
        if key not in done:
            done[key] = self.preprocessor.transform(X)
        Xt = done[key]
        for step in self.middle:
            Xt = step.transform(Xt)
        return Xt


class ServingModel:
    """The fitted model, answering as it does with less fixed cost per batch (see above).

    Wraps a Pipeline or a VotingClassifier/VotingRegressor of Pipelines; the
    ensemble's weighted average is computed as sklearn computes it.
    """

    def __init__(self, model: Any, schema: dict[str, Any]):
        from sklearn.ensemble import VotingClassifier, VotingRegressor

        roles = {f["name"]: f.get("role") or f["kind"] for f in _features(schema)}
        shared: dict[bytes, _Preprocessor] = {}
        self.model = model
        if isinstance(model, VotingClassifier | VotingRegressor):
            if isinstance(model, VotingClassifier) and model.voting != "soft":
                raise _Unsupported("hard voting")
            names = [est for _, est in model.estimators]
            self.weights = (
                None
                if model.weights is None
                else [w for est, w in zip(names, model.weights, strict=True) if est != "drop"]
            )
            self.members = [_Member(est, roles, shared) for est in model.estimators_]
            self.ensemble = True
        else:
            self.members = [_Member(model, roles, shared)]
            self.weights, self.ensemble = None, False
        self.is_classifier = hasattr(model, "predict_proba")
        if self.is_classifier:
            self.classes_ = model.classes_
        self.n_preprocessors = len(shared)

    def _each(self, X: pd.DataFrame, method: str) -> list[np.ndarray]:
        done: dict[int, np.ndarray] = {}
        return [getattr(m.final, method)(m.features(X, done)) for m in self.members]

    @property
    def predict_proba(self):
        """Class probabilities; a regressor has none (hasattr says False, as for sklearn's)."""
        if not self.is_classifier:
            raise AttributeError("a regressor has no predict_proba")
        return self._predict_proba

    def _predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        probas = self._each(X, "predict_proba")
        if not self.ensemble:
            return probas[0]
        return np.average(np.asarray(probas), axis=0, weights=self.weights)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.is_classifier:  # what predict_frame answers for a classifier
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        preds = self._each(X, "predict")
        if not self.ensemble:
            return preds[0]
        return np.average(np.asarray(preds).T, axis=1, weights=self.weights)


def probe_frame(schema: dict[str, Any], max_rows: int = 64) -> pd.DataFrame:
    """Records that reach every part of the model: each known category, an unseen one,
    numbers at and beyond the training range, and missing values in every column."""
    columns: dict[str, list[Any]] = {}
    for f in _features(schema):
        if f["kind"] == "numeric":
            low, high = float(f.get("min") or 0.0), float(f.get("max") or 0.0)
            values = [low, high, (low + high) / 2, None, low - 1.0, high + 1.0, 0.0]
        else:
            values = [str(c) for c in f.get("categories") or []]
            values += [None, "(a category never seen in training)"]
        columns[f["name"]] = values
    n = min(max_rows, max(len(v) for v in columns.values()))
    records = [{name: v[i % len(v)] for name, v in columns.items()} for i in range(n)]
    return records_to_frame(records, schema)


def _answers(model: Any, X: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(X) if hasattr(model, "predict_proba") else model.predict(X)


def serving_model(model: Any, schema: dict[str, Any], probe: pd.DataFrame | None = None) -> Any:
    """A ServingModel for `model` when it answers exactly as `model` on probe rows, else `model`.

    The probe rows (by default from the schema: every category, an unseen one,
    missing values, numbers in and out of range) also fill the category memos.
    """
    try:
        fast = ServingModel(model, schema)
    except _Unsupported as exc:
        log.info("serving the model through sklearn: %s", exc)
        return model
    X = probe_frame(schema) if probe is None else probe
    try:
        expected, got = _answers(model, X), _answers(fast, X)
        same = expected.shape == got.shape and np.allclose(got, expected, rtol=0, atol=1e-12)
    except (_Unsupported, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("serving the model through sklearn: the faster path failed: %s", exc)
        return model
    if not same:
        log.warning("serving the model through sklearn: the faster path answered differently")
        return model
    return fast
