"""The retrain-from-feedback pipeline: export-feedback -> the training pipeline.

A served model's labelled production predictions (the shared store every serving replica
writes, `serve --log-store`) become the table the training pipeline trains on, optionally
appended to the original training table, so a retrain on a cluster starts from what the
model saw in production.
"""

from kfp import dsl, kubernetes

from kfp_automl.components.feedback.component import STORE_ENV, export_feedback
from kfp_automl.pipelines.training import (
    RETRY_BACKOFF,
    Outputs,
    _storage_credentials,
    training,
)

PIPELINE_NAME = "kfp-automl-feedback-retrain"
# The Secret the serving pods read the store's URL from (manifests/serving/overlays/prod);
# the step reads the same one in the run's namespace.
STORE_SECRET = "kfp-automl-prediction-store"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Retrain on labelled production predictions: export-feedback, then training.",
)
def feedback_retrain(
    model_name: str,
    since: str = "30d",
    append_to: str = "",
    min_labels: int = 100,
    log_dir: str = "",
    task: str = "auto",
    metric: str = "",
    families: str = "",
    time_budget_s: int = 120,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
    registry_root: str = "",
    min_improvement: float = 0.0,
    deploy_namespace: str = "",
    deploy_manifests: str = "",
    deploy_timeout_s: int = 300,
    warm_start: str = "",
) -> Outputs:
    """Export `model_name`'s labelled predictions, then train, gate and deploy on them.

    Args:
        model_name: The served model: its predictions are read, and the retrained model is
            registered under this name (a challenger of its champion).
        since: Only predictions made since then: an age (12h, 30d) or an ISO date/time (UTC).
        append_to: The original training table (path or URL): train on it with the labelled
            predictions appended; empty trains on the labelled predictions alone.
        min_labels: Fail before training when fewer predictions are labelled.
        log_dir: A prediction log directory (one host) instead of the shared store; on a
            cluster leave it empty: the step reads the store's URL from the Secret
            kfp-automl-prediction-store (key url) in the run's namespace.
        task: auto, classification or regression.
        metric: Metric to optimise; empty picks the task's default.
        families: Comma-separated model families to search; empty searches all.
        time_budget_s: Wall-clock seconds of the search.
        max_trials: Trial cap (0: only the time budget stops the search).
        seed: Seed for the split, the search and the models.
        ray_address: Ray cluster for the search (see the training pipeline).
        registry_root: Model registry (see the training pipeline).
        min_improvement: The least gain on the metric for the new model to replace the champion.
        deploy_namespace: Namespace to roll a model the gate passed out to; empty deploys nothing.
        deploy_manifests: Rendered serving manifests for the deploy step; empty: the image's.
        deploy_timeout_s: Seconds the deploy step waits for the rollout before rolling back.
        warm_start: A previous run's leaderboard CSV that seeds the search.
    """
    export = export_feedback(
        model_name=model_name,
        since=since,
        append_to=append_to,
        min_labels=min_labels,
        log_dir=log_dir,
    ).set_display_name("export-feedback")
    # the store's URL holds a password: from the Secret, never a parameter (the UI shows those)
    kubernetes.use_secret_as_env(export, STORE_SECRET, {"url": STORE_ENV}, optional=True)
    _storage_credentials(export)  # append_to may be an object-store URL
    export.set_caching_options(False)  # the store changes under the same parameters
    export.set_retry(2, backoff_duration=RETRY_BACKOFF, backoff_factor=2.0)
    export.set_cpu_request("1").set_cpu_limit("1")
    export.set_memory_request("4Gi").set_memory_limit("4Gi")
    trained = training(
        data=export.outputs["data"],
        target=export.outputs["target"],
        task=task,
        metric=metric,
        families=families,
        time_budget_s=time_budget_s,
        max_trials=max_trials,
        seed=seed,
        ray_address=ray_address,
        model_name=model_name,
        registry_root=registry_root,
        min_improvement=min_improvement,
        deploy_namespace=deploy_namespace,
        deploy_manifests=deploy_manifests,
        deploy_timeout_s=deploy_timeout_s,
        warm_start=warm_start,
    )
    return Outputs(**{name: trained.outputs[name] for name in Outputs._fields})
