"""Ray Tune search over model families x hyperparameters (CASH).

`run_search` is plain Python: it starts (or joins) Ray, puts the data in the
object store once, runs an Optuna-driven Tuner under a wall-clock budget,
and returns the leaderboard. `refit_best` fits the winner on train+valid.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd

from components.common.metrics import METRICS, Metric, score
from components.common.progress import say
from components.tune.families import (
    Family,
    SearchSpace,
    build_model,
    family_params,
    flat_config,
    initial_configs,
)

# Ray Tune writes CSV/JSON/TensorBoard logs per trial unless told not to;
# they cost seconds per trial on 2 cores and nothing here reads them.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@dataclass
class SearchResult:
    leaderboard: pd.DataFrame  # one row per trial, best first
    best_config: dict[str, Any]
    best_score: float
    elapsed_s: float


def _xy(df: pd.DataFrame, target: str):
    return df.drop(columns=[target]), df[target]


def _trial(config: dict[str, Any], data, schema: dict[str, Any], metric_name: str, seed: int):
    """Ray Tune trainable: fit one configuration on train, score it on valid."""
    from ray import tune

    X_tr, y_tr, X_va, y_va = data
    model = build_model(schema, config, seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from linear models
        model.fit(X_tr, y_tr)
    fit_time = time.perf_counter() - start
    value = score(METRICS[metric_name], model, X_va, y_va)
    tune.report({"score": value, "fit_time_s": fit_time})


def _progress_callback(metric: Metric, budget_s: float, started: float, every_s: float = 5.0):
    """Print a line when the best score improves, and a status line at most every `every_s`."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.done = 0
            self.failed = 0
            self.best: tuple[float, str] | None = None
            self.last_print = time.monotonic()

        def _status(self) -> str:
            left = max(0.0, budget_s - (time.monotonic() - started))
            failed = f", {self.failed} failed" if self.failed else ""
            best = (
                f"best {metric.name}={self.best[0]:.4f} ({self.best[1]})"
                if self.best
                else "no result yet"
            )
            return f"{self.done} trials done{failed}, {best}, {left:.0f}s left"

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if "score" not in result:
                return
            self.done += 1
            value, family = result["score"], trial.config.get("family", "?")
            improved = self.best is None or metric.better(value, self.best[0])
            if improved:
                self.best = (value, family)
            if improved or time.monotonic() - self.last_print >= every_s:
                self.last_print = time.monotonic()
                say("tune", ("new best: " if improved else "") + self._status())

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed += 1
            say(
                "tune",
                f"a {trial.config.get('family', '?')} trial failed (see run.log); the search goes on",
            )

    return Progress()


def _start_ray(ray_address: str) -> bool:
    """Join `ray_address`, or start a private local Ray bound to 127.0.0.1. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if ray_address:
        ray.init(address=ray_address, logging_level="WARNING")
        return True
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),  # the CPUs this process may use (containers)
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=256 * 1024 * 1024,
        logging_level="WARNING",
        log_to_driver=False,
    )
    return True


def run_search(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: dict[str, Any],
    metric: Metric,
    families: list[Family],
    time_budget_s: float = 60,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
) -> SearchResult:
    """Search families x hyperparameters with Ray Tune; return the leaderboard and the best config."""
    import ray
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    target, task = schema["target"], schema["task"]
    started, started_wall = time.monotonic(), time.time()
    say("tune", f"starting Ray ({ray_address or 'local, 127.0.0.1'})")
    we_started = _start_ray(ray_address)
    try:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
        X_tr, y_tr = _xy(train, target)
        X_va, y_va = _xy(valid, target)
        # with_parameters puts the data in the object store once; every trial reads that copy.
        trainable = tune.with_parameters(
            _trial, data=(X_tr, y_tr, X_va, y_va), schema=schema, metric_name=metric.name, seed=seed
        )
        n_rows = len(train)
        searcher = OptunaSearch(
            space=SearchSpace(tuple(f.name for f in families), n_rows, task),
            metric="score",
            mode=metric.mode,
            points_to_evaluate=initial_configs(families, n_rows, task),
            sampler=TPESampler(seed=seed, n_startup_trials=max(5, 2 * len(families))),
        )
        budget_left = max(1.0, time_budget_s - (time.monotonic() - started))
        say(
            "tune",
            f"searching {', '.join(f.name for f in families)} for {budget_left:.0f}s "
            f"on {concurrency} CPUs, metric {metric.name} ({metric.mode})",
        )
        with tempfile.TemporaryDirectory(prefix="kfp-automl-tune-") as storage:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=max_trials if max_trials > 0 else -1,
                    max_concurrent_trials=concurrency,
                    time_budget_s=budget_left,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name="search",
                    storage_path=storage,
                    verbose=0,
                    callbacks=[_progress_callback(metric, time_budget_s, started)],
                ),
            )
            # Per-trial result files are off (see TUNE_DISABLE_AUTO_CALLBACK_LOGGERS), so the
            # ResultGrid warns for every trial that it cannot read them; its metrics come from memory.
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
            results = tuner.fit()
            board = leaderboard(results, metric, started_wall)
    finally:
        if we_started:
            ray.shutdown()
    ok = board[board["status"] == "ok"]
    if ok.empty:
        errors = board[board["status"] == "error"]
        if len(errors):
            raise RuntimeError(
                f"all {len(errors)} finished trials failed; first error: {errors.iloc[0]['error']}"
            )
        raise RuntimeError(
            f"no trial finished within the time budget of {time_budget_s:.0f}s; raise --time-budget"
        )
    best = ok.iloc[0]
    best_config = flat_config(best["family"], json.loads(best["params"]))
    return SearchResult(board, best_config, float(best["score"]), time.monotonic() - started)


def _first_line(error: BaseException) -> str:
    """The innermost exception's first line (Ray wraps trial errors in its own)."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:300]


def leaderboard(results, metric: Metric, started_wall: float) -> pd.DataFrame:
    """Every trial of a ResultGrid as one row: family, params, score, fit time; best first."""
    rows = []
    for r in results:
        config = r.config or {}
        m = r.metrics or {}
        ok = r.error is None and "score" in m
        rows.append(
            {
                "trial_id": m.get("trial_id", ""),
                "family": config.get("family", ""),
                "score": float(m["score"]) if ok else float("nan"),
                "fit_time_s": round(float(m.get("fit_time_s", float("nan"))), 4),
                "finished_at_s": round(float(m["timestamp"]) - started_wall, 2)
                if "timestamp" in m
                else float("nan"),
                "status": "ok" if ok else ("error" if r.error is not None else "stopped"),
                "params": json.dumps(family_params(config), sort_keys=True) if config else "{}",
                "error": _first_line(r.error) if r.error is not None else "",
            }
        )
    board = pd.DataFrame(
        rows,
        columns=["trial_id", "family", "score", "fit_time_s", "finished_at_s", "status", "params"],
    )
    # failed and stopped trials have no score, so they sort last
    board = board.sort_values(
        "score", ascending=not metric.greater_is_better, na_position="last", kind="stable"
    ).reset_index(drop=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    board.attrs["metric"] = metric.name
    return board


def refit_best(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: dict[str, Any],
    config: dict[str, Any],
    seed: int,
):
    """Fit the best configuration on train+valid: the model that is evaluated and shipped."""
    data = pd.concat([train, valid], ignore_index=True)
    X, y = _xy(data, schema["target"])
    model = build_model(schema, config, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model
