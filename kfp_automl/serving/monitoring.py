"""The service's Prometheus metrics: reference bins, data quality, latency, rejections.

prometheus_client is imported when a Monitor is created, inside the BentoML worker,
after BentoML has switched prometheus_client to multiprocess mode.

The service only counts: each scored record adds one to a counter per feature
and reference bin (`automl_feature_bin_total`). The windowed shares, PSI and
Jensen-Shannon divergence are Prometheus recording rules over those counters
(manifests/monitoring/prometheus-rules.yaml), so they stay correct however many
workers or replicas serve the model, and a request costs O(features x batch).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from kfp_automl.contracts.profile import Bins, Profile
from kfp_automl.runtime import names
from kfp_automl.runtime.drift import bin_index
from kfp_automl.runtime.names import PREDICTION
from kfp_automl.runtime.packages import Mismatch

SMALL_BATCH = 16  # up to this many records, Monitor.observe counts without numpy's per-call cost


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
    "bad_framing",
    "too_long",
    # refused by the HTTP protocol (http_limits.py) on any path, before the service reads it
    *names.CONNECTION_REFUSALS,
)


def package_mismatch(model: str, version: str, found: list[Mismatch], registry=None) -> None:
    """`automl_package_mismatch{package,recorded,installed}` 1 for each package whose installed
    version is not the one the model recorded (the model is then not loaded)."""
    import prometheus_client as pc

    kw = {"registry": registry} if registry is not None else {}
    gauge = pc.Gauge(
        names.PACKAGE_MISMATCH,
        "A package of another version than the model was packaged with (it is not loaded)",
        ["model", "version", "package", "recorded", "installed"],
        multiprocess_mode="max",  # the same value in every worker
        **kw,
    )
    for m in found:
        installed = m.installed if m.installed is not None else "none"
        gauge.labels(model, version, m.package, m.recorded, installed).set(1)


class Monitor:
    """Prometheus metrics of one served model: bins, data quality, latency, rejections."""

    def __init__(
        self,
        profile: Profile | None,
        model: str,
        version: str,
        info: dict[str, str] | None = None,
        registry=None,
        *,
        prediction: Bins | None = None,
    ):
        """`profile`: the training rows' bins (None: no drift metrics); `prediction`: the
        holdout predictions' bins (prediction drift), which profiles of version 1 carried."""
        import prometheus_client as pc

        kw = {"registry": registry} if registry is not None else {}
        base = ["model", "version"]
        references: dict[str, Bins] = dict(profile.features) if profile is not None else {}
        prediction = prediction or (profile.legacy_prediction if profile is not None else None)
        if prediction is not None:
            references[PREDICTION] = prediction
        self.references = references
        self.ids = (model, version)
        self.records = pc.Counter(names.RECORDS, "Records scored", base, **kw)
        self.rejected_total = pc.Counter(
            names.REQUESTS_REJECTED, "Requests rejected for bad input", [*base, "reason"], **kw
        )
        self.bins = pc.Counter(
            names.FEATURE_BIN,
            "Scored records per feature and reference bin",
            [*base, "feature", "bin"],
            **kw,
        )
        self.missing = pc.Counter(names.FEATURE_MISSING, "Missing values", [*base, "feature"], **kw)
        self.out_of_range = pc.Counter(
            names.FEATURE_OUT_OF_RANGE,
            "Numeric values outside the training range",
            [*base, "feature"],
            **kw,
        )
        self.unseen = pc.Counter(
            names.FEATURE_UNSEEN_CATEGORY,
            "Categories not seen in training",
            [*base, "feature"],
            **kw,
        )
        self.inference = pc.Histogram(
            names.INFERENCE_SECONDS,
            "Model inference time per request batch",
            base,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            **kw,
        )
        self.batch = pc.Histogram(
            names.BATCH_RECORDS,
            "Records per scored batch",
            base,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            **kw,
        )
        gauge = {"multiprocess_mode": "max", **kw}  # the same value in every worker
        share = pc.Gauge(
            names.REFERENCE_SHARE,
            "Share of the reference data per bin",
            [*base, "feature", "bin"],
            **gauge,
        )
        threshold = pc.Gauge(
            names.DRIFT_THRESHOLD,
            "Calibrated alert threshold",
            [*base, "feature", "statistic"],
            **gauge,
        )
        info = dict(info or {})
        model_info = pc.Gauge(names.MODEL_INFO, "The served model", [*base, *sorted(info)], **gauge)
        model_info.labels(*self.ids, *[info[k] for k in sorted(info)]).set(1)
        self._records = self.records.labels(*self.ids)
        self._inference = self.inference.labels(*self.ids)
        self._batch = self.batch.labels(*self.ids)
        for reason in REJECT_REASONS:
            self.rejected_total.labels(*self.ids, reason)
        self._children: dict[str, tuple[Bins, list, Any, np.ndarray | None]] = {}
        for feature, spec in references.items():
            children = [self.bins.labels(*self.ids, feature, b) for b in spec.bins]
            # what a small batch looks its values up in: the edges as a list, or the categories
            lookup: list[float] | dict[str, int]
            edges: np.ndarray | None
            if spec.numeric:
                lookup, edges = list(spec.edges), np.asarray(spec.edges, float)
            else:
                lookup, edges = spec.index, None
            self._children[feature] = (spec, children, lookup, edges)
            for b, s in zip(spec.bins, spec.shares, strict=True):
                share.labels(*self.ids, feature, b).set(s)
            for stat, value in spec.thresholds.items():
                threshold.labels(*self.ids, feature, stat).set(value)
            if feature != PREDICTION:
                kind_metric = self.out_of_range if spec.numeric else self.unseen
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
            numeric = spec.numeric
            counts: list[int]
            if small and (not numeric or values.dtype.kind == "f"):
                counts = self._count_small(values.tolist(), numeric, children, lookup)
            else:
                binned = np.bincount(bin_index(values, spec, edges), minlength=len(children))
                seen = binned.nonzero()[0]  # only the bins this batch reached
                for j, c in zip(seen.tolist(), binned[seen].tolist(), strict=True):
                    children[j].inc(c)
                counts = binned.tolist()
            if feature == PREDICTION:
                continue
            if counts[-1]:
                self.missing.labels(*self.ids, feature).inc(counts[-1])
            if numeric and spec.min is not None:
                v = values if values.dtype.kind == "f" else np.asarray(values, dtype=float)
                low, high = spec.min, spec.max
                if small:
                    outside = sum(1 for x in v.tolist() if x < low or x > high)
                else:
                    outside = int(np.count_nonzero((v < low) | (v > high)))
                if outside:
                    self.out_of_range.labels(*self.ids, feature).inc(outside)
            elif not numeric and counts[-2]:
                # `other` holds unseen categories, and rare training ones when there were many
                known = spec.known
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
