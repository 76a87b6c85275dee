"""KFP component: tune (Ray Tune search over model families x hyperparameters)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def tune_models(
    train: Input[Dataset],
    valid: Input[Dataset],
    schema: Input[Artifact],
    model: Output[Model],
    leaderboard: Output[Dataset],
    metric: str = "",
    families: str = "",
    time_budget_s: int = 60,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
):
    """Search model families and hyperparameters with Ray Tune; refit the best.

    Args:
        train: Training rows from prepare.
        valid: Validation rows that score each trial.
        schema: Column roles from prepare.
        model: The best sklearn Pipeline refitted on train+valid (joblib, hash in metadata).
        leaderboard: Every trial: family, params, score, fit time (CSV).
        metric: Metric to optimise; empty picks the task's default.
        families: Comma-separated model families; empty searches all.
        time_budget_s: Wall-clock budget of the search in seconds.
        max_trials: Stop after this many trials (0: only the time budget stops it).
        seed: Seed for the search and the models.
        ray_address: Ray cluster to join (e.g. ray://head:10001); empty starts Ray locally.
    """
    from components.tune.tune import run

    meta = run(
        train.path,
        valid.path,
        schema.path,
        model.path,
        leaderboard.path,
        metric,
        families,
        time_budget_s,
        max_trials,
        seed,
        ray_address,
    )
    model.metadata.update(meta)
    leaderboard.metadata.update({"metric": meta["metric"], "n_trials": meta["n_trials"]})
