"""Reference bins and drift statistics, shared by training (the profile) and the service.

A column's reference distribution is a set of bins (`kfp_automl.contracts.profile.Bins`):
quantile bins of a numeric column (plus `missing`), or the most frequent categories (plus
`other` and `missing`). The profile holds each training column's bin shares and calibrated
alert thresholds; the service counts requests into the same bins, and Prometheus compares
the windowed shares with the reference using the same PSI and Jensen-Shannon formulas as
here (kfp_automl/observability/rules.py takes EPS from this module).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.contracts.profile import Bins

EPS = 1e-4  # shares are clamped to this before logs, here and in the recording rules
N_NUMERIC_BINS = 10
MAX_CATEGORY_BINS = 20
MAX_KNOWN_CATEGORIES = 5000
WINDOW_RECORDS = 200  # the fewest records in a window before drift alerts may fire
MISSING, OTHER = "missing", "other"


# ---- bins --------------------------------------------------------------------------------


def numeric_bins(values: pd.Series, n_bins: int = N_NUMERIC_BINS) -> Bins:
    """Quantile bins of the non-missing values, plus a `missing` bin."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    edges = np.unique(np.quantile(v, qs, method="lower")) if len(v) else np.array([])
    return Bins(
        kind="numeric",
        bins=(*[f"b{i}" for i in range(len(edges) + 1)], MISSING),
        edges=tuple(edges.tolist()),
        min=float(v.min()) if len(v) else None,
        max=float(v.max()) if len(v) else None,
    )


def categorical_bins(values: pd.Series, max_bins: int = MAX_CATEGORY_BINS) -> Bins:
    """One bin per frequent category (most frequent first), `other`, and `missing`."""
    counts = values.dropna().astype(str).value_counts()
    cats = tuple(str(c) for c in counts.index[:max_bins].tolist())
    return class_bins(cats)


def class_bins(labels: Sequence[Any]) -> Bins:
    """Categorical bins for these labels, in this order."""
    cats = tuple(str(c) for c in labels)
    return Bins(
        kind="categorical",
        bins=(*[f"c{i}" for i in range(len(cats))], OTHER, MISSING),
        categories=cats,
    )


def bin_index(values, bins: Bins, edges: np.ndarray | None = None) -> np.ndarray:
    """The bin of every value (an index into `bins.bins`).

    Numeric values: one searchsorted over the reference edges (`edges`: them as
    a float array, when the caller keeps one). Categories: a dict lookup per
    value; unseen ones go to `other`, missing ones to `missing`.
    """
    n_bins = len(bins.bins)
    if bins.numeric:
        v = np.asarray(values)
        if v.dtype.kind != "f":
            v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        if edges is None:
            edges = np.asarray(bins.edges, dtype=float)
        idx = np.searchsorted(edges, v, side="right")
        idx[np.isnan(v)] = n_bins - 1
        return idx
    table, other, missing = bins.index, n_bins - 2, n_bins - 1
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    try:  # text is looked up without a Python call per value ...
        idx = np.fromiter(
            map(table.get, items, itertools.repeat(other)), dtype=np.int64, count=len(items)
        )
    except TypeError:  # an unhashable value: everything one by one below
        idx = np.full(len(items), other, dtype=np.int64)
    for i in np.flatnonzero(idx == other).tolist():  # ... and what landed in `other` checked
        v = items[i]
        if v is None or v != v:
            idx[i] = missing
        elif not isinstance(v, str):
            idx[i] = table.get(str(v), other)
    return idx


def column_bin_index(values: pd.Series, bins: Bins) -> np.ndarray:
    """bin_index for a whole training column, vectorised for categories (the same indexes)."""
    if bins.numeric:
        return bin_index(values, bins)
    n_bins = len(bins.bins)
    plain_text = pd.api.types.is_string_dtype(values) and values.dtype != object
    text = values if plain_text else values.astype(str)  # str(v) per value, as bin_index does
    codes = pd.Index(list(bins.categories), dtype=object).get_indexer(text)
    codes = codes.astype(np.int64)
    codes[codes < 0] = n_bins - 2  # other
    codes[values.isna().to_numpy()] = n_bins - 1  # missing
    return codes


def bin_shares(values: pd.Series, bins: Bins) -> np.ndarray:
    counts = np.bincount(bin_index(values, bins), minlength=len(bins.bins))
    return counts / max(1, counts.sum())


# ---- drift statistics (the same formulas as the recording rules) -------------------------


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index of shares p (recent) against q (reference)."""
    p, q = np.maximum(p, EPS), np.maximum(q, EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) of shares p and q."""
    p, q = np.maximum(p, EPS), np.maximum(q, EPS)
    m = (p + q) / 2
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


STATISTICS = {"psi": psi, "js": js}


def calibrate(values: pd.Series, bins: Bins, window: int, **kwargs: Any) -> dict[str, float]:
    """Alert thresholds of `values` against their own bins (see calibrate_index)."""
    return calibrate_index(bin_index(values, bins), len(bins.bins), window, **kwargs)


def calibrate_index(
    idx: np.ndarray,
    n_bins: int,
    window: int,
    n_chunks: int = 200,
    seed: int = 0,
    max_reference_sample: int = 20_000,
) -> dict[str, float]:
    """Alert thresholds from the statistic's spread when nothing has drifted.

    Each of `n_chunks` draws compares a window of `window` rows with a bootstrap
    copy of the reference (both resampled from the reference rows' bin indexes `idx`), so
    the spread covers the noise of a window and of a finite reference. Each threshold is
    the 99th percentile plus three standard deviations.
    """
    rng = np.random.default_rng(seed)
    ref_size = min(len(idx), max_reference_sample)
    stats: dict[str, list[float]] = {name: [] for name in STATISTICS}
    for _ in range(n_chunks):
        chunk = np.bincount(rng.choice(idx, size=window), minlength=n_bins) / window
        ref = np.bincount(rng.choice(idx, size=ref_size), minlength=n_bins) / ref_size
        for name, fn in STATISTICS.items():
            stats[name].append(fn(chunk, ref))
    return {
        name: round(float(np.quantile(v, 0.99) + 3 * np.std(v)), 6) for name, v in stats.items()
    }


# ---- references ----------------------------------------------------------------------------


def reference_bins(values: pd.Series, kind: str, window: int = WINDOW_RECORDS) -> Bins:
    """A training column's bins with their counts, shares, missing rate and thresholds."""
    import dataclasses

    bins = numeric_bins(values) if kind == "numeric" else categorical_bins(values)
    known = None
    if kind == "categorical":
        seen = values.dropna().astype(str).unique()
        if len(seen) > len(bins.categories):
            known = frozenset(sorted(seen.tolist())[:MAX_KNOWN_CATEGORIES])
    idx = column_bin_index(values, bins)
    counts = np.bincount(idx, minlength=len(bins.bins))
    return dataclasses.replace(
        bins,
        known=known,
        counts=tuple(counts.tolist()),
        shares=tuple(round(float(x), 8) for x in counts / max(1, counts.sum())),
        missing_rate=round(float(values.isna().mean()), 6),
        thresholds=calibrate_index(idx, len(bins.bins), window),
    )


def prediction_bins(
    predictions, task: str, classes: Sequence[Any] | None = None, window: int = WINDOW_RECORDS
) -> Bins:
    """The reference of prediction drift: the model's predictions on the holdout rows.

    Classification: one bin per class (in the model's class order); regression: quantile
    bins of the predicted values.
    """
    import dataclasses

    values = pd.Series(np.asarray(predictions))
    if task != "classification":
        return reference_bins(values, "numeric", window)
    labels = classes if classes is not None else sorted(values.unique())
    bins = class_bins(labels)
    shares = bin_shares(values, bins)
    return dataclasses.replace(
        bins,
        shares=tuple(round(float(x), 8) for x in shares),
        missing_rate=0.0,
        thresholds=calibrate(values, bins, window),
    )
