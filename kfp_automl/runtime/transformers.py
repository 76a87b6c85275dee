"""In-model preprocessing: one ColumnTransformer built from the schema, fitted with the model.

Everything learned from data (medians, clip bounds, rare categories, target
encodings, vocabularies) is learned in `fit`, on the rows the model is fitted
on, and stored in the model object. Serving and batch scoring call the same
fitted pipeline, so training and serving cannot transform data differently.

The transformers also accept what serving hands them: categories, booleans
and datetimes as text (JSON), numbers as floats, missing values as NaN/None.

Feature roles (schema `role`, falling back to `kind` for older schemas):

- numeric: clip to the train 0.1/99.9 percentiles, median imputation with a
  missing indicator for columns that had missing values in train, optional scaling;
- boolean: true/false, yes/no, 1/0 ... mapped to 1/0, most frequent imputation + indicator;
- categorical: canonical text, rare categories grouped into one, then one-hot
  (low cardinality) or cross-fitted target encoding (high cardinality);
- datetime: year, month, day, weekday, hour, day of year and a time index,
  the parts that vary in train, median imputation + indicator;
- text: TF-IDF of words and word pairs reduced by truncated SVD to a few dense components.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    OneHotEncoder,
    OrdinalEncoder,
    QuantileTransformer,
    StandardScaler,
    TargetEncoder,
)

from kfp_automl.contracts.schema import Feature, Schema
from kfp_automl.errors import UserError

ENCODINGS = ("auto", "onehot", "target", "ordinal")
SCALINGS = ("none", "standard", "quantile")
QUANTILES = 200  # quantiles kept per numeric column by the "quantile" scaling
HIGH_CARDINALITY = 20  # more categories than this: target encoding under "auto"
RARE_MIN_COUNT = 5  # categories seen fewer times in train are grouped
RARE_MIN_SHARE = 0.005
RARE, MISSING_CATEGORY = "(rare)", "(missing)"
CLIP_QUANTILES = (0.001, 0.999)
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0", "on"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0", "off"})
DATETIME_PARTS = ("year", "month", "day", "weekday", "hour", "dayofyear", "days")
TEXT_COMPONENTS = 16
TEXT_MAX_FEATURES = 2000


# ---- value normalisation (shared with prepare) ----------------------------------------------


def category_strings(values) -> pd.Series:
    """Categories as text with NaN for missing: 3 and 3.0 both become "3", True becomes "True"."""
    s = pd.Series(values, copy=False) if not isinstance(values, pd.Series) else values
    if pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(v) & (np.mod(v, 1) == 0) & (np.abs(v) < 2**53)
        out = s.astype(object)
        out[integral] = v[integral].astype(np.int64).astype(str)
        out[~integral & ~np.isnan(v)] = s[~integral & ~np.isnan(v)].astype(str)
        out[np.isnan(v)] = np.nan
        return out
    if pd.api.types.is_string_dtype(s) and s.dtype != object:
        return s  # pandas' text dtype: already text, NaN for missing
    out = s.astype(object)
    mask = s.isna().to_numpy()
    if not pd.api.types.is_string_dtype(s) or s.dtype == object:
        # object again: pandas makes the map of an all-missing column float
        out = out.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
        out = out.astype(object)
    out[mask] = np.nan
    return out


def boolean_values(values) -> np.ndarray:
    """1.0 for true-like, 0.0 for false-like, NaN for missing or anything else."""
    s = values if isinstance(values, pd.Series) else pd.Series(values, copy=False)
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        v = s.to_numpy(dtype=float)
        return np.where(np.isin(v, (0.0, 1.0)), v, np.nan)
    text = category_strings(s).str.strip().str.lower()
    out = np.full(len(text), np.nan)
    out[text.isin(TRUE_WORDS).to_numpy()] = 1.0
    out[text.isin(FALSE_WORDS).to_numpy()] = 0.0
    return out


def datetime_values(values) -> pd.Series:
    """Parse datetimes (already typed, or ISO-like text); tz-aware ones in UTC; NaT if unparseable."""
    s = values if isinstance(values, pd.Series) else pd.Series(values, copy=False)
    if pd.api.types.is_datetime64_any_dtype(s):
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return s.astype("datetime64[ns]")
    text = category_strings(s)
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")  # the fast path
    retry = parsed.isna() & text.notna()
    if retry.any():  # another layout: guess it from one value, parse the column with it
        from pandas.tseries.api import guess_datetime_format

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "day first?": the guessed layout settles it
            layout = guess_datetime_format(str(text[retry].iloc[0]))
        if layout:
            parsed[retry] = pd.to_datetime(text[retry], errors="coerce", utc=True, format=layout)
            retry = parsed.isna() & text.notna()
    if retry.any():  # mixed layouts: value by value
        parsed[retry] = pd.to_datetime(text[retry], errors="coerce", utc=True, format="mixed")
    parsed = parsed.dt.tz_localize(None)
    # a date nanosecond timestamps cannot hold (e.g. year -1 or 99999) is as good as unparseable
    parsed = parsed.where((parsed >= pd.Timestamp.min) & (parsed <= pd.Timestamp.max))
    return parsed.astype("datetime64[ns]")


def _frame(X) -> pd.DataFrame:
    return X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)


# ---- transformers -------------------------------------------------------------------------


class _Named(TransformerMixin, BaseEstimator):
    """Remembers its input column names for get_feature_names_out."""

    def _remember(self, X) -> pd.DataFrame:
        X = _frame(X)
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = X.shape[1]
        return X

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self._names_out(), dtype=object)

    def _names_out(self) -> list[str]:
        return list(self.feature_names_in_)


class Clipper(_Named):
    """Clip numbers to quantile bounds learned in fit (on the training rows only)."""

    def __init__(self, quantiles: tuple[float, float] = CLIP_QUANTILES):
        self.quantiles = quantiles

    def fit(self, X, y=None):
        X = self._remember(X)
        v = X.to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(all="ignore"):
            bounds = [
                np.nanquantile(c, self.quantiles) if np.isfinite(c).any() else (-np.inf, np.inf)
                for c in v.T
            ]
        self.low_ = np.array([b[0] for b in bounds], dtype=float)
        self.high_ = np.array([b[1] for b in bounds], dtype=float)
        return self

    def transform(self, X):
        v = np.array(_frame(X).to_numpy(dtype=float, na_value=np.nan), dtype=float, copy=True)
        v[np.isinf(v)] = np.nan
        return np.clip(v, self.low_, self.high_)


class BooleanEncoder(_Named):
    """True/false-like values (bool, 1/0, yes/no, true/false, ...) to 1.0/0.0; others NaN."""

    def fit(self, X, y=None):
        self._remember(X)
        return self

    def transform(self, X):
        X = _frame(X)
        return np.column_stack([boolean_values(X.iloc[:, j]) for j in range(X.shape[1])])


class CategoryCleaner(_Named):
    """Canonical text categories; missing becomes "(missing)"; rare ones (train counts) "(rare)".

    A category seen fewer than max(`min_count`, `min_share` x rows) times in
    fit, and any category not seen in fit, is mapped to "(rare)".
    """

    def __init__(self, min_count: int = RARE_MIN_COUNT, min_share: float = RARE_MIN_SHARE):
        self.min_count = min_count
        self.min_share = min_share

    def fit(self, X, y=None):
        X = self._remember(X)
        threshold = max(self.min_count, self.min_share * len(X))
        self.kept_ = []
        for j in range(X.shape[1]):
            counts = category_strings(X.iloc[:, j]).fillna(MISSING_CATEGORY).value_counts()
            self.kept_.append(set(counts.index[counts >= threshold]) | {MISSING_CATEGORY})
        return self

    def transform(self, X):
        X = _frame(X)
        cols = []
        for j in range(X.shape[1]):
            s = category_strings(X.iloc[:, j]).fillna(MISSING_CATEGORY)
            cols.append(s.where(s.isin(self.kept_[j]), RARE).to_numpy(dtype=object))
        return np.column_stack(cols) if cols else np.empty((len(X), 0), dtype=object)


class DatetimeFeatures(_Named):
    """Calendar parts and a day count of datetime columns; keeps the parts that vary in fit."""

    def fit(self, X, y=None):
        X = self._remember(X)
        self.parts_ = []
        for j in range(X.shape[1]):
            parts = _datetime_parts(datetime_values(X.iloc[:, j]))
            varying = [p for p in DATETIME_PARTS if parts[p].nunique(dropna=True) > 1]
            self.parts_.append(varying or ["days"])
        return self

    def transform(self, X):
        X = _frame(X)
        out: list[np.ndarray] = []
        for j in range(X.shape[1]):
            parts = _datetime_parts(datetime_values(X.iloc[:, j]))
            out.extend(parts[p].to_numpy(dtype=float) for p in self.parts_[j])
        return np.column_stack(out) if out else np.empty((len(X), 0))

    def _names_out(self) -> list[str]:
        return [
            f"{c}_{p}"
            for c, parts in zip(self.feature_names_in_, self.parts_, strict=True)
            for p in parts
        ]


def _datetime_parts(t: pd.Series) -> pd.DataFrame:
    days = (t - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
    return pd.DataFrame(
        {
            "year": t.dt.year,
            "month": t.dt.month,
            "day": t.dt.day,
            "weekday": t.dt.day_of_week,
            "hour": t.dt.hour,
            "dayofyear": t.dt.day_of_year,
            "days": days,
        }
    ).astype(float)


class TextFeatures(_Named):
    """TF-IDF (words and word pairs) of each text column, reduced to a few SVD components."""

    def __init__(self, n_components: int = TEXT_COMPONENTS, max_features: int = TEXT_MAX_FEATURES):
        self.n_components = n_components
        self.max_features = max_features

    def fit(self, X, y=None):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        X = self._remember(X)
        self.steps_ = []
        for j in range(X.shape[1]):
            docs = category_strings(X.iloc[:, j]).fillna("").tolist()
            tfidf = TfidfVectorizer(
                max_features=self.max_features, ngram_range=(1, 2), sublinear_tf=True
            )
            try:
                matrix = tfidf.fit_transform(docs)
            except ValueError:  # no words at all (empty vocabulary)
                self.steps_.append((None, None, 0))
                continue
            k = min(self.n_components, matrix.shape[1] - 1)
            svd = TruncatedSVD(n_components=k, random_state=0).fit(matrix) if k >= 1 else None
            self.steps_.append((tfidf, svd, k if svd is not None else matrix.shape[1]))
        return self

    def transform(self, X):
        X = _frame(X)
        out = [np.empty((len(X), 0))]
        for j, (tfidf, svd, _) in enumerate(self.steps_):
            if tfidf is None:
                continue
            matrix = tfidf.transform(category_strings(X.iloc[:, j]).fillna("").tolist())
            out.append(svd.transform(matrix) if svd is not None else matrix.toarray())
        return np.hstack(out)

    def _names_out(self) -> list[str]:
        return [
            f"{c}_text{i}"
            for c, (_, _, k) in zip(self.feature_names_in_, self.steps_, strict=True)
            for i in range(k)
        ]


# ---- the preprocessor ---------------------------------------------------------------------


def _encoder(encoding: str, n_categories: int, task: str, seed: int):
    if encoding == "auto":
        encoding = "target" if n_categories > HIGH_CARDINALITY else "onehot"
    if encoding == "target":
        # cross-fitted: fit_transform encodes each row with a model fitted on the other folds
        from sklearn.model_selection import KFold, StratifiedKFold

        if task == "regression":
            return TargetEncoder(
                target_type="continuous", cv=KFold(5, shuffle=True, random_state=seed)
            )
        return TargetEncoder(cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    if encoding == "ordinal":
        return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    return OneHotEncoder(handle_unknown="ignore", max_categories=32, sparse_output=False)


def build_preprocessor(
    schema: Schema,
    *,
    scale_numeric: bool = False,
    categorical_encoding: str = "auto",
    seed: int = 0,
    numeric_scaling: str | None = None,
) -> ColumnTransformer:
    """The preprocessing ColumnTransformer for the schema's features (unfitted).

    `categorical_encoding`: "auto" (one-hot up to HIGH_CARDINALITY categories,
    cross-fitted target encoding above), "onehot", "target" or "ordinal".
    `numeric_scaling` (for linear models): "none", "standard" (every numeric output
    standardised) or "quantile" (numeric columns mapped through their train quantiles
    to a normal shape, which tames skew and outliers; the other outputs standardised).
    `scale_numeric=True` is the same as "standard".
    """
    if categorical_encoding not in ENCODINGS:
        raise UserError(
            f"unknown categorical encoding {categorical_encoding!r}; choose one of {', '.join(ENCODINGS)}"
        )
    scaling = numeric_scaling or ("standard" if scale_numeric else "none")
    if scaling not in SCALINGS:
        raise UserError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    scale_numeric = scaling != "none"
    by_role: dict[str, list[Feature]] = {}
    for f in schema.features:
        by_role.setdefault(f.role, []).append(f)

    def scaled(*steps):
        return make_pipeline(*steps, *([StandardScaler()] if scale_numeric else []))

    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric := [f.name for f in by_role.get("numeric", [])]:
        impute = SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)
        if scaling == "quantile":
            # before the imputer: the quantiles ignore missing values, the indicators stay 0/1
            quantile = QuantileTransformer(
                n_quantiles=QUANTILES, output_distribution="normal", random_state=seed
            )
            transformers.append(("numeric", make_pipeline(Clipper(), quantile, impute), numeric))
        else:
            transformers.append(("numeric", scaled(Clipper(), impute), numeric))
    if boolean := [f.name for f in by_role.get("boolean", [])]:
        impute = SimpleImputer(
            strategy="most_frequent", add_indicator=True, keep_empty_features=True
        )
        transformers.append(("boolean", scaled(BooleanEncoder(), impute), boolean))
    for f in by_role.get("categorical", []):
        enc = _encoder(categorical_encoding, f.n_categories, schema.task, seed)
        steps = [CategoryCleaner(), enc]
        if scale_numeric and not isinstance(enc, OneHotEncoder):
            steps.append(StandardScaler())
        transformers.append((f"categorical_{f.name}", make_pipeline(*steps), [f.name]))
    if dates := [f.name for f in by_role.get("datetime", [])]:
        impute = SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)
        transformers.append(("datetime", scaled(DatetimeFeatures(), impute), dates))
    if text := [f.name for f in by_role.get("text", [])]:
        transformers.append(("text", scaled(TextFeatures()), text))
    return ColumnTransformer(
        transformers, remainder="drop", verbose_feature_names_out=False, sparse_threshold=0
    )
