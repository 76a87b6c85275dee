"""Small synthetic tables and hand-written schemas shared by the tests."""

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


N = 600


def messy(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A churn-like table with every kind of column prepare must handle: an identifier, a
    constant, an empty column, a leak, dates, free text, booleans, many categories."""
    r = np.random.default_rng(seed)
    tenure = r.integers(0, 72, size=n).astype(float)
    tenure[r.random(n) < 0.1] = np.nan
    plan = r.choice(["basic", "plus", "pro"], size=n)
    y = np.where((np.nan_to_num(tenure, nan=30) < 20) ^ (r.random(n) < 0.15), "yes", "no")
    return pd.DataFrame(
        {
            "row_id": np.arange(n),
            "customer": [f"C-{i:05d}" for i in range(n)],
            "tenure": tenure,
            "plan": plan,
            "city": r.choice([f"town{i}" for i in range(60)], size=n),
            "paperless": r.choice(["Yes", "No"], size=n),
            "signed_up": (
                pd.Timestamp("2021-01-01") + pd.to_timedelta(r.integers(0, 1000, size=n), unit="D")
            )
            .strftime("%Y-%m-%d")
            .astype(object),
            "comment": [
                f"customer wrote {w} about the {p} plan {k} days ago"
                for w, p, k in zip(
                    r.choice(["twice", "once", "angrily"], size=n),
                    plan,
                    r.integers(0, 400, size=n),
                    strict=True,
                )
            ],
            "country": "NL",
            "empty": np.nan,
            "outcome_code": np.where(y == "yes", "CLOSED", "OPEN"),  # written after the outcome
            "churn": y,
        }
    )
