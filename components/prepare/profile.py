"""The reference profile: per-feature bins and shares, calibrated drift thresholds.

Built from the training rows (prepare) and completed with the model's
predictions on the holdout rows (package). Serving counts requests into the
same bins (kfp_automl/serving/monitoring.py) and Prometheus compares the
windowed shares with these.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.runtime.drift import (
    bin_index,
    bin_shares,
    calibrate,
    categorical_spec,
    numeric_spec,
)
from kfp_automl.runtime.names import PREDICTION

PROFILE_VERSION = 1
WINDOW_RECORDS = 200  # the fewest records in a window before drift alerts may fire
MAX_KNOWN_CATEGORIES = 5000
UNMONITORED_ROLES = ("datetime", "text")


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of a table (row order and values), for the model card and model info metric."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    cols = "\x1f".join(map(str, df.columns)).encode()
    return hashlib.sha256(cols + hashed.tobytes()).hexdigest()


def fast_bin_index(values: pd.Series, spec: dict[str, Any]) -> np.ndarray:
    """monitoring.bin_index for a whole training column, vectorised for categories."""
    if spec["kind"] == "numeric":
        return bin_index(values, spec)
    n_bins = len(spec["bins"])
    plain_text = pd.api.types.is_string_dtype(values) and values.dtype != object
    text = values if plain_text else values.astype(str)  # str(v) per value, as bin_index does
    codes = pd.Index(spec["categories"], dtype=object).get_indexer(text)
    codes = codes.astype(np.int64)
    codes[codes < 0] = n_bins - 2  # other
    codes[values.isna().to_numpy()] = n_bins - 1  # missing
    return codes


def calibrate_bins(idx: np.ndarray, n_bins: int, window: int) -> dict[str, float]:
    """monitoring.calibrate on bin indexes already computed (the same draws, the same numbers)."""
    as_numeric = {
        "kind": "numeric",
        "edges": [i + 0.5 for i in range(n_bins - 1)],
        "bins": [str(i) for i in range(n_bins)],
    }
    return calibrate(pd.Series(idx.astype(float)), as_numeric, window)


def _spec(values: pd.Series, kind: str, window: int) -> dict[str, Any]:
    spec = numeric_spec(values) if kind == "numeric" else categorical_spec(values)
    if kind == "categorical":
        seen = values.dropna().astype(str).unique()
        if len(seen) > len(spec["categories"]):
            spec["known"] = sorted(seen.tolist())[:MAX_KNOWN_CATEGORIES]
    idx = fast_bin_index(values, spec)
    counts = np.bincount(idx, minlength=len(spec["bins"]))
    spec["counts"] = counts.tolist()
    spec["shares"] = [round(float(x), 8) for x in counts / max(1, counts.sum())]
    spec["missing_rate"] = round(float(values.isna().mean()), 6)
    spec["thresholds"] = calibrate_bins(idx, len(spec["bins"]), window)
    return spec


def build_profile(
    train: pd.DataFrame, schema: dict[str, Any], window: int = WINDOW_RECORDS
) -> dict[str, Any]:
    """Bins (edges, counts, shares), drift thresholds of every feature, and the target's distribution.

    Datetime and free-text features are listed in `unmonitored`: their raw
    values have no stable bins (serving sees them as text).
    """
    features, unmonitored = {}, []
    for f in schema["features"]:
        role = f.get("role") or f["kind"]
        if role in UNMONITORED_ROLES:
            unmonitored.append(f["name"])
            continue
        features[f["name"]] = _spec(train[f["name"]], f["kind"], window)
    y = train[schema["target"]]
    target_kind = "categorical" if schema["task"] == "classification" else "numeric"
    return {
        "version": PROFILE_VERSION,
        "n_rows": len(train),
        "window_records": window,
        "data_fingerprint": schema.get("data_fingerprint", ""),
        "features": features,
        "unmonitored": unmonitored,
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
