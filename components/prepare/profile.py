"""The drift reference profile of the training rows, and the table's fingerprint.

Bins, counts, shares and calibrated drift thresholds of every monitored feature and of the
target (kfp_automl.runtime.drift computes them; kfp_automl.contracts.profile is the file).
The reference of the model's predictions is made by evaluate, which scores the holdout rows.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from kfp_automl.contracts.profile import Profile
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.drift import WINDOW_RECORDS, reference_bins

UNMONITORED_ROLES = ("datetime", "text")


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of a table (row order and values), for the model card and model info metric."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    cols = "\x1f".join(map(str, df.columns)).encode()
    return hashlib.sha256(cols + hashed.tobytes()).hexdigest()


def build_profile(train: pd.DataFrame, schema: Schema, window: int = WINDOW_RECORDS) -> Profile:
    """Bins (edges, counts, shares), drift thresholds of every feature, and the target's distribution.

    Datetime and free-text features are listed in `unmonitored`: their raw
    values have no stable bins (serving sees them as text).
    """
    features, unmonitored = {}, []
    for f in schema.features:
        if f.role in UNMONITORED_ROLES:
            unmonitored.append(f.name)
            continue
        features[f.name] = reference_bins(train[f.name], f.kind, window)
    target_kind = "categorical" if schema.classification else "numeric"
    return Profile(
        features=features,
        target=reference_bins(train[schema.target], target_kind, window),
        n_rows=len(train),
        window_records=window,
        data_fingerprint=schema.data_fingerprint,
        unmonitored=tuple(unmonitored),
    )
