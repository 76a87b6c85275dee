"""Exact repeats: distinct records that look the same (a table of a few coarse features has
many). They are observations, kept; splits and validation folds keep every set of rows with
identical inputs on one side, so a model is never scored on a copy of an input it was fitted
on. (Grouped by the inputs, not the whole rows: grouping whole rows would send one input's
"yes" rows to one side and its "no" rows to the other, scoring the model against the label it
never saw for that input.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def repeat_keys(df: pd.DataFrame) -> np.ndarray:
    """For each row, the number of the distinct row it is (0 .. n_distinct - 1)."""
    if len(df) == 0:
        return np.zeros(0, dtype=np.int64)
    hashes = pd.util.hash_pandas_object(df, index=False).to_numpy()
    return np.unique(hashes, return_inverse=True)[1].reshape(-1)


def first_positions(keys: np.ndarray) -> np.ndarray:
    """Position of each distinct row's first occurrence, in key order."""
    n_distinct = int(keys.max()) + 1 if len(keys) else 0
    first = np.full(n_distinct, -1, dtype=np.int64)
    first[keys[::-1]] = np.arange(len(keys))[::-1]  # later writes win: the first occurrence
    return first
