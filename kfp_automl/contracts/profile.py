"""The drift reference: each feature's bins, their shares in training, calibrated thresholds.

Two files, each complete where it is made:
- `Profile` (prepare, from the training rows): the bins of every monitored feature and of
  the target;
- `Bins` of the model's predictions on the holdout rows (evaluate, which already scores
  them), the reference of prediction drift.

The package step stores both beside the model in the Bento; the service counts requests
into the same bins (kfp_automl/serving/monitoring.py) and Prometheus compares the windowed
shares with these. `Profile.from_dict` also reads version 1, which kept the predictions'
bins among the features under the name `__prediction__`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from kfp_automl.contracts.errors import ContractError, expect
from kfp_automl.files import write_json

PROFILE_VERSION = 2
VERSIONS = (1, 2)
LEGACY_PREDICTION = "__prediction__"  # version 1's name for the predictions' bins


@dataclass(frozen=True)
class Bins:
    """The reference bins of one column.

    Numeric: quantile bins `b0..bn` split at `edges`, then `missing`. Categorical: one bin per
    frequent category `c0..cn` (most frequent first), then `other` and `missing`.
    """

    kind: Literal["numeric", "categorical"]
    bins: tuple[str, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    min: float | None = None  # numeric: the training range
    max: float | None = None
    # categorical: every training category, when there were more than the bins hold (else None)
    known: frozenset[str] | None = None
    counts: tuple[int, ...] = ()
    shares: tuple[float, ...] = ()
    missing_rate: float = 0.0
    thresholds: dict[str, float] = field(default_factory=dict)  # statistic -> alert threshold

    @property
    def numeric(self) -> bool:
        return self.kind == "numeric"

    @cached_property
    def index(self) -> dict[str, int]:
        """Category -> its bin (categorical bins); computed once per object."""
        return {c: i for i, c in enumerate(self.categories)}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.numeric:
            out.update(edges=list(self.edges), bins=list(self.bins), min=self.min, max=self.max)
        else:
            out.update(categories=list(self.categories), bins=list(self.bins))
            if self.known is not None:
                out["known"] = sorted(self.known)
        if self.counts:
            out["counts"] = list(self.counts)
        out["shares"] = list(self.shares)
        out["missing_rate"] = self.missing_rate
        out["thresholds"] = dict(self.thresholds)
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "bins") -> Bins:
        expect(isinstance(d, dict), f"{where}: expected an object")
        kind = d.get("kind")
        expect(kind in ("numeric", "categorical"), f"{where}: unknown kind {kind!r}")
        bins = tuple(str(b) for b in d.get("bins") or [])
        expect(len(bins) >= 2, f"{where}: 'bins' must list at least two bins")
        edges = tuple(float(e) for e in d.get("edges") or [])
        categories = tuple(str(c) for c in d.get("categories") or [])
        if kind == "numeric":
            expect(
                len(bins) == len(edges) + 2,
                f"{where}: {len(edges)} edges need {len(edges) + 2} bins",
            )
        else:
            expect(
                len(bins) == len(categories) + 2,
                f"{where}: {len(categories)} categories need {len(categories) + 2} bins",
            )
        shares = tuple(float(s) for s in d.get("shares") or [])
        expect(len(shares) in (0, len(bins)), f"{where}: 'shares' must have one value per bin")
        counts = tuple(int(c) for c in d.get("counts") or [])
        expect(len(counts) in (0, len(bins)), f"{where}: 'counts' must have one value per bin")
        known = d.get("known")
        return cls(
            kind=kind,
            bins=bins,
            edges=edges,
            categories=categories,
            min=None if d.get("min") is None else float(d["min"]),
            max=None if d.get("max") is None else float(d["max"]),
            known=None if known is None else frozenset(str(k) for k in known),
            counts=counts,
            shares=shares,
            missing_rate=float(d.get("missing_rate") or 0.0),
            thresholds={str(k): float(v) for k, v in (d.get("thresholds") or {}).items()},
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Bins:
        return cls.from_dict(_load(path), str(path))

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, {"version": PROFILE_VERSION, **self.to_dict()})


@dataclass(frozen=True)
class Profile:
    """The training rows' reference: monitored features (by name) and the target."""

    features: dict[str, Bins]
    target: Bins | None = None
    n_rows: int = 0
    window_records: int = 200  # the fewest records in a window before drift alerts may fire
    data_fingerprint: str = ""
    unmonitored: tuple[str, ...] = ()  # datetime and free-text features: no stable bins
    # version 1 files only: the predictions' bins, stored among the features
    legacy_prediction: Bins | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "n_rows": self.n_rows,
            "window_records": self.window_records,
            "data_fingerprint": self.data_fingerprint,
            "features": {name: b.to_dict() for name, b in self.features.items()},
            "unmonitored": list(self.unmonitored),
            "target": None if self.target is None else self.target.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Profile:
        expect(isinstance(d, dict), "profile: expected a JSON object")
        version = d.get("version", 1)
        expect(
            version in VERSIONS,
            f"profile version {version!r} is not one this release reads ({VERSIONS})",
        )
        raw = d.get("features")
        expect(isinstance(raw, dict), "profile: 'features' must be an object")
        features = {
            str(name): Bins.from_dict(spec, f"profile feature {name!r}")
            for name, spec in raw.items()
        }
        legacy = features.pop(LEGACY_PREDICTION, None)
        target = d.get("target")
        return cls(
            features=features,
            target=None if target is None else Bins.from_dict(target, "profile target"),
            n_rows=int(d.get("n_rows") or 0),
            window_records=int(d.get("window_records") or 200),
            data_fingerprint=str(d.get("data_fingerprint") or ""),
            unmonitored=tuple(str(u) for u in d.get("unmonitored") or []),
            legacy_prediction=legacy,
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Profile:
        try:
            return cls.from_dict(_load(path))
        except ContractError as exc:
            raise ContractError(f"{path}: {exc}") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())


def _load(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read {path}: {exc}") from None
