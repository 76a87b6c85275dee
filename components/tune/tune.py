"""The tune step from files to files: what the KFP component calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kfp_automl.components.tune.families import (
    family_params,
    has_categorical,
    imbalanced,
    select_families,
)
from kfp_automl.components.tune.search import (
    check_address,
    check_algorithm,
    refit_best,
    run_search,
)
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.schema import Schema
from kfp_automl.files import atomic_path
from kfp_automl.progress import say
from kfp_automl.registry import training_rows
from kfp_automl.runtime.metrics import resolve_metric
from kfp_automl.runtime.model_file import save_model


def state_path(search_state_root: str, output_uri: str) -> str:
    """Where the search keeps its resumable state; empty for a temporary folder.

    `output_uri` is the URI of one of the tune task's outputs. KFP's driver resolves it once
    per task (per run, under the pipeline root) and a retried pod gets the same one, so:

    - empty root: `<the task's output folder>/search-state`, on whatever store the pipeline
      root is (a local path under kfp.local, KFP's minio://, s3://, gs://);
    - an explicit root (a path, s3://, minio://, gs://): `<root>/<pipeline>/<run>/<task>/search-state`;
    - "none": a temporary folder (a retry starts over).
    """
    root = search_state_root.strip()
    if root == "none" or not output_uri:
        return ""
    folder = output_uri.removeprefix("file://").rstrip("/").rsplit("/", 1)[0]
    if not root:
        return f"{folder}/search-state"
    tail = "/".join(part for part in folder.split("://", 1)[-1].split("/")[-3:] if part)
    return f"{root.removeprefix('file://').rstrip('/')}/{tail}/search-state"


def run(
    *,
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
    algorithm: str = "tpe",
    validation: str = "auto",
    cv_folds: int = 5,
    early_stopping: bool = True,
    warm_start: str = "",
    ensemble: bool = True,
    tune_threshold: bool = True,
    storage_path: str = "",
    report_path: str = "",
    spent_s: float = 0.0,
) -> ModelInfo:
    """Search, refit the winner on train+valid, save it, the leaderboard (CSV) and the report.

    `time_budget_s` is the whole run's, `spent_s` of it spent before this step: the search
    and the refit get what the steps around them leave (budget.split_budget).

    `ray_address`: empty starts a private Ray; a GCS address (HOST:PORT) joins a cluster that
    has a node on this host; a Ray Jobs API URL (http(s)://HEAD:8265) runs all of this on
    that cluster as a Ray job (submit.py), its files passed through the store `storage_path`
    is on. Returns what the model's artifact says about it: digest, family, params, scores,
    trials.
    """
    import time

    from kfp_automl.components.tune import report, submit
    from kfp_automl.components.tune import warm_start as ws
    from kfp_automl.components.tune.budget import split_budget

    schema = Schema.read(schema_path)
    chosen = resolve_metric(metric, schema.task, schema.n_classes)
    selected = select_families(families)
    check_algorithm(algorithm)
    if submit.is_jobs_url(ray_address):  # the whole search runs on the cluster, as a Ray job
        options = dict(
            metric=metric,
            families=families,
            time_budget_s=time_budget_s,
            max_trials=max_trials,
            seed=seed,
            algorithm=algorithm,
            validation=validation,
            cv_folds=cv_folds,
            early_stopping=early_stopping,
            ensemble=ensemble,
            tune_threshold=tune_threshold,
            spent_s=spent_s,
        )
        return submit.run_as_job(
            ray_address,
            train_path=train_path,
            valid_path=valid_path,
            schema_path=schema_path,
            model_dir=model_dir,
            leaderboard_path=leaderboard_path,
            report_path=report_path,
            storage_path=storage_path,
            warm_start=warm_start,
            options=options,
        )
    check_address(ray_address)
    train, valid = pd.read_parquet(train_path), pd.read_parquet(valid_path)
    seeds: list[dict[str, Any]] = []
    if warm_start:
        seeds, skipped = ws.seeds(
            ws.read_leaderboard(warm_start),
            selected,
            len(train),
            schema.task,
            has_categorical=has_categorical(schema),
            imbalanced=imbalanced(train[schema.target], schema.task),
        )
        say("tune", f"warm start: {len(seeds)} configurations from {warm_start}")
        for why in skipped:
            say("tune", f"warm start skips {why}")
    budget = split_budget(time_budget_s, spent_s)
    say("tune", budget.describe())
    result = run_search(
        train,
        valid,
        schema,
        chosen,
        selected,
        time_budget_s=budget.search_s,
        max_trials=max_trials,
        seed=seed,
        ray_address=ray_address,
        algorithm=algorithm,
        validation_kind=validation,
        cv_folds=cv_folds,
        early_stopping=early_stopping,
        warm_start=seeds,
        use_ensemble=ensemble,
        storage_path=storage_path,
        reserve_refit=True,
        tune_decision_threshold=tune_threshold,
    )
    board = result.leaderboard
    with atomic_path(leaderboard_path) as tmp:
        board.to_csv(tmp, index=False)
    if report_path:
        with atomic_path(report_path) as tmp:
            tmp.write_text(report.render(result, chosen))
    n_ok = int((board["status"] == "ok").sum())
    say("tune", result.describe_time())
    if result.ensemble:
        family = "ensemble"
        params = [
            {"family": c["family"], "params": family_params(c), "weight": w}
            for c, w in result.ensemble
        ]
        score = float(result.ensemble_score)
    else:
        family = result.best_config["family"]
        params = family_params(result.best_config)
        score = result.best_score
    say(
        "tune",
        f"{n_ok} trials finished; best {family} {chosen.name}={score:.4f}; refitting on train+valid",
    )
    refit_started = time.perf_counter()
    model = refit_best(
        train, valid, schema, result.best_config, seed, result.ensemble, result.threshold
    )
    refit_s = time.perf_counter() - refit_started
    say("tune", f"refitted in {refit_s:.1f}s; the search took {result.elapsed_s:.0f}s")
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    sha256 = save_model(model, model_dir)
    # the inputs it learned from, for the gate of a later run (registry/training_rows.py)
    fitted_on = pd.concat([train, valid], ignore_index=True)
    rows_sha256 = training_rows.write(training_rows.input_keys(fitted_on, schema), model_dir)
    return ModelInfo(
        sha256=sha256,
        family=family,
        params=params,
        metric=chosen.name,
        greater_is_better=chosen.greater_is_better,
        valid_score=score,
        validation=result.validation,
        best_single_score=result.best_score,
        n_trials=n_ok,
        n_restored=result.n_restored,
        n_retried=result.n_retried,
        search_s=round(result.elapsed_s, 2),
        refit_s=round(refit_s, 2),
        rows_sha256=rows_sha256,
        **threshold_info(result.threshold),
    )


def threshold_info(tuned) -> dict[str, Any]:
    """ModelInfo's fields for a tuned decision threshold (none without one)."""
    if tuned is None:
        return {}
    return {
        "decision_threshold": round(tuned.threshold, 6),
        "threshold_class": str(tuned.pos_label),
        "threshold_score": tuned.score,
    }
