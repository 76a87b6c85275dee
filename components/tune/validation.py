"""How a trial is validated: k-fold cross-validation on small data, the holdout on large.

On very small data (up to CV_REPEAT_MAX_ROWS rows) the k folds are drawn
REPEATS times with different shuffles: one k-fold estimate is too noisy there
to rank configurations (the search would chase the folds' luck), and such
trials are so short that Ray's fixed cost per trial would otherwise dominate.

Both come out as one frame of rows plus a list of (fit rows, score rows) splits,
so a trial does not care which it got. The rows every split scores, in split
order, are the "evaluation rows": their predictions (out-of-fold for CV, the
valid split for the holdout) are what ensemble selection combines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.tables.repeats import first_positions, repeat_keys

CV_MAX_ROWS = 10_000  # train+valid rows up to which trials cross-validate
CV_REPEAT_MAX_ROWS = 2_000  # ... and up to which the folds are repeated
REPEATS = 3
DEFAULT_FOLDS = 5
KINDS = ("auto", "cv", "holdout")


@dataclass
class Plan:
    kind: str  # "cv" or "holdout"
    X: pd.DataFrame  # train+valid features
    y: pd.Series
    splits: list[tuple[np.ndarray, np.ndarray]]  # (fit positions, score positions)
    repeats: int = 1  # CV: how many times the folds were drawn (each row scored that often)

    def describe(self) -> str:
        if self.kind != "cv":
            return "holdout validation"
        folds = len(self.splits) // self.repeats
        return f"cv validation ({folds} folds" + (
            f" x {self.repeats} repeats)" if self.repeats > 1 else ")"
        )

    @property
    def eval_positions(self) -> np.ndarray:
        """The positions of the evaluation rows, in the order trials report predictions."""
        return np.concatenate([va for _, va in self.splits])


def choose(kind: str, n_rows: int, cv_max_rows: int = CV_MAX_ROWS) -> str:
    """ "cv" or "holdout": `kind` unless it is "auto", which picks CV up to `cv_max_rows` rows."""
    if kind not in KINDS:
        raise UserError(f"unknown validation {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "cv" if n_rows <= cv_max_rows else "holdout"


def plan(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: Schema,
    kind: str = "auto",
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    repeats: int | None = None,
) -> Plan:
    """The validation plan for train+valid: CV folds over both, or fit on train, score on valid.

    `repeats`: how often CV draws its folds; None repeats REPEATS times up to
    CV_REPEAT_MAX_ROWS rows, once above.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    target = schema.target
    data = pd.concat([train, valid], ignore_index=True)
    X, y = data.drop(columns=[target]), data[target]
    chosen = choose(kind, len(data))
    if chosen == "holdout":
        fit = np.arange(len(train))
        return Plan("holdout", X, y, [(fit, np.arange(len(train), len(data)))])
    if folds < 2:
        raise UserError(f"cv_folds must be at least 2, got {folds}")
    if repeats is None:
        repeats = REPEATS if len(data) <= CV_REPEAT_MAX_ROWS else 1
    classification = schema.task == "classification"
    # rows with identical inputs stay in one fold: folds are drawn over the distinct inputs,
    # and every repeat follows (else a trial is scored on inputs it was fitted on)
    keys = repeat_keys(X)
    first = first_positions(keys)
    n_distinct = len(first)
    y_fold = y.iloc[first] if n_distinct < len(data) else y
    k = (
        max(2, min(folds, int(y_fold.value_counts().min())))
        if classification
        else min(folds, len(y_fold))
    )
    splits = []
    for r in range(max(1, repeats)):  # each repeat a different shuffle, stratified alike
        kind = StratifiedKFold if classification else KFold
        splitter = kind(n_splits=k, shuffle=True, random_state=seed + r)
        if n_distinct == len(data):
            splits += [(tr, va) for tr, va in splitter.split(X, y)]
            continue
        for _, va_distinct in splitter.split(np.zeros(n_distinct), y_fold):
            held = np.isin(keys, va_distinct)
            splits.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return Plan("cv", X, y, splits, max(1, repeats))


def keep_positions(n_eval: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """Which evaluation rows' predictions to keep for ensembling (all, or a fixed sample)."""
    if n_eval <= max_rows:
        return np.arange(n_eval)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_eval, size=max_rows, replace=False))
