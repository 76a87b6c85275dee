"""Greedy ensemble selection (Caruana et al., 2004) over the top trials' predictions.

Starting from the best single trial, add (with replacement) whichever trial's
predictions most improve the averaged predictions' score on the evaluation
rows, for a fixed number of rounds; the weights are how often each was picked.
The result is kept only when it beats the best single trial on those rows by at least
MIN_GAIN of its score: a smaller gain is noise, and an ensemble costs its members' serving
time.
The final model is sklearn's own soft-voting estimator over the members'
pipelines, so it pickles, loads and serves like any single pipeline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfp_automl.runtime.metrics import Metric, MetricUndefined

ROUNDS = 25
MIN_GAIN = 5e-4  # relative to the best single trial's score: 0.0005 of an AUC of 0.9 ...


@dataclass
class Selection:
    members: list[tuple[str, int]]  # (trial id, weight), heaviest first
    score: float  # the weighted average's score on the evaluation rows
    best_single: float  # the best single trial's score on the same rows

    greater_is_better: bool = True

    @property
    def gain(self) -> float:
        """The ensemble's gain over the best single trial, relative to that trial's score."""
        sign = 1.0 if self.greater_is_better else -1.0
        return sign * (self.score - self.best_single) / max(abs(self.best_single), 1e-12)

    @property
    def improves(self) -> bool:
        return len(self.members) > 1 and self.gain >= MIN_GAIN


def _score(metric: Metric, y, output: np.ndarray, classes: np.ndarray) -> float:
    if output.ndim == 2:  # class probabilities
        return float(metric.fn(y, classes[np.argmax(output, axis=1)], output, list(classes)))
    return float(metric.fn(y, output, None, list(classes)))


def select(
    preds: dict[str, np.ndarray],
    y: np.ndarray,
    metric: Metric,
    classes: np.ndarray,
    rounds: int = ROUNDS,
) -> Selection | None:
    """Caruana selection over `preds` (trial id -> predictions on the kept evaluation rows)."""
    if not preds:
        return None
    scored = {}
    for tid, p in preds.items():
        try:
            scored[tid] = _score(metric, y, p.astype(float), classes)
        except (MetricUndefined, ValueError):
            continue
    if not scored:
        return None
    order = sorted(scored, key=scored.get, reverse=metric.greater_is_better)
    best_id = order[0]
    picks = [best_id]
    total = preds[best_id].astype(float).copy()
    best_score, best_len = scored[best_id], 1
    for _ in range(rounds - 1):
        candidates = []
        for tid in order:
            trial_avg = (total + preds[tid]) / (len(picks) + 1)
            try:
                candidates.append((_score(metric, y, trial_avg, classes), tid))
            except (MetricUndefined, ValueError):
                continue
        if not candidates:
            break
        pick = (max if metric.greater_is_better else min)(candidates, key=lambda c: c[0])
        picks.append(pick[1])
        total += preds[pick[1]]
        if metric.better(pick[0], best_score):  # the best prefix of the greedy path wins
            best_score, best_len = pick[0], len(picks)
    counts = Counter(picks[:best_len]).most_common()
    return Selection(list(counts), best_score, scored[best_id], metric.greater_is_better)


def build(task: str, members: list[tuple[Any, int]]):
    """An unfitted soft-voting estimator over (pipeline, weight) members."""
    from sklearn.ensemble import VotingClassifier, VotingRegressor

    estimators = [(f"m{i}", est) for i, (est, _) in enumerate(members)]
    weights = [w for _, w in members]
    if task == "classification":
        return VotingClassifier(estimators, voting="soft", weights=weights, n_jobs=1)
    return VotingRegressor(estimators, weights=weights, n_jobs=1)
