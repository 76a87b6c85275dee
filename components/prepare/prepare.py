"""Data preparation: validate the table, infer the task and column roles, clean, split.

Plain functions with no KFP imports; `component.py` is the thin adapter.
The schema written here is what tuning builds its preprocessing from
(kfp_automl/runtime/transformers.py) and what serving checks requests against.
Every automatic decision (a role, a dropped column or row, the split) is
recorded in the schema's `decisions` with its reason; `warnings` lists what
a person should look at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from kfp_automl.components.prepare.association import LEAK_SCORE, association
from kfp_automl.components.prepare.roles import (
    Column,
    Overrides,
    apply_override,
    describe,
    infer_column,
)
from kfp_automl.components.prepare.splitting import split
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.tables.repeats import repeat_keys

__all__ = [
    "Checked",
    "Options",
    "Prepared",
    "check",
    "describe_features",
    "infer_task",
    "prepare",
    "split",
    "validate",
]

TASKS = ("auto", "classification", "regression")
MIN_ROWS = 50
MIN_ROWS_PER_CLASS = 3
MAX_CLASSES = 50
MAX_CATEGORIES_RECORDED = 200
SCHEMA_VERSION = 2
HIGH_MISSING = 0.5
IMBALANCE = 0.05


@dataclass
class Options:
    """What the user may set about preparation (flags, component parameters, a schema file)."""

    drop: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    datetime: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    boolean: list[str] = field(default_factory=list)
    schema_file: str = ""
    time_column: str = ""
    group_column: str = ""
    # exact repeats of a row are observations (distinct records that look the same) and are
    # kept, each set of identical rows on one side of every split; True drops them instead
    drop_duplicates: bool = False

    def overrides(self) -> Overrides:
        from_file = load_schema_file(self.schema_file) if self.schema_file else Overrides()
        flags = Overrides.from_lists(
            drop=self.drop,
            categorical=self.categorical,
            numeric=self.numeric,
            datetime=self.datetime,
            text=self.text,
            boolean=self.boolean,
        )
        return from_file.merged(flags)


@dataclass
class Prepared:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    schema: Schema


def load_schema_file(path: str) -> Overrides:
    """Column roles from a small YAML/JSON file: `{columns: {name: role}}` and/or `{drop: [names]}`."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--schema-file {path!r} cannot be read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise UserError(
            f"--schema-file {path!r} is not valid YAML/JSON: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(doc, dict) or not set(doc) <= {"columns", "drop"}:
        raise UserError(
            f"--schema-file {path!r} must be a mapping with 'columns' ({{name: role}}) and/or 'drop' ([names])"
        )
    columns = doc.get("columns") or {}
    if not isinstance(columns, dict):
        raise UserError(f"--schema-file {path!r}: 'columns' must map column names to roles")
    lists: dict[str, list[str]] = {"drop": [str(c) for c in doc.get("drop") or []]}
    for name, role in columns.items():
        lists.setdefault(str(role), []).append(str(name))
    return Overrides.from_lists(**lists)


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


def _check_table(df: pd.DataFrame, target: str, task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    names = [str(c) for c in df.columns]
    if len(set(names)) < len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise UserError(f"column name {dup!r} appears more than once; column names must be unique")
    if len(df) == 0:
        raise UserError("the table has no rows")
    if target not in df.columns:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise UserError(f"target column {target!r} not found; columns are: {shown}")
    if df.shape[1] < 2:
        raise UserError(
            f"the table has only the target column {target!r}; there is nothing to learn from"
        )
    if df[target].isna().all():
        raise UserError(f"target column {target!r} is empty: no row has a value")


def _check_target(data: pd.DataFrame, target: str, task: str) -> str:
    """The resolved task; every problem with the target is a UserError naming it."""
    if len(data) < MIN_ROWS:
        raise UserError(
            f"only {len(data)} rows have a value for target {target!r}; at least {MIN_ROWS} are needed"
        )
    if task == "regression" and not ptypes.is_numeric_dtype(data[target]):
        as_number = pd.to_numeric(data[target], errors="coerce")
        if as_number.notna().all():  # numbers stored as text
            data[target] = as_number
    y = data[target]
    if ptypes.is_numeric_dtype(y) and not ptypes.is_bool_dtype(y):
        bad = ~np.isfinite(y.to_numpy(dtype=float))
        if bad.any():
            row = int(data.index[np.flatnonzero(bad)[0]]) + 1
            raise UserError(f"target {target!r} has an infinite value in row {row}")
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
    return resolved


def validate(df: pd.DataFrame, target: str, task: str = "auto") -> tuple[pd.DataFrame, str, int]:
    """Check the table's shape and target can be trained on.

    Returns the rows with a target (index reset), the resolved task and how many
    rows were dropped for a missing target. Every problem is a UserError naming it.
    """
    _check_table(df, target, task)
    missing = df[target].isna()
    data = df.loc[~missing].copy()
    resolved = _check_target(data, target, task)
    return data.reset_index(drop=True), resolved, int(missing.sum())


def _roles(
    data: pd.DataFrame, target: str, overrides: Overrides, group_column: str
) -> list[Column]:
    out = []
    for name in data.columns:
        if name == target:
            continue
        if name in overrides.roles:
            out.append(apply_override(name, data[name], overrides.roles[name]))
        elif name == group_column:
            out.append(Column(name, None, "the group column: used to split, not as a feature"))
        else:
            out.append(infer_column(name, data[name], len(data)))
    return out


def describe_features(
    df: pd.DataFrame, target: str, overrides: Overrides | None = None
) -> tuple[list[dict], list[dict]]:
    """Column roles: (kept features with their statistics, dropped columns with the reason)."""
    features, dropped = [], []
    for col in _roles(df, target, overrides or Overrides(), ""):
        if col.role is None:
            dropped.append({"name": col.name, "reason": col.reason})
        else:
            values = col.values if col.values is not None else df[col.name]
            features.append(describe(col.name, col.role, values, MAX_CATEGORIES_RECORDED))
    return features, dropped


def _json_labels(values) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values]


def _decision(column: str, action: str, reason: str) -> dict[str, str]:
    return {"column": column, "action": action, "reason": reason}


def _fitted_decisions(feature: dict[str, Any], train: pd.Series) -> list[dict[str, str]]:
    """What the model's preprocessing will learn from these training rows: clip bounds, rare groups."""
    from kfp_automl.runtime.transformers import (
        CLIP_QUANTILES,
        RARE,
        RARE_MIN_COUNT,
        RARE_MIN_SHARE,
        category_strings,
    )

    name, role = feature["name"], feature["role"]
    if role == "numeric":
        v = train.to_numpy(dtype=float, na_value=np.nan)
        v = v[np.isfinite(v)]
        if not len(v):
            return []
        low, high = np.quantile(v, CLIP_QUANTILES)
        n_out = int(np.sum((v < low) | (v > high)))
        if not n_out:
            return []
        return [
            _decision(
                name,
                "clipping",
                f"clipped to [{low:.6g}, {high:.6g}] (train 0.1/99.9 percentiles): "
                f"{n_out} train values beyond",
            )
        ]
    if role == "categorical":
        counts = category_strings(train).value_counts()
        rare = counts[counts < max(RARE_MIN_COUNT, RARE_MIN_SHARE * len(train))]
        if not len(rare):
            return []
        shown = ", ".join(map(repr, rare.index[:3])) + (", ..." if len(rare) > 3 else "")
        return [
            _decision(
                name,
                "grouping",
                f"{len(rare)} rare categories ({int(rare.sum())} train rows, e.g. {shown}) "
                f"grouped as {RARE!r}",
            )
        ]
    return []


def _split_name(options: Options) -> str:
    if options.time_column:
        return f"time-ordered on {options.time_column!r}: the latest rows are the test rows"
    if options.group_column:
        return f"by group {options.group_column!r}: a group never spans two splits"
    return "random"


@dataclass
class _Cleaned:
    """The table after the checks every caller needs: rows with a target, no duplicates."""

    data: pd.DataFrame
    task: str  # resolved
    columns: list[Column]
    decisions: list[dict[str, str]]
    warnings: list[str]
    n_missing_target: int
    n_duplicates: int


def _clean(df: pd.DataFrame, target: str, task: str, options: Options) -> _Cleaned:
    """The table's and the flags' checks, the rows without a target or repeated dropped, and
    each column's role: everything but the leakage guard, the split and the descriptions."""
    _check_table(df, target, task)
    overrides = options.overrides()
    overrides.check([str(c) for c in df.columns], target)
    decisions: list[dict[str, str]] = []
    warnings: list[str] = [f"read: {note}" for note in df.attrs.get("read_notes", [])]

    missing = df[target].isna()
    data = df.loc[~missing] if missing.any() else df.copy(deep=False)  # copy-on-write
    if missing.any():
        decisions.append(
            _decision(target, "dropped rows", f"{int(missing.sum())} rows have no target value")
        )
    duplicated = data.duplicated()
    n_duplicates = int(duplicated.sum())
    if n_duplicates and not options.drop_duplicates:
        if len(data) - n_duplicates < MIN_ROWS:  # the splits are drawn over distinct rows
            raise UserError(
                f"only {len(data) - n_duplicates} distinct rows have a value for target "
                f"{target!r} ({n_duplicates} rows repeat them exactly); at least {MIN_ROWS} "
                "are needed"
            )
        decisions.append(
            _decision(
                "(all)",
                "kept repeated rows",
                f"{n_duplicates} rows repeat an earlier row exactly: kept as observations, each "
                "set of identical rows on one side of every split and validation fold "
                "(drop_duplicates drops them)",
            )
        )
    elif n_duplicates:
        data = data.loc[~duplicated]
        decisions.append(_decision("(all)", "dropped rows", f"{n_duplicates} exact duplicate rows"))
        if len(data) < MIN_ROWS:
            raise UserError(
                f"only {len(data)} distinct rows have a value for target {target!r} "
                f"({n_duplicates} exact duplicate rows dropped); at least {MIN_ROWS} are needed"
            )
    resolved = _check_target(data, target, task)
    if resolved == "classification" and task == "auto":
        decisions.append(
            _decision(target, "task", "classification: text, boolean or few whole-number values")
        )
    elif task == "auto":
        decisions.append(_decision(target, "task", "regression: numbers with many distinct values"))
    columns = _roles(data, target, overrides, options.group_column)
    if not any(c.role is not None for c in columns):
        dropped = [f"{c.name}: {c.reason}" for c in columns]
        raise UserError(
            f"no usable feature columns besides target {target!r} ({'; '.join(dropped[:5])})"
        )
    return _Cleaned(data, resolved, columns, decisions, warnings, int(missing.sum()), n_duplicates)


def _split_columns(data: pd.DataFrame, options: Options) -> pd.DataFrame:
    """The time column parsed as times when nearly every value is one (else left to split()
    to name the column and a value)."""
    column = options.time_column
    if (
        column
        and column in data
        and not (
            ptypes.is_datetime64_any_dtype(data[column]) or ptypes.is_numeric_dtype(data[column])
        )
    ):
        parsed = pd.to_datetime(data[column], errors="coerce", format="mixed")
        if parsed.notna().mean() >= 0.95:
            data = data.assign(**{column: parsed})
    return data


@dataclass
class Checked:
    """What `check` learned: the resolved task and the target's values on the kept rows."""

    task: str
    y: pd.Series


def check(
    df: pd.DataFrame,
    target: str,
    task: str = "auto",
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    options: Options | None = None,
) -> Checked:
    """Every mistake `prepare` would report about this table and these flags, found cheaply.

    The command line runs this before it starts a pipeline: the roles are inferred (a
    sample of each column) and the split is tried on the target and split columns alone;
    the leakage guard, which fits a model per column, is the prepare step's. A table whose
    every feature leaks the target is the one mistake only the step finds.
    """
    options = options or Options()
    cleaned = _clean(df, target, task, options)
    keep = [target, *(c for c in (options.time_column, options.group_column) if c in df)]
    frame = _split_columns(cleaned.data[list(dict.fromkeys(keep))], options)
    split(
        frame,
        target,
        cleaned.task,
        seed,
        valid_fraction,
        test_fraction,
        options.time_column,
        options.group_column,
        keys=repeat_keys(cleaned.data.drop(columns=[target])),
    )
    return Checked(cleaned.task, cleaned.data[target])


def prepare(
    df: pd.DataFrame,
    target: str,
    task: str = "auto",
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    options: Options | None = None,
) -> Prepared:
    """Validate, clean, describe and split `df`; return the splits and their schema."""
    from kfp_automl.components.prepare.profile import fingerprint
    from kfp_automl.runtime.transformers import HIGH_CARDINALITY

    options = options or Options()
    n_input = len(df)
    data_fingerprint = fingerprint(df)
    cleaned = _clean(df, target, task, options)
    data, resolved, columns = cleaned.data, cleaned.task, cleaned.columns
    decisions, warnings = cleaned.decisions, cleaned.warnings
    n_duplicates = cleaned.n_duplicates
    for col in columns:
        warnings.extend(col.warnings)
        action = f"role {col.role}" if col.role else "dropped"
        decisions.append(_decision(col.name, action, col.reason))
    kept = [c for c in columns if c.role is not None]
    work = pd.DataFrame(
        {c.name: (c.values if c.values is not None else data[c.name]) for c in kept},
        index=data.index,
        copy=False,
    )
    work[target] = data[target]
    scores = association(work, {c.name: c.role for c in kept}, target, resolved, seed)
    dropped = [{"name": c.name, "reason": c.reason} for c in columns if c.role is None]
    leaks = [n for n, v in scores.items() if v >= LEAK_SCORE]
    for name in leaks:
        reason = f"leakage: predicts the target on its own (held-out score {scores[name]:.3f})"
        dropped.append({"name": name, "reason": reason})
        decisions.append(_decision(name, "dropped", reason))
        warnings.append(f"column {name!r} {reason}; it was dropped")
    kept = [c for c in kept if c.name not in leaks]
    if not kept:
        reasons = "; ".join(f"{d['name']}: {d['reason']}" for d in dropped[:5])
        raise UserError(f"no usable feature columns besides target {target!r} ({reasons})")

    for extra in (options.time_column, options.group_column):
        if extra and extra not in work.columns and extra in data.columns:
            work[extra] = data[extra]
    work = _split_columns(work, options)
    train, valid, test = split(
        work,
        target,
        resolved,
        seed,
        valid_fraction,
        test_fraction,
        options.time_column,
        options.group_column,
    )
    decisions.append(_decision("(all)", "split", f"{_split_name(options)}, seed {seed}"))
    names = [c.name for c in kept]
    train, valid, test = (part[[*names, target]] for part in (train, valid, test))
    features = [describe(c.name, c.role, work[c.name], MAX_CATEGORIES_RECORDED) for c in kept]
    for f in features:
        f["association"] = scores.get(f["name"])
        if f["missing_rate"] > HIGH_MISSING:
            warnings.append(f"column {f['name']!r} is {f['missing_rate']:.0%} missing")
        decisions.extend(_fitted_decisions(f, train[f["name"]]))
        if f["role"] == "categorical":
            how = (
                "target encoding (cross-fitted)"
                if f["n_categories"] > HIGH_CARDINALITY
                else "one-hot"
            )
            decisions.append(
                _decision(f["name"], "encoding", f"{how}: {f['n_categories']} categories")
            )
        if f["role"] in ("numeric", "boolean", "datetime") and f["missing_rate"] > 0:
            decisions.append(
                _decision(
                    f["name"], "imputation", "missing values imputed, with a missing indicator"
                )
            )
    schema: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "target": target,
        "task": resolved,
        "data_fingerprint": data_fingerprint,
        "features": features,
        "dropped": dropped,
        "required": [f["name"] for f in features],
        "decisions": decisions,
        "warnings": warnings,
        "split": {
            "strategy": "time"
            if options.time_column
            else "group"
            if options.group_column
            else "random",
            "time_column": options.time_column,
            "group_column": options.group_column,
            "seed": seed,
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
        },
        "rows": {
            "input": n_input,
            "missing_target": cleaned.n_missing_target,
            "duplicates": n_duplicates,
            "duplicates_dropped": bool(options.drop_duplicates and n_duplicates),
            "train": len(train),
            "valid": len(valid),
            "test": len(test),
        },
    }
    if resolved == "classification":
        y = data[target]
        schema["classes"] = _json_labels(sorted(y.unique()))
        shares = y.value_counts(normalize=True)
        if shares.iloc[-1] < IMBALANCE:
            warnings.append(
                f"target class {shares.index[-1]!r} is {shares.iloc[-1]:.1%} of the rows: imbalanced classes"
            )
    return Prepared(train, valid, test, Schema.from_dict(schema))


def run(
    *,
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
    options: Options | None = None,
    report_path: str = "",
    summary_path: str = "",
) -> Schema:
    """Read `data`, prepare it; write the splits (Parquet), the schema and profile (JSON), the report.

    An empty `data` means the built-in demo table (and its target when `target` is empty).
    Nothing is written unless preparation succeeds. Returns the schema.
    """
    from kfp_automl.components.prepare.profile import build_profile
    from kfp_automl.components.prepare.report import render_html, render_markdown
    from kfp_automl.files import atomic_path
    from kfp_automl.progress import say
    from kfp_automl.tables.io import DEFAULT_DATASET, DEFAULT_TARGET, read_table, write_parquet

    if not data:
        data, target = str(DEFAULT_DATASET), target or DEFAULT_TARGET
    say("prepare", f"reading {data}")
    df = read_table(data)
    say("prepare", f"{len(df)} rows, {df.shape[1]} columns; inferring roles and cleaning")
    prepared = prepare(df, target, task, seed, valid_fraction, test_fraction, options)
    del df
    profile = build_profile(prepared.train, prepared.schema)
    html = render_html(prepared.schema, prepared.train, profile) if report_path else ""
    markdown = render_markdown(prepared.schema) if summary_path else ""
    for path, frame in (
        (train_path, prepared.train),
        (valid_path, prepared.valid),
        (test_path, prepared.test),
    ):
        write_parquet(path, frame)
    prepared.schema.write(schema_path)
    profile.write(profile_path)
    for path, text in ((report_path, html), (summary_path, markdown)):
        if path:
            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
    s = prepared.schema
    rows = s.rows
    say(
        "prepare",
        f"{s.task} on {target!r}: {len(s.features)} features, {len(s.dropped)} columns dropped; "
        f"train/valid/test rows {rows['train']}/{rows['valid']}/{rows['test']}",
    )
    for warning in s.warnings:
        say("prepare", f"warning: {warning}")
    return prepared.schema
