"""Data preparation: validate the table, infer task and column roles, split.

Plain functions with no KFP imports; `component.py` is the thin adapter.
The schema written here is what tuning builds its preprocessing from and
what serving later checks requests against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from sklearn.model_selection import train_test_split

from components.common.errors import UserError

TASKS = ("auto", "classification", "regression")
MIN_ROWS = 50
MIN_ROWS_PER_CLASS = 3
MAX_CLASSES = 50
MAX_CATEGORIES_RECORDED = 200
SCHEMA_VERSION = 1


@dataclass
class Prepared:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    schema: dict[str, Any]


def _preview(values) -> str:
    return ", ".join(repr(v) for v in list(values)[:3])


def infer_task(y: pd.Series, requested: str = "auto") -> str:
    """Decide classification or regression for target `y` (missing values already removed)."""
    if requested not in TASKS:
        raise UserError(f"unknown task {requested!r}; choose one of {', '.join(TASKS)}")
    numeric = ptypes.is_numeric_dtype(y) and not ptypes.is_bool_dtype(y)
    if requested == "regression":
        if not numeric:
            bad = y[pd.to_numeric(y, errors="coerce").isna()].unique()
            raise UserError(
                f"--task regression needs a numeric target; column {y.name!r} has values like {_preview(bad)}"
            )
        return "regression"
    if requested == "classification":
        return "classification"
    if not numeric:
        return "classification"
    n_unique = y.nunique()
    is_integral = ptypes.is_integer_dtype(y) or bool(
        np.all(np.mod(y.to_numpy(dtype=float), 1) == 0)
    )
    if is_integral and n_unique <= min(MAX_CLASSES, max(2, len(y) // 20)) and n_unique <= 20:
        return "classification"
    return "regression"


def _feature_kind(s: pd.Series) -> str:
    if ptypes.is_bool_dtype(s) or ptypes.is_numeric_dtype(s):
        return "numeric"
    if ptypes.is_datetime64_any_dtype(s):
        return "datetime"
    return "categorical"


def describe_features(df: pd.DataFrame, target: str) -> tuple[list[dict], list[dict]]:
    """Column roles: (kept features with their statistics, dropped columns with the reason)."""
    features, dropped = [], []
    n = len(df)
    for name in df.columns:
        if name == target:
            continue
        s = df[name]
        kind = _feature_kind(s)
        non_null = s.dropna()
        n_unique = non_null.nunique()
        if non_null.empty:
            dropped.append({"name": name, "reason": "every value is missing"})
            continue
        if n_unique <= 1:
            dropped.append({"name": name, "reason": "constant column"})
            continue
        if kind == "datetime":
            dropped.append({"name": name, "reason": "datetime columns are not used yet"})
            continue
        if (
            kind == "categorical"
            and n_unique == len(non_null)
            and n_unique > 0.5 * n
            and n >= MIN_ROWS
        ):
            dropped.append({"name": name, "reason": "identifier: a different value in every row"})
            continue
        info: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "dtype": str(s.dtype),
            "required": True,
            "missing_rate": round(float(s.isna().mean()), 6),
        }
        if kind == "numeric":
            values = non_null.astype(float)
            info["min"] = float(values.min())
            info["max"] = float(values.max())
        else:
            counts = non_null.astype(str).value_counts()
            info["n_categories"] = int(len(counts))
            info["categories"] = counts.index[:MAX_CATEGORIES_RECORDED].tolist()
        features.append(info)
    return features, dropped


def validate(df: pd.DataFrame, target: str, task: str = "auto") -> tuple[pd.DataFrame, str, int]:
    """Check the table can be trained on.

    Returns the rows with a target, the resolved task and how many rows were
    dropped for a missing target. Every problem is a UserError naming it.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if len(df) == 0:
        raise UserError("the table has no rows")
    if target not in df.columns:
        cols = list(map(str, df.columns))
        shown = ", ".join(cols[:20]) + (", ..." if len(cols) > 20 else "")
        raise UserError(f"target column {target!r} not found; columns are: {shown}")
    if df.shape[1] < 2:
        raise UserError(
            f"the table has only the target column {target!r}; there is nothing to learn from"
        )
    missing = df[target].isna()
    data = df.loc[~missing].reset_index(drop=True)
    if len(data) < MIN_ROWS:
        raise UserError(
            f"only {len(data)} rows have a value for target {target!r}; at least {MIN_ROWS} are needed"
        )
    if task == "regression" and not ptypes.is_numeric_dtype(data[target]):
        as_number = pd.to_numeric(data[target], errors="coerce")
        if as_number.notna().all():  # numbers stored as text
            data[target] = as_number
    y = data[target]
    resolved = infer_task(y, task)
    if resolved == "classification":
        counts = y.value_counts()
        if len(counts) < 2:
            raise UserError(
                f"target {target!r} has a single class ({counts.index[0]!r}); classification needs two or more"
            )
        if len(counts) > MAX_CLASSES:
            raise UserError(
                f"target {target!r} has {len(counts)} classes (at most {MAX_CLASSES}); "
                "use --task regression for a numeric target"
            )
        rare = counts[counts < MIN_ROWS_PER_CLASS]
        if len(rare):
            raise UserError(
                f"target class {rare.index[0]!r} has only {int(rare.iloc[0])} rows; "
                f"every class needs at least {MIN_ROWS_PER_CLASS} to split into train, valid and test"
            )
    features, _ = describe_features(data.head(5000), target)
    if not features:
        raise UserError(f"no usable feature columns besides target {target!r}")
    return data, resolved, int(missing.sum())


def split(
    df: pd.DataFrame,
    target: str,
    task: str,
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train/valid/test split, stratified on the target for classification."""
    if not (0 < valid_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise UserError("valid and test fractions must each be between 0 and 0.5")
    strat = df[target] if task == "classification" else None
    try:
        rest, test = train_test_split(
            df, test_size=test_fraction, random_state=seed, stratify=strat
        )
        strat = rest[target] if task == "classification" else None
        train, valid = train_test_split(
            rest,
            test_size=valid_fraction / (1 - test_fraction),
            random_state=seed,
            stratify=strat,
        )
    except ValueError as exc:
        raise UserError(f"cannot split the table: {exc}") from None
    return (
        train.reset_index(drop=True),
        valid.reset_index(drop=True),
        test.reset_index(drop=True),
    )


def _json_labels(values) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values]


def prepare(
    df: pd.DataFrame,
    target: str,
    task: str = "auto",
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Prepared:
    """Validate, describe and split `df`; return the splits and their schema."""
    from components.common.profile import fingerprint

    n_input = len(df)
    data_fingerprint = fingerprint(df)
    data, resolved, n_missing_target = validate(df, target, task)
    features, dropped = describe_features(data, target)
    keep = [f["name"] for f in features] + [target]
    data = data[keep]
    train, valid, test = split(data, target, resolved, seed, valid_fraction, test_fraction)
    schema: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "target": target,
        "task": resolved,
        "data_fingerprint": data_fingerprint,
        "features": features,
        "dropped": dropped,
        "rows": {
            "input": n_input,
            "missing_target": n_missing_target,
            "train": len(train),
            "valid": len(valid),
            "test": len(test),
        },
    }
    if resolved == "classification":
        schema["classes"] = _json_labels(sorted(data[target].unique()))
    return Prepared(train, valid, test, schema)


def run(
    data: str,
    target: str,
    train_path: str,
    valid_path: str,
    test_path: str,
    schema_path: str,
    profile_path: str,
    task: str = "auto",
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, Any]:
    """Read `data`, prepare it; write the splits (Parquet), the schema and the reference profile (JSON).

    An empty `data` means the built-in demo table (and its target when `target` is empty).
    Returns the schema.
    """
    from components.common.io import (
        DEFAULT_DATASET,
        DEFAULT_TARGET,
        read_table,
        write_json,
        write_parquet,
    )
    from components.common.profile import build_profile
    from components.common.progress import say

    if not data:
        data, target = str(DEFAULT_DATASET), target or DEFAULT_TARGET
    say("prepare", f"reading {data}")
    df = read_table(data)
    prepared = prepare(df, target, task, seed, valid_fraction, test_fraction)
    for path, frame in (
        (train_path, prepared.train),
        (valid_path, prepared.valid),
        (test_path, prepared.test),
    ):
        write_parquet(path, frame)
    write_json(schema_path, prepared.schema)
    write_json(profile_path, build_profile(prepared.train, prepared.schema))
    s = prepared.schema
    rows = s["rows"]
    say(
        "prepare",
        f"{s['task']} on {target!r}: {len(s['features'])} features, {len(s['dropped'])} columns dropped; "
        f"train/valid/test rows {rows['train']}/{rows['valid']}/{rows['test']}",
    )
    return prepared.schema
