"""Reference bins, drift statistics and the service's Prometheus metrics.

Shipped inside every Bento next to service.py (numpy + pandas only at import
time; prometheus_client is imported when a Monitor is created, inside the
BentoML worker, after it has switched prometheus_client to multiprocess mode).

The service only counts: each scored record adds one to a counter per feature
and reference bin (`automl_feature_bin_total`). The windowed shares, PSI and
Jensen-Shannon divergence are Prometheus recording rules over those counters
(manifests/monitoring/prometheus-rules.yaml), so they stay correct however many
workers or replicas serve the model, and a request costs O(features x batch).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-4  # shares are clamped to this before logs, here and in the recording rules
N_NUMERIC_BINS = 10
MAX_CATEGORY_BINS = 20
SMALL_BATCH = 16  # up to this many records, Monitor.observe counts without numpy's per-call cost
PREDICTION = "__prediction__"
MISSING, OTHER = "missing", "other"
REJECT_REASONS = (
    "missing_field",
    "wrong_type",
    "unknown_field",
    "non_finite",
    "empty",
    "too_large",
    "unsupported_media_type",
    "bad_json",
    "bad_id",
)


# ---- reference bins -------------------------------------------------------------------------


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


# ---- drift statistics (the same formulas as the recording rules) ----------------------------


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


# ---- the live service's metrics -------------------------------------------------------------


class Monitor:
    """Prometheus metrics of one served model: bins, data quality, latency, rejections."""

    def __init__(
        self,
        profile: dict[str, Any] | None,
        model: str,
        version: str,
        info: dict[str, str] | None = None,
        registry=None,
    ):
        import prometheus_client as pc

        kw = {"registry": registry} if registry is not None else {}
        base = ["model", "version"]
        self.profile = profile or {"features": {}}
        self.ids = (model, version)
        self.records = pc.Counter("automl_records", "Records scored", base, **kw)
        self.rejected_total = pc.Counter(
            "automl_requests_rejected", "Requests rejected for bad input", [*base, "reason"], **kw
        )
        self.bins = pc.Counter(
            "automl_feature_bin",
            "Scored records per feature and reference bin",
            [*base, "feature", "bin"],
            **kw,
        )
        self.missing = pc.Counter(
            "automl_feature_missing", "Missing values", [*base, "feature"], **kw
        )
        self.out_of_range = pc.Counter(
            "automl_feature_out_of_range",
            "Numeric values outside the training range",
            [*base, "feature"],
            **kw,
        )
        self.unseen = pc.Counter(
            "automl_feature_unseen_category",
            "Categories not seen in training",
            [*base, "feature"],
            **kw,
        )
        self.inference = pc.Histogram(
            "automl_inference_duration_seconds",
            "Model inference time per request batch",
            base,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            **kw,
        )
        self.batch = pc.Histogram(
            "automl_batch_size_records",
            "Records per scored batch",
            base,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            **kw,
        )
        gauge = {"multiprocess_mode": "max", **kw}  # the same value in every worker
        share = pc.Gauge(
            "automl_feature_reference_share",
            "Share of the reference data per bin",
            [*base, "feature", "bin"],
            **gauge,
        )
        threshold = pc.Gauge(
            "automl_drift_threshold",
            "Calibrated alert threshold",
            [*base, "feature", "statistic"],
            **gauge,
        )
        info = dict(info or {})
        model_info = pc.Gauge(
            "automl_model_info", "The served model", [*base, *sorted(info)], **gauge
        )
        model_info.labels(*self.ids, *[info[k] for k in sorted(info)]).set(1)
        self._records = self.records.labels(*self.ids)
        self._inference = self.inference.labels(*self.ids)
        self._batch = self.batch.labels(*self.ids)
        for reason in REJECT_REASONS:
            self.rejected_total.labels(*self.ids, reason)
        self._children: dict[str, tuple[dict, list, Any, np.ndarray | None]] = {}
        for feature, spec in self.profile["features"].items():
            children = [self.bins.labels(*self.ids, feature, b) for b in spec["bins"]]
            # what a small batch looks its values up in: the edges as a list, or the categories
            if spec["kind"] == "numeric":
                lookup, edges = list(map(float, spec["edges"])), np.asarray(spec["edges"], float)
            else:
                lookup, edges = _lookup(spec), None
            self._children[feature] = (spec, children, lookup, edges)
            for b, s in zip(spec["bins"], spec["shares"], strict=True):
                share.labels(*self.ids, feature, b).set(s)
            for stat, value in spec.get("thresholds", {}).items():
                threshold.labels(*self.ids, feature, stat).set(value)
            if feature != PREDICTION:
                kind_metric = self.out_of_range if spec["kind"] == "numeric" else self.unseen
                for metric in (self.missing, kind_metric):
                    metric.labels(*self.ids, feature)

    def rejected(self, reason: str) -> None:
        self.rejected_total.labels(
            *self.ids, reason if reason in REJECT_REASONS else "bad_json"
        ).inc()

    @contextmanager
    def timed(self, n_records: int) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self._inference.observe(time.perf_counter() - start)
        self._batch.observe(n_records)

    def observe(self, X, predictions) -> None:
        """Count one scored batch: bins per feature, missing, out-of-range and unseen values.

        `X`: the batch's feature columns by name, a DataFrame or (cheaper per batch)
        a dict of arrays as `records_to_columns` returns them. A batch of up to
        SMALL_BATCH records is counted value by value in plain Python, a larger one
        with numpy; both count the same.
        """
        predictions = np.asarray(predictions)
        self._records.inc(len(predictions))
        small = len(predictions) <= SMALL_BATCH
        for feature, (spec, children, lookup, edges) in self._children.items():
            values = predictions if feature == PREDICTION else np.asarray(X[feature])
            numeric = spec["kind"] == "numeric"
            if small and (not numeric or values.dtype.kind == "f"):
                counts = self._count_small(values.tolist(), numeric, children, lookup)
            else:
                counts = np.bincount(bin_index(values, spec, edges), minlength=len(children))
                seen = counts.nonzero()[0]  # only the bins this batch reached
                for j, c in zip(seen.tolist(), counts[seen].tolist(), strict=True):
                    children[j].inc(c)
                counts = counts.tolist()
            if feature == PREDICTION:
                continue
            if counts[-1]:
                self.missing.labels(*self.ids, feature).inc(counts[-1])
            if numeric and spec.get("min") is not None:
                v = values if values.dtype.kind == "f" else np.asarray(values, dtype=float)
                low, high = spec["min"], spec["max"]
                if small:
                    outside = sum(1 for x in v.tolist() if x < low or x > high)
                else:
                    outside = int(np.count_nonzero((v < low) | (v > high)))
                if outside:
                    self.out_of_range.labels(*self.ids, feature).inc(outside)
            elif not numeric and counts[-2]:
                # `other` holds unseen categories, and rare training ones when there were many
                known = spec.get("known")
                if known is None:
                    unseen = counts[-2]
                else:
                    unseen = sum(
                        1 for v in values if v == v and v is not None and str(v) not in known
                    )
                if unseen:
                    self.unseen.labels(*self.ids, feature).inc(unseen)

    @staticmethod
    def _count_small(items: list, numeric: bool, children: list, lookup) -> list[int]:
        """Bin counts of a few values, each binned as bin_index bins it."""
        n_bins = len(children)
        other, missing = n_bins - 2, n_bins - 1
        if numeric:  # bisect_right over the edges is searchsorted(side="right")
            bins = [missing if x != x else bisect.bisect_right(lookup, x) for x in items]
        else:
            bins = [
                missing
                if v is None or v != v
                else lookup.get(v if isinstance(v, str) else str(v), other)
                for v in items
            ]
        counts = [0] * n_bins
        for b, c in Counter(bins).items():
            counts[b] = c
            children[b].inc(c)
        return counts
