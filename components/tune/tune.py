"""The tune step from files to files: what the KFP component calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from components.common.io import atomic_path, read_json
from components.common.metrics import resolve_metric
from components.common.model_io import save_model
from components.common.progress import say
from components.tune.families import family_params, select_families
from components.tune.search import refit_best, run_search


def run(
    train_path: str,
    valid_path: str,
    schema_path: str,
    model_dir: str,
    leaderboard_path: str,
    metric: str = "",
    families: str = "",
    time_budget_s: float = 60,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
) -> dict[str, Any]:
    """Search, refit the best on train+valid, save it and the leaderboard (CSV).

    Returns the model's metadata: sha256, family, params, metric, valid_score, n_trials.
    """
    schema = read_json(schema_path)
    train, valid = pd.read_parquet(train_path), pd.read_parquet(valid_path)
    chosen = resolve_metric(metric, schema["task"], len(schema.get("classes", [])))
    result = run_search(
        train,
        valid,
        schema,
        chosen,
        select_families(families),
        time_budget_s=time_budget_s,
        max_trials=max_trials,
        seed=seed,
        ray_address=ray_address,
    )
    board = result.leaderboard
    with atomic_path(leaderboard_path) as tmp:
        board.to_csv(tmp, index=False)
    n_ok = int((board["status"] == "ok").sum())
    family = result.best_config["family"]
    say(
        "tune",
        f"{n_ok} trials finished; best {family} {chosen.name}={result.best_score:.4f}; refitting on train+valid",
    )
    model = refit_best(train, valid, schema, result.best_config, seed)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    sha256 = save_model(model, model_dir)
    return {
        "sha256": sha256,
        "family": family,
        "params": json.dumps(family_params(result.best_config), sort_keys=True),
        "metric": chosen.name,
        "greater_is_better": chosen.greater_is_better,
        "valid_score": result.best_score,
        "n_trials": n_ok,
        "search_s": round(result.elapsed_s, 2),
    }
