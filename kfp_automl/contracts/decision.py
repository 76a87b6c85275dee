"""The gate's decision: may the new model replace the champion, and why.

Written by the gate step (`decision` artifact, JSON); read by promote (the reason it records),
deploy (nothing is rolled out unless it says deploy) and the local run's summary. The
artifact's metadata carries `deploy` and `reason` too, for the Kubeflow dashboard.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kfp_automl.contracts.errors import ContractError, expect
from kfp_automl.files import write_json

DECISION_VERSION = 1


@dataclass(frozen=True)
class GateDecision:
    deploy: bool
    reason: str
    metric: str
    challenger_score: float
    champion_version: str | None = None
    champion_score: float | None = None
    improvement: float | None = None  # positive: the challenger is better
    improvement_ci: tuple[float, float] | None = None  # 95% paired-bootstrap interval
    p_value: float | None = (
        None  # share of resamples where the challenger is not better by the margin
    )
    min_improvement: float = 0.0
    problems: tuple[str, ...] = ()
    compared_rows: int | None = None  # holdout rows both models were scored on
    left_out_rows: int = 0  # holdout rows left out: the champion was fitted on their inputs

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["improvement_ci"] = None if self.improvement_ci is None else list(self.improvement_ci)
        out["problems"] = list(self.problems)
        return {"version": DECISION_VERSION, **out}

    def metadata(self) -> dict[str, Any]:
        """What the decision artifact's metadata shows in the dashboard."""
        return {"deploy": self.deploy, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Any) -> GateDecision:
        expect(isinstance(d, dict), "decision: expected a JSON object")
        version = d.get("version", 1)
        expect(
            version == DECISION_VERSION,
            f"decision version {version!r} is not one this release reads",
        )
        expect(isinstance(d.get("deploy"), bool), "decision: 'deploy' must be true or false")
        ci = d.get("improvement_ci")
        return cls(
            deploy=d["deploy"],
            reason=str(d.get("reason", "")),
            metric=str(d.get("metric", "")),
            challenger_score=float(d.get("challenger_score", float("nan"))),
            champion_version=d.get("champion_version"),
            champion_score=None if d.get("champion_score") is None else float(d["champion_score"]),
            improvement=None if d.get("improvement") is None else float(d["improvement"]),
            improvement_ci=None if ci is None else (float(ci[0]), float(ci[1])),
            p_value=None if d.get("p_value") is None else float(d["p_value"]),
            min_improvement=float(d.get("min_improvement") or 0.0),
            problems=tuple(str(p) for p in d.get("problems") or []),
            compared_rows=None if d.get("compared_rows") is None else int(d["compared_rows"]),
            left_out_rows=int(d.get("left_out_rows") or 0),
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> GateDecision:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ContractError(f"cannot read the gate decision {path}: {exc}") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())
