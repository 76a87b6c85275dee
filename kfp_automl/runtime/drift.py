"""Reference bins and drift statistics, shared by the profile (training) and the service.

A feature's reference distribution is a set of bins: quantile bins of a numeric column
(plus `missing`), or the most frequent categories (plus `other` and `missing`). The
profile holds each training column's bin shares and calibrated alert thresholds; the
service counts requests into the same bins, and Prometheus compares the windowed shares
with the reference using the same PSI and Jensen-Shannon formulas as here
(kfp_automl/observability/rules.py reads EPS and the names from kfp_automl.runtime.names).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-4  # shares are clamped to this before logs, here and in the recording rules


N_NUMERIC_BINS = 10


MAX_CATEGORY_BINS = 20


MISSING, OTHER = "missing", "other"


def numeric_spec(values: pd.Series, n_bins: int = N_NUMERIC_BINS) -> dict[str, Any]:
    """Quantile bins of the non-missing values, plus a `missing` bin."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    edges = np.unique(np.quantile(v, qs, method="lower")) if len(v) else np.array([])
    labels = [f"b{i}" for i in range(len(edges) + 1)] + [MISSING]
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "bins": labels,
        "min": float(v.min()) if len(v) else None,
        "max": float(v.max()) if len(v) else None,
    }


def categorical_spec(values: pd.Series, max_bins: int = MAX_CATEGORY_BINS) -> dict[str, Any]:
    """One bin per frequent category (most frequent first), `other`, and `missing`."""
    counts = values.dropna().astype(str).value_counts()
    cats = counts.index[:max_bins].tolist()
    return {
        "kind": "categorical",
        "categories": cats,
        "bins": [f"c{i}" for i in range(len(cats))] + [OTHER, MISSING],
    }


def _lookup(spec: dict[str, Any]) -> dict[str, int]:
    table = spec.get("_lookup")
    if table is None:  # cached on the spec: built once per feature, not per request
        table = spec["_lookup"] = {c: i for i, c in enumerate(spec["categories"])}
    return table


def bin_index(values, spec: dict[str, Any], edges: np.ndarray | None = None) -> np.ndarray:
    """The bin of every value (an index into spec['bins']).

    Numeric values: one searchsorted over the reference edges (`edges`: them as
    a float array, when the caller keeps one). Categories: a dict lookup per
    value; unseen ones go to `other`, missing ones to `missing`.
    """
    n_bins = len(spec["bins"])
    if spec["kind"] == "numeric":
        v = np.asarray(values)
        if v.dtype.kind != "f":
            v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        if edges is None:
            edges = np.asarray(spec["edges"], dtype=float)
        idx = np.searchsorted(edges, v, side="right")
        idx[np.isnan(v)] = n_bins - 1
        return idx
    table, other, missing = _lookup(spec), n_bins - 2, n_bins - 1
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


def bin_shares(values: pd.Series, spec: dict[str, Any]) -> np.ndarray:
    counts = np.bincount(bin_index(values, spec), minlength=len(spec["bins"]))
    return counts / max(1, counts.sum())


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


def calibrate(
    values: pd.Series,
    spec: dict[str, Any],
    window: int,
    n_chunks: int = 200,
    seed: int = 0,
    max_reference_sample: int = 20_000,
) -> dict[str, float]:
    """Alert thresholds from the statistic's spread when nothing has drifted.

    Each of `n_chunks` draws compares a window of `window` rows with a bootstrap
    copy of the reference (both resampled from the reference rows), so the
    spread covers the noise of a window and of a finite reference. Each
    threshold is the 99th percentile plus three standard deviations.
    """
    idx = bin_index(values, spec)
    rng = np.random.default_rng(seed)
    n_bins = len(spec["bins"])
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
