"""Column roles: inferred from the values, overridable by the user.

Roles: numeric, categorical, boolean, datetime, text (features), and the
columns that are dropped: identifier (a different value in every row),
constant, all missing, or dropped on request. Each inference is recorded as a
decision with its reason, so the data report can say why.

A feature's `kind` is what serving validates a request value against
(`numeric`: a JSON number; `categorical`: a string, number or boolean); its
`role` says how the model's preprocessing treats it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from kfp_automl.errors import UserError
from kfp_automl.runtime.transformers import (
    FALSE_WORDS,
    TRUE_WORDS,
    boolean_values,
    category_strings,
    datetime_values,
)

ROLES = ("numeric", "categorical", "boolean", "datetime", "text")
OVERRIDES = (*ROLES, "drop")
KIND = {
    "numeric": "numeric",
    "categorical": "categorical",
    "boolean": "categorical",
    "datetime": "categorical",
    "text": "categorical",
}
MIN_ROWS_FOR_IDENTIFIER = 50
MIXED_NUMERIC_SHARE = 0.9  # text columns with at least this share of numbers are an error
DATETIME_SHARE = 0.95
TEXT_MIN_WORDS = 4.0  # mean words per value
SAMPLE = 2000
_DATE_LIKE = re.compile(r"^\s*\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}.*)?\s*$")
_PLACEHOLDER = re.compile(r"[^\w]*")  # no letter or digit: "?", "-", "." ...
_ID_NAME = re.compile(r"(^|[_\s-])(id|uuid|guid|key)$|^id[_\s-]", re.IGNORECASE)


@dataclass
class Overrides:
    """Roles the user fixed by flag or schema file: column -> role (or "drop")."""

    roles: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, **lists: list[str]) -> Overrides:
        """From flag lists, e.g. from_lists(drop=[...], categorical=[...]); a column given twice is an error."""
        roles: dict[str, str] = {}
        for role, names in lists.items():
            if role not in OVERRIDES:
                raise UserError(f"unknown column role {role!r}; choose from {', '.join(OVERRIDES)}")
            for name in names or []:
                if name in roles and roles[name] != role:
                    raise UserError(
                        f"column {name!r} is given two roles: --{roles[name]} and --{role}"
                    )
                roles[name] = role
        return cls(roles)

    def merged(self, other: Overrides) -> Overrides:
        """These overrides with `other`'s on top (flags over the schema file)."""
        return Overrides({**self.roles, **other.roles})

    def check(self, columns: list[str], target: str) -> None:
        for name, role in self.roles.items():
            if name not in columns:
                shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
                raise UserError(
                    f"--{role} names column {name!r}, which is not in the table; columns are: {shown}"
                )
            if name == target:
                raise UserError(
                    f"--{role} names the target column {name!r}; it cannot be a feature role"
                )


def parse_list(value: str | list[str] | None) -> list[str]:
    """Column names from a JSON array, a comma-separated string, or a list."""
    if not value:
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        import json

        try:
            return [str(v) for v in json.loads(value)]
        except ValueError:
            raise UserError(f"cannot read the column list {value!r}: not a JSON array") from None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


@dataclass
class Column:
    """The outcome for one column: a feature with a role, or dropped with a reason."""

    name: str
    role: str | None  # None: dropped
    reason: str
    values: pd.Series | None = None  # the column converted for its role (None: unchanged)
    warnings: list[str] = field(default_factory=list)


def _row(s: pd.Series, mask: np.ndarray) -> tuple[int, Any]:
    i = int(np.flatnonzero(mask)[0])
    return int(s.index[i]) + 1, s.iloc[i]


def _numbers(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce") if not ptypes.is_numeric_dtype(s) else s


def _is_text_like(s: pd.Series) -> bool:
    return ptypes.is_string_dtype(s) or ptypes.is_object_dtype(s)


def _boolean_pair(non_null: pd.Series) -> bool:
    values = set(non_null.astype(str).str.strip().str.lower().unique()[:3])
    return len(values) == 2 and values <= TRUE_WORDS | FALSE_WORDS and bool(values & TRUE_WORDS)


def _looks_datetime(non_null: pd.Series) -> bool:
    sample = non_null.astype(str).drop_duplicates().head(SAMPLE)
    if not len(sample) or sample.str.match(_DATE_LIKE).mean() < DATETIME_SHARE:
        return False
    parsed = pd.to_datetime(sample, errors="coerce", utc=True, format="mixed")
    return parsed.notna().mean() >= DATETIME_SHARE


def _mean_words(non_null: pd.Series) -> float:
    sample = non_null.astype(str).head(SAMPLE)
    return float(sample.str.split().str.len().mean()) if len(sample) else 0.0


def _identifier_reason(name: str, s: pd.Series, non_null: pd.Series, n_rows: int) -> str | None:
    if n_rows < MIN_ROWS_FOR_IDENTIFIER or len(non_null) < 0.9 * n_rows:
        return None
    if non_null.nunique() != len(non_null):
        return None
    with np.errstate(invalid="ignore"):
        integral = ptypes.is_float_dtype(s) and bool(
            np.all(np.mod(non_null.to_numpy(float), 1) == 0)
        )
    if ptypes.is_integer_dtype(s) or integral:
        v = non_null.to_numpy(dtype=float)
        consecutive = v.max() - v.min() + 1 <= 1.5 * len(v)
        if consecutive or _ID_NAME.search(name):
            return "identifier: a different whole number in every row" + (
                " (a running count)" if consecutive else ""
            )
        return None
    if ptypes.is_float_dtype(s) or ptypes.is_datetime64_any_dtype(s) or ptypes.is_bool_dtype(s):
        return None
    return "identifier: a different value in every row"


def infer_column(name: str, s: pd.Series, n_rows: int) -> Column:
    """The role of one column (not the target), with the reason."""
    non_null = s.dropna()
    if non_null.empty:
        return Column(
            name, None, "every value is missing", warnings=[f"column {name!r} is empty: dropped"]
        )
    if ptypes.is_bool_dtype(s):
        return (
            Column(name, "boolean", "true/false values")
            if non_null.nunique() > 1
            else Column(name, None, "constant column")
        )
    if non_null.nunique() <= 1:
        return Column(name, None, f"constant column (every value is {non_null.iloc[0]!r})")
    if ptypes.is_datetime64_any_dtype(s):
        return Column(name, "datetime", "datetime values")
    if ptypes.is_numeric_dtype(s):
        reason = _identifier_reason(name, s, non_null, n_rows)
        if reason:
            return Column(name, None, reason)
        return _finite(Column(name, "numeric", "numbers"), s)
    if not _is_text_like(s):
        return Column(name, "categorical", f"values of type {s.dtype}", values=category_strings(s))
    head = non_null.head(SAMPLE)
    share = float(pd.to_numeric(head, errors="coerce").notna().mean())
    if share >= MIXED_NUMERIC_SHARE:  # maybe numbers: check every value
        as_number = pd.to_numeric(non_null, errors="coerce")
        share = float(as_number.notna().mean())
    if share == 1.0:
        return _finite(Column(name, "numeric", "numbers stored as text", values=_numbers(s)), s)
    if share >= MIXED_NUMERIC_SHARE:
        text = non_null[as_number.isna().to_numpy()].astype(str)
        if text.str.fullmatch(_PLACEHOLDER).all():  # "?", "-", "." ... stand for missing
            shown = ", ".join(repr(v) for v in text.unique()[:3])
            col = Column(
                name, "numeric", "numbers with placeholders for missing", values=_numbers(s)
            )
            col.warnings.append(
                f"column {name!r}: {len(text)} placeholder values ({shown}) read as missing"
            )
            return _finite(col, s)
        row, value = _row(non_null, as_number.isna().to_numpy())
        raise UserError(
            f"column {name!r} mixes numbers and text: {share:.1%} of its values are numbers but "
            f"row {row} has {value!r}; fix the value, or pass --numeric {name} (text becomes "
            f"missing) or --categorical {name}"
        )
    if _boolean_pair(non_null):
        return Column(name, "boolean", "two values read as true/false")
    if _looks_datetime(non_null):
        return _as_datetime(name, s, "dates/times written as text")
    words = _mean_words(non_null)
    reason = _identifier_reason(name, s, non_null, n_rows)
    if words >= TEXT_MIN_WORDS and non_null.nunique() > 0.5 * len(non_null):
        return Column(name, "text", f"free text ({words:.1f} words per value on average)")
    if reason:
        return Column(name, None, reason)
    return Column(
        name,
        "categorical",
        f"{non_null.nunique()} distinct text values",
        values=category_strings(s),
    )


def _finite(col: Column, s: pd.Series) -> Column:
    """Infinite numbers become missing values (serving refuses them), with a warning."""
    values = col.values if col.values is not None else s
    v = values.to_numpy(dtype=float, na_value=np.nan)
    infinite = np.isinf(v)
    if infinite.any():
        row, value = _row(values, infinite)
        col.values = values.where(~infinite).astype(float)
        col.warnings.append(
            f"column {col.name!r}: {int(infinite.sum())} infinite values (row {row}: {value}); read as missing"
        )
        if col.values.notna().sum() == 0:
            return Column(
                col.name, None, "every value is missing or infinite", warnings=col.warnings
            )
    return col


def _as_datetime(name: str, s: pd.Series, reason: str) -> Column:
    parsed = datetime_values(s)
    bad = parsed.isna().to_numpy() & s.notna().to_numpy()
    warnings = []
    if bad.any():
        row, value = _row(s, bad)
        if bad.sum() > 0.5 * s.notna().sum():
            raise UserError(
                f"column {name!r} is not a date/time column: row {row} has {value!r} "
                f"({int(bad.sum())} values cannot be read as dates)"
            )
        warnings.append(
            f"column {name!r}: {int(bad.sum())} values are not dates (row {row}: {value!r}); read as missing"
        )
    return Column(name, "datetime", reason, values=parsed, warnings=warnings)


def apply_override(name: str, s: pd.Series, role: str) -> Column:
    """A column whose role the user fixed; conversions that lose values are recorded."""
    if role == "drop":
        return Column(name, None, "dropped on request")
    if role == "numeric":
        values = _numbers(s) if not ptypes.is_bool_dtype(s) else s.astype(float)
        bad = values.isna().to_numpy() & s.notna().to_numpy()
        warnings = []
        if bad.any():
            row, value = _row(s, bad)
            warnings.append(
                f"column {name!r}: {int(bad.sum())} values are not numbers (row {row}: {value!r}); read as missing"
            )
        if values.notna().sum() == 0:
            raise UserError(f"--numeric {name}: no value of column {name!r} is a number")
        col = Column(
            name, "numeric", "numeric on request", values=values.astype(float), warnings=warnings
        )
        return _finite(col, s)
    if role == "datetime":
        return _as_datetime(name, s, "datetime on request")
    if role == "boolean":
        values = boolean_values(s)
        bad = np.isnan(values) & s.notna().to_numpy()
        if bad.any():
            row, value = _row(s, bad)
            raise UserError(f"--boolean {name}: row {row} has {value!r}, which is not true/false")
        return Column(name, "boolean", "boolean on request")
    if role == "text":
        return Column(name, "text", "free text on request", values=category_strings(s))
    return Column(name, "categorical", "categorical on request", values=category_strings(s))


def describe(name: str, role: str, s: pd.Series, max_categories: int) -> dict[str, Any]:
    """The schema entry of a feature: role, serving kind, dtype, range or categories, missing rate."""
    info: dict[str, Any] = {
        "name": name,
        "kind": KIND[role],
        "role": role,
        "dtype": str(s.dtype),
        "required": True,
        "missing_rate": round(float(s.isna().mean()), 6),
    }
    non_null = s.dropna()
    if role == "numeric":
        info["min"], info["max"] = float(non_null.min()), float(non_null.max())
    elif role == "datetime":
        info["min"], info["max"] = non_null.min().isoformat(), non_null.max().isoformat()
    elif role in ("categorical", "boolean"):
        counts = non_null.astype(str).value_counts()
        info["n_categories"] = int(len(counts))
        info["categories"] = counts.index[:max_categories].tolist()
    return info
