"""Train/valid/test splits: stratified, time-ordered, or by group; seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from kfp_automl.errors import UserError
from kfp_automl.tables.repeats import first_positions, repeat_keys


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if not (0 < valid_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise UserError("valid and test fractions must each be between 0 and 0.5")


def random_split(
    df: pd.DataFrame, target: str, task: str, seed: int, valid_fraction: float, test_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Random rows, stratified on the target for classification."""
    strat = df[target] if task == "classification" else None
    try:
        rest, test = train_test_split(
            df, test_size=test_fraction, random_state=seed, stratify=strat
        )
        strat = rest[target] if task == "classification" else None
        train, valid = train_test_split(
            rest, test_size=valid_fraction / (1 - test_fraction), random_state=seed, stratify=strat
        )
    except ValueError as exc:
        raise UserError(f"cannot split the table: {exc}") from None
    return train, valid, test


def time_split(
    df: pd.DataFrame, column: str, valid_fraction: float, test_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The latest rows by `column` are the test rows, the ones before them the validation rows."""
    t = df[column]
    if not (ptypes.is_datetime64_any_dtype(t) or ptypes.is_numeric_dtype(t)):
        raise UserError(
            f"--time-column {column!r} must hold dates/times or numbers; it has values like {t.dropna().iloc[0]!r}"
        )
    if t.isna().any():
        row = int(t.index[np.flatnonzero(t.isna().to_numpy())[0]]) + 1
        raise UserError(
            f"--time-column {column!r} has a missing value (row {row}); every row needs a time"
        )
    ordered = df.iloc[np.argsort(t.to_numpy(), kind="stable")]
    n = len(ordered)
    n_test, n_valid = max(1, round(n * test_fraction)), max(1, round(n * valid_fraction))
    return (
        ordered.iloc[: n - n_test - n_valid],
        ordered.iloc[n - n_test - n_valid : n - n_test],
        ordered.iloc[n - n_test :],
    )


def group_split(
    df: pd.DataFrame,
    column: str,
    target: str,
    task: str,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Whole groups of `column` go to one split; classes stay balanced where groups allow."""
    groups = df[column].astype(str).fillna("(missing)").to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        raise UserError(
            f"--group-column {column!r} has {n_groups} groups; a train/valid/test split needs at least 3"
        )

    def cut(frame: pd.DataFrame, g: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        if task == "classification":
            n_splits = max(2, min(round(1 / fraction), len(np.unique(g))))
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            return next(folds.split(frame, frame[target].astype(str), g))
        gss = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        return next(gss.split(frame, groups=g))

    rest_idx, test_idx = cut(df, groups, test_fraction)
    rest = df.iloc[rest_idx]
    train_idx, valid_idx = cut(rest, groups[rest_idx], valid_fraction / (1 - test_fraction))
    return rest.iloc[train_idx], rest.iloc[valid_idx], df.iloc[test_idx]


def _keeping_repeats_together(
    df: pd.DataFrame,
    target: str,
    task: str,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
    keys: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A random split of the distinct inputs; every row with the same feature values goes where
    the first goes, so no input is in one split and its exact copy in another (a model would
    be scored on inputs it was fitted on). Grouped by the inputs, not the whole rows: one input
    seen with both labels must not have its labels split apart (the model would be scored
    against the label it never saw for it). `keys`: which distinct input each row has
    (default: of `df`'s columns but the target)."""
    keys = repeat_keys(df.drop(columns=[target])) if keys is None else keys
    first = first_positions(keys)
    n_distinct = len(first)
    if n_distinct == len(df):
        return random_split(df, target, task, seed, valid_fraction, test_fraction)
    distinct = df.iloc[first].reset_index(drop=True)  # row j is distinct row j
    side = np.empty(n_distinct, dtype=np.int8)
    for i, part in enumerate(
        random_split(distinct, target, task, seed, valid_fraction, test_fraction)
    ):
        side[part.index.to_numpy()] = i
    row_side = side[keys]
    return tuple(df.iloc[np.flatnonzero(row_side == i)] for i in range(3))  # type: ignore[return-value]


def split(
    df: pd.DataFrame,
    target: str,
    task: str,
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    time_column: str = "",
    group_column: str = "",
    keys: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train/valid/test rows (index reset); checks every split can be trained and scored.

    A random split keeps rows with identical inputs together: `keys` says which distinct
    input each row has (repeats.repeat_keys of the feature columns; default: of `df`'s columns
    but the target)."""
    _check_fractions(valid_fraction, test_fraction)
    if time_column and group_column:
        raise UserError("--time-column and --group-column cannot be combined; choose one")
    for flag, column in (("--time-column", time_column), ("--group-column", group_column)):
        if column and column not in df.columns:
            raise UserError(f"{flag} {column!r} is not a column of the table")
        if column == target:
            raise UserError(f"{flag} cannot be the target column {target!r}")
    if time_column:
        parts = time_split(df, time_column, valid_fraction, test_fraction)
    elif group_column:
        parts = group_split(df, group_column, target, task, seed, valid_fraction, test_fraction)
    else:
        parts = _keeping_repeats_together(
            df, target, task, seed, valid_fraction, test_fraction, keys
        )
    train, valid, test = (p.reset_index(drop=True) for p in parts)
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if len(part) == 0:
            raise UserError(f"the {name} split is empty: the table is too small for this split")
    if task == "classification":
        missing = set(df[target].unique()) - set(train[target].unique())
        if missing:
            raise UserError(
                f"target class {sorted(map(str, missing))[0]!r} has no rows in the train split "
                "(its rows fall in later times or other groups); it cannot be learned"
            )
        if train[target].nunique() < 2:
            raise UserError(f"the train split has a single class of {target!r}")
    return train, valid, test
