"""What the tune step says about the model it saved: family, parameters, scores, digest.

Carried as the `model` artifact's metadata, copied into the BentoML model's metadata by
package and into the registry entry. KFP stores every number in metadata as a float, so
`to_metadata` writes `params` as one JSON string (`n_estimators` stays 300, not 300.0)
and `from_metadata` reads it back and gives the counts back as integers.
`params` is the family's parameters (a dict), or for an ensemble its members:
`[{"family", "params", "weight"}, ...]`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from kfp_automl.contracts.errors import ContractError, expect

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class ModelInfo:
    sha256: str
    family: str  # a family name, or "ensemble"
    params: Any
    metric: str
    greater_is_better: bool
    valid_score: float
    validation: str = ""
    best_single_score: float | None = None
    n_trials: int = 0
    n_restored: int = 0
    n_retried: int = 0
    search_s: float = 0.0
    refit_s: float = 0.0  # fitting the shipped model on train+valid (0: not recorded)
    # a binary classifier answering its positive class at or above this probability (None:
    # the most probable class), the class, and the metric there on the rows it was tuned on
    decision_threshold: float | None = None
    threshold_class: str | None = None
    threshold_score: float | None = None
    # the SHA-256 of training_rows.npy beside the model (registry/training_rows.py): the hashes
    # of the inputs the model was fitted on, which the gate keeps out of a comparison
    rows_sha256: str | None = None

    def to_metadata(self) -> dict[str, Any]:
        """Artifact (and BentoML model) metadata: no None values, which BentoML refuses."""
        out = {**asdict(self), "params": json.dumps(self.params, sort_keys=True)}
        return {k: v for k, v in out.items() if v is not None}

    def described(self) -> dict[str, Any]:
        """Everything but the digest, `params` as data (what a model card or registry entry shows)."""
        return {k: v for k, v in asdict(self).items() if k != "sha256"}

    @classmethod
    def from_metadata(cls, m: Any) -> ModelInfo:
        expect(isinstance(m, dict), "model metadata: expected an object")
        for key in ("sha256", "family", "metric"):
            expect(isinstance(m.get(key), str), f"model metadata: {key!r} is missing")
        params = m.get("params", {})
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError as exc:
                raise ContractError(f"model metadata: 'params' is not JSON: {exc}") from None
        best = m.get("best_single_score")
        threshold, threshold_score = m.get("decision_threshold"), m.get("threshold_score")
        return cls(
            sha256=m["sha256"],
            family=m["family"],
            params=params,
            metric=m["metric"],
            greater_is_better=bool(m.get("greater_is_better", True)),
            valid_score=float(m.get("valid_score", float("nan"))),
            validation=str(m.get("validation", "")),
            best_single_score=None if best is None else float(best),
            n_trials=_int(m.get("n_trials", 0)),
            n_restored=_int(m.get("n_restored", 0)),
            n_retried=_int(m.get("n_retried", 0)),
            search_s=float(m.get("search_s", 0.0)),
            refit_s=float(m.get("refit_s", 0.0)),
            decision_threshold=None if threshold is None else float(threshold),
            threshold_class=None if m.get("threshold_class") is None else str(m["threshold_class"]),
            threshold_score=None if threshold_score is None else float(threshold_score),
            rows_sha256=None if m.get("rows_sha256") is None else str(m["rows_sha256"]),
        )


def _int(value: Any) -> int:
    number = float(value)
    expect(number.is_integer(), f"model metadata: expected a whole number, got {value!r}")
    return int(number)
