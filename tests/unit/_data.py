"""Small synthetic tables and hand-written schemas shared by the unit tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.contracts.schema import Schema

COLOURS = ["red", "green", "blue", "amber"]


def synthetic_frame(n: int = 240, task: str = "classification", seed: int = 0) -> pd.DataFrame:
    """Numeric + categorical features with missing values and a learnable target.

    Classification targets are the strings 'no'/'yes' (or three classes with
    `task='multiclass'`); regression targets are floats.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 100, size=n)
    colour = rng.choice(COLOURS, size=n)
    signal = 1.5 * x1 + (colour == "red") * 1.0 + rng.normal(scale=0.5, size=n)
    df = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour})
    df.loc[rng.choice(n, size=n // 10, replace=False), "x1"] = np.nan
    df.loc[rng.choice(n, size=n // 10, replace=False), "colour"] = None
    if task == "classification":
        df["target"] = np.where(signal > 0.3, "yes", "no")
    elif task == "multiclass":
        df["target"] = pd.cut(signal, [-np.inf, -0.5, 0.7, np.inf], labels=["a", "b", "c"]).astype(
            str
        )
    else:
        df["target"] = signal * 10 + 3
    return df


def schema_for(task: str) -> Schema:
    """A hand-written schema (version 1, as releases before roles wrote it) for `synthetic_frame`."""
    return Schema.from_dict(schema_dict(task))


def schema_dict(task: str) -> dict[str, Any]:
    """The JSON of `schema_for(task)`."""
    return {
        "version": 1,
        "target": "target",
        "task": "regression" if task == "regression" else "classification",
        "features": [
            {"name": "x1", "kind": "numeric", "dtype": "float64", "required": True},
            {"name": "x2", "kind": "numeric", "dtype": "int64", "required": True},
            {"name": "colour", "kind": "categorical", "dtype": "str", "required": True},
        ],
        "dropped": [],
    }
