"""The reference profile: per-feature bins and shares, calibrated drift thresholds.

Built from the training rows (prepare) and completed with the model's
predictions on the holdout rows (package). Serving counts requests into the
same bins (components/serving/monitoring.py) and Prometheus compares the
windowed shares with these.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from components.serving.monitoring import (
    PREDICTION,
    bin_shares,
    calibrate,
    categorical_spec,
    numeric_spec,
)

PROFILE_VERSION = 1
WINDOW_RECORDS = 200  # the fewest records in a window before drift alerts may fire
MAX_KNOWN_CATEGORIES = 5000


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of a table (row order and values), for the model card and model info metric."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    cols = "\x1f".join(map(str, df.columns)).encode()
    return hashlib.sha256(cols + hashed.tobytes()).hexdigest()


def _spec(values: pd.Series, kind: str, window: int) -> dict[str, Any]:
    spec = numeric_spec(values) if kind == "numeric" else categorical_spec(values)
    if kind == "categorical":
        seen = values.dropna().astype(str).unique()
        if len(seen) > len(spec["categories"]):
            spec["known"] = sorted(seen.tolist())[:MAX_KNOWN_CATEGORIES]
    shares = bin_shares(values, spec)
    spec["shares"] = [round(float(x), 8) for x in shares]
    spec["missing_rate"] = round(float(values.isna().mean()), 6)
    spec["thresholds"] = calibrate(values, spec, window)
    return spec


def build_profile(
    train: pd.DataFrame, schema: dict[str, Any], window: int = WINDOW_RECORDS
) -> dict[str, Any]:
    """Bins, shares and drift thresholds of every feature, and the target's distribution."""
    features = {f["name"]: _spec(train[f["name"]], f["kind"], window) for f in schema["features"]}
    y = train[schema["target"]]
    target_kind = "categorical" if schema["task"] == "classification" else "numeric"
    return {
        "version": PROFILE_VERSION,
        "n_rows": len(train),
        "window_records": window,
        "data_fingerprint": schema.get("data_fingerprint", ""),
        "features": features,
        "target": _spec(y, target_kind, window),
    }


def add_prediction_profile(
    profile: dict[str, Any], predictions, task: str, classes: list | None = None
) -> dict[str, Any]:
    """Add the model's holdout predictions as the pseudo-feature `__prediction__`."""
    window = profile.get("window_records", WINDOW_RECORDS)
    values = pd.Series(np.asarray(predictions))
    if task == "classification":
        labels = [str(c) for c in (classes if classes is not None else sorted(values.unique()))]
        spec = {
            "kind": "categorical",
            "categories": labels,
            "bins": [f"c{i}" for i in range(len(labels))] + ["other", "missing"],
        }
        shares = bin_shares(values, spec)
        spec.update(shares=[round(float(x), 8) for x in shares], missing_rate=0.0)
        spec["thresholds"] = calibrate(values, spec, window)
    else:
        spec = _spec(values, "numeric", window)
    return {**profile, "features": {**profile["features"], PREDICTION: spec}}
