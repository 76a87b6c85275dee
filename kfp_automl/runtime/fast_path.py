"""The serving-time model: the fitted model's answers with less fixed cost per batch.

A fitted model is a Pipeline (ColumnTransformer, then the estimator) or a soft-voting
ensemble of such pipelines. Called through sklearn, most of a request's time is the
ColumnTransformer's fixed cost per column (pandas selection and validation around a
few array operations): about 15 ms for the built-in churn table's 16 columns, whether
the batch holds 1 record or 400, and once more for every ensemble member. ServingModel
runs the same fitted objects with less of that: each categorical column's transform is
remembered value by value (short values only, within a byte budget per model, since
clients choose the values), ensemble members whose fitted preprocessing is identical
share one transform per batch, and a forest's trees are called without joblib's
dispatch per tree. serving_model() checks on probe rows that it answers exactly as
the model does, and otherwise keeps the model.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import sys
import threading
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.records import records_to_frame

log = logging.getLogger(__name__)

# What ServingModel's category memos may hold. A client chooses the values it sends, so the
# memo is bounded in count per column, in size per value and in bytes per model (a worker
# serves one model): anything beyond is transformed per batch, with the same answers.
MEMO_MAX_VALUES = 10_000  # distinct values remembered per categorical column
MEMO_MAX_VALUE_BYTES = 512  # a larger value (sys.getsizeof; ~460 ASCII characters) is never kept
MEMO_MAX_BYTES = 16 * 1024 * 1024  # all memos of one ServingModel together: keys, rows, index
_ENTRY_BYTES = 112  # the index's own cost per remembered value (dict entry and row offset)


class _Unsupported(Exception):
    """The model's layout has no faster path here; it is served as it is."""


class _MemoBudget:
    """The bytes the category memos of one ServingModel may hold together (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = max_bytes, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Reserve `n` bytes if they fit; False (nothing reserved) if they do not."""
        with self._lock:
            if self.used + n > self.max_bytes:
                return False
            self.used += n
            return True


class _CategoryMemo:
    """A fitted single-column categorical transformer, applied once per distinct value.

    Cleaning, then one-hot, ordinal or target encoding (and scaling) maps each value
    to its own output row, so a value's row is computed by the fitted transformer
    itself the first time the value is seen, and reused after that. A value is
    remembered only while the memo holds fewer than `max_values`, the value is at most
    `max_value_bytes` and the model's `budget` has room for it; rows for the rest are
    computed per batch.
    """

    def __init__(
        self,
        transformer: Any,
        column: str,
        budget: _MemoBudget,
        max_values: int | None = None,
        max_value_bytes: int | None = None,
    ):
        self.transformer, self.column, self.budget = transformer, column, budget
        self.max_values = MEMO_MAX_VALUES if max_values is None else max_values
        self.max_value_bytes = MEMO_MAX_VALUE_BYTES if max_value_bytes is None else max_value_bytes
        # (value -> row, rows): replaced as one, so a reader always sees a matching pair
        self._memo: tuple[dict[str | None, int], np.ndarray] = ({}, np.empty((0, 0)))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memo[0])

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
        fresh = {k: j for j, k in enumerate(new)}
        if index:  # remembered rows and new ones, without copying the whole memo
            out = np.empty((len(keys), block.shape[1]), np.result_type(rows, block))
            known = np.array([i >= 0 for i in positions])
            out[known] = rows[[i for i in positions if i >= 0]]
            out[~known] = block[[fresh[k] for k, i in zip(keys, positions, strict=True) if i < 0]]
        else:
            out = block[[fresh[k] for k in keys]]
        self._remember(memo, new, block)
        return out

    def _remember(self, memo, new: list[str | None], block: np.ndarray) -> None:
        """Add the values that may be kept (and their rows) to the memo, as one new pair."""
        index, rows = memo
        keep = [j for j, k in enumerate(new) if sys.getsizeof(k) <= self.max_value_bytes]
        if not keep or len(index) + len(keep) > self.max_values:
            return
        kept = block if len(keep) == len(new) else block[keep]
        cost = kept.nbytes + sum(sys.getsizeof(new[j]) + _ENTRY_BYTES for j in keep)
        with self._lock:
            if self._memo is not memo or not self.budget.take(cost):
                return
            added = {new[j]: len(index) + n for n, j in enumerate(keep)}
            self._memo = ({**index, **added}, np.vstack([rows, kept]) if index else kept)


class _Block:
    """A fitted transformer of several columns, applied as the ColumnTransformer applies it."""

    def __init__(self, transformer: Any, columns: list[str]):
        self.transformer, self.columns = transformer, columns

    def __call__(self, X: pd.DataFrame) -> np.ndarray:
        return self.transformer.transform(X[self.columns])


class _Preprocessor:
    """A fitted ColumnTransformer's transform, column block by column block, as it does it."""

    def __init__(self, ct: Any, roles: dict[str, str], budget: _MemoBudget):
        if getattr(ct, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
            raise _Unsupported("the ColumnTransformer outputs a frame")
        self.blocks: list[_CategoryMemo | _Block] = []
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
                self.blocks.append(_CategoryMemo(transformer, columns[0], budget))
            else:
                self.blocks.append(_Block(transformer, columns))
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

    def __init__(
        self,
        pipeline: Any,
        roles: dict[str, str],
        shared: dict[bytes, _Preprocessor],
        budget: _MemoBudget,
    ):
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
            shared[key] = _Preprocessor(ct, roles, budget)
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

    Wraps a Pipeline or a VotingClassifier/VotingRegressor of Pipelines (either inside a
    FixedThresholdClassifier, whose threshold it answers with); the ensemble's weighted
    average is computed as sklearn computes it. `memo_max_bytes`:
    what its category memos may hold together (default MEMO_MAX_BYTES).
    """

    def __init__(self, model: Any, schema: Schema, memo_max_bytes: int | None = None):
        from sklearn.ensemble import VotingClassifier, VotingRegressor

        from kfp_automl.runtime.threshold import inner, threshold_of

        roles = {f.name: f.role for f in schema.features}
        shared: dict[bytes, _Preprocessor] = {}
        self.model = model
        # a tuned decision threshold (FixedThresholdClassifier) around the fitted model
        self.decision_threshold = threshold_of(model)
        model = inner(model)
        # one budget for every memo: a worker serves one model, so this bounds the worker
        self.budget = _MemoBudget(MEMO_MAX_BYTES if memo_max_bytes is None else memo_max_bytes)
        if isinstance(model, VotingClassifier | VotingRegressor):
            if isinstance(model, VotingClassifier) and model.voting != "soft":
                raise _Unsupported("hard voting")
            names = [est for _, est in model.estimators]
            self.weights = (
                None
                if model.weights is None
                else [w for est, w in zip(names, model.weights, strict=True) if est != "drop"]
            )
            self.members = [_Member(est, roles, shared, self.budget) for est in model.estimators_]
            self.ensemble = True
        else:
            self.members = [_Member(model, roles, shared, self.budget)]
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
            from kfp_automl.runtime.threshold import labels

            return labels(self, self.predict_proba(X))
        preds = self._each(X, "predict")
        if not self.ensemble:
            return preds[0]
        return np.average(np.asarray(preds).T, axis=1, weights=self.weights)


def probe_frame(schema: Schema, max_rows: int = 64) -> pd.DataFrame:
    """Records that reach every part of the model: each known category, an unseen one,
    numbers at and beyond the training range, and missing values in every column."""
    columns: dict[str, list[Any]] = {}
    for f in schema.features:
        values: list[Any]
        if f.numeric:
            low, high = float(f.min or 0.0), float(f.max or 0.0)
            values = [low, high, (low + high) / 2, None, low - 1.0, high + 1.0, 0.0]
        else:
            values = [*f.categories, None, "(a category never seen in training)"]
        columns[f.name] = values
    n = min(max_rows, max(len(v) for v in columns.values()))
    records = [{name: v[i % len(v)] for name, v in columns.items()} for i in range(n)]
    return records_to_frame(records, schema)


def _answers(model: Any, X: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(X) if hasattr(model, "predict_proba") else model.predict(X)


def serving_model(model: Any, schema: Schema, probe: pd.DataFrame | None = None) -> Any:
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
