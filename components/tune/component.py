"""KFP component: tune (Ray Tune search over model families x hyperparameters)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def tune_models(
    train: Input[Dataset],
    valid: Input[Dataset],
    schema: Input[Artifact],
    model: Output[Model],
    leaderboard: Output[Dataset],
    search_report: Output[HTML],
    metric: str = "",
    families: str = "",
    time_budget_s: int = 120,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
    search_algorithm: str = "tpe",
    validation: str = "auto",
    early_stopping: bool = True,
    warm_start: str = "",
    ensemble: bool = True,
    tune_threshold: bool = True,
    search_state_root: str = "",
    warm_start_version: str = "",
):
    """Search model families and hyperparameters with Ray Tune; refit the winner.

    Args:
        train: Training rows from prepare.
        valid: Validation rows (the holdout of large tables; folded into CV on small ones).
        schema: Column roles from prepare.
        model: The winner (one sklearn estimator) refitted on train+valid (joblib, hash in metadata).
        leaderboard: Every trial: family, params, score, budget step, fit time, node, status (CSV).
        search_report: Score over time per family, the best configuration, the history (HTML).
        metric: Metric to optimise; empty picks the task's default.
        families: Comma-separated model families; empty searches all.
        time_budget_s: Wall-clock budget of the whole run in seconds: the search and the
            refit get what prepare spent (the schema's `elapsed_s`) and the steps after them
            need (about 28 s) leave, at least 10 s or a quarter of it.
        max_trials: Stop after this many trials (0: only the time budget stops it).
        seed: Seed for the search and the models.
        ray_address: A Ray cluster's Jobs API, http(s)://HEAD:8265: the search runs there as a
            Ray job, its inputs and outputs through the store of the search state; HOST:PORT
            joins a cluster by its GCS address (a Ray node on this host); empty starts Ray
            locally. ray:// (Ray Client) is refused.
        search_algorithm: tpe (Optuna), random or grid.
        validation: auto (CV up to 10,000 rows, else the holdout), cv or holdout.
        early_stopping: ASHA early stopping of iterative families' trials.
        warm_start: A previous leaderboard CSV (path or URL) whose best configurations go first.
        ensemble: Ship a greedy ensemble of the top trials when it beats the best single one.
        tune_threshold: For a binary target and f1, balanced_accuracy or f1_macro, tune the
            decision threshold on the chosen model's out-of-fold predictions (kept when it
            beats the most probable class).
        search_state_root: Where the search keeps its state (a path, s3://, minio:// or gs://
            URL); a retry of the task (same output URIs) resumes it. Empty: beside this task's
            outputs under the pipeline root; "none": a temporary folder (not with a Jobs URL).
        warm_start_version: The version of `warm_start` the fingerprint step read: part of
            KFP's cache key, so a changed leaderboard is never a cache hit.
    """
    from kfp_automl.progress import reported

    with reported("tune"):
        from kfp_automl.components.tune.tune import run, state_path

        storage = state_path(search_state_root, model.uri)
        info = run(
            train_path=train.path,
            valid_path=valid.path,
            schema_path=schema.path,
            model_dir=model.path,
            leaderboard_path=leaderboard.path,
            metric=metric,
            families=families,
            time_budget_s=time_budget_s,
            max_trials=max_trials,
            seed=seed,
            ray_address=ray_address,
            algorithm=search_algorithm,
            validation=validation,
            early_stopping=early_stopping,
            warm_start=warm_start,
            ensemble=ensemble,
            tune_threshold=tune_threshold,
            storage_path=storage,
            report_path=search_report.path,
            spent_s=float(schema.metadata.get("elapsed_s", 0.0) or 0.0),
        )
        model.metadata.update(info.to_metadata())
        leaderboard.metadata.update({"metric": info.metric, "n_trials": info.n_trials})
        if warm_start_version:
            leaderboard.metadata["warm_start_version"] = warm_start_version
