"""How well each column predicts the target on its own, on held-out rows.

Each feature is turned into groups (its categories, or up to 100 quantile bins
of its numbers or times); a lookup table from group to the target's class
shares (classification) or mean (regression) is learned on one half of the
rows and scored on the other half. The score is the share of the baseline
error removed (Brier score of the group's class shares for classification,
squared error of the group's mean for regression): 0 means no better than
the overall shares/mean, 1 means perfect. The data report shows it as the association with the
target; a score at or above LEAK_SCORE marks a column as leakage (it carries
the answer, e.g. a copy or a post-outcome field) and it is dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfp_automl.runtime.transformers import category_strings

LEAK_SCORE = 0.98
N_BINS = 100
MAX_ROWS = 200_000


def _groups(s: pd.Series, role: str) -> np.ndarray:
    if role in ("numeric", "datetime"):
        v = s.astype("int64").astype(float) if role == "datetime" else s.astype(float)
        v = v.to_numpy(dtype=float, na_value=np.nan)
        finite = v[np.isfinite(v)]
        if not len(finite):
            return np.zeros(len(v), dtype=np.int64)
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, N_BINS + 1)[1:-1]))
        codes = np.searchsorted(edges, v, side="right")
        codes[~np.isfinite(v)] = -1
        return codes
    codes, _ = pd.factorize(category_strings(s), use_na_sentinel=True)
    return codes


def _score_classification(g: np.ndarray, onehot: np.ndarray, train: np.ndarray) -> float:
    """1 - Brier score of per-group class shares (smoothed towards the overall shares) / baseline."""
    prior = onehot[train].mean(axis=0)
    sums = pd.DataFrame(onehot[train]).groupby(g[train]).sum()
    sizes = sums.sum(axis=1).to_numpy()[:, None]
    shares = pd.DataFrame((sums.to_numpy() + prior) / (sizes + 1), index=sums.index)
    test = ~train
    pred = np.array(shares.reindex(g[test]).to_numpy(), dtype=float)
    pred[np.isnan(pred).any(axis=1)] = prior
    brier = float(np.mean(np.sum((pred - onehot[test]) ** 2, axis=1)))
    base = float(np.mean(np.sum((prior - onehot[test]) ** 2, axis=1)))
    return 0.0 if base == 0 else max(0.0, 1 - brier / base)


def _score_regression(g: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    frame = pd.DataFrame({"g": g[train], "y": y[train]})
    means = frame.groupby("g")["y"].mean()
    overall = float(np.mean(y[train]))
    test = ~train
    pred = pd.Series(g[test]).map(means).fillna(overall).to_numpy(dtype=float)
    sse = float(np.sum((y[test] - pred) ** 2))
    sst = float(np.sum((y[test] - np.mean(y[test])) ** 2))
    return 0.0 if sst == 0 else max(0.0, 1 - sse / sst)


def association(
    df: pd.DataFrame, roles: dict[str, str], target: str, task: str, seed: int = 0
) -> dict[str, float]:
    """Held-out score of each feature alone (0: none, 1: predicts the target perfectly)."""
    if len(df) > MAX_ROWS:
        df = df.sample(MAX_ROWS, random_state=seed)
    rng = np.random.default_rng(seed)
    train = rng.random(len(df)) < 0.5
    if task == "classification":
        codes, labels = pd.factorize(df[target])
        y = np.eye(len(labels))[codes]  # one column per class
        score = _score_classification
    else:
        y = df[target].to_numpy(dtype=float)
        score = _score_regression
    out = {}
    for name, role in roles.items():
        if role == "text":
            continue
        out[name] = round(score(_groups(df[name], role), y, train), 4)
    return out
