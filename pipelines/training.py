"""The training pipeline: prepare -> tune -> evaluate -> package."""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics, Model

from kfp_automl.components.deploy.component import deploy_model
from kfp_automl.components.evaluate.component import evaluate_model
from kfp_automl.components.gate.component import gate_model
from kfp_automl.components.package.component import package_model
from kfp_automl.components.prepare.component import fingerprint_inputs, prepare_data
from kfp_automl.components.promote.component import promote_model
from kfp_automl.components.tune.component import tune_models
from kfp_automl.registry.registry import NAMESPACE_ENV

PIPELINE_NAME = "kfp-automl-training"

# Credentials never travel as pipeline parameters. On a cluster, the steps that read URLs
# (the table, a warm-start leaderboard, the deploy manifests) or the model registry (package
# registers, gate reads the champion, promote writes it; an s3://, minio:// or gs://
# registry_root) take object-store credentials from this optional Secret in the run's
# namespace (keys named as the variables; absent keys or Secret: the pod's own cloud identity
# is used), and the tune step takes the KubeRay cluster's token from the Secret
# manifests/tuning expects.
STORAGE_SECRET = "kfp-automl-storage"
STORAGE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
RAY_SECRET = "automl-ray-auth"

# KFP caches a task when its component and resolved inputs are the same as an earlier run's.
# prepare and tune read URLs, so they take the versions the (never cached) fingerprint step
# read as inputs: a changed table is a cache miss, an unchanged one reuses the split and the
# search. Steps whose effect is outside their outputs (the registry, the cluster) never cache.
NEVER_CACHED = ("fingerprint", "package", "gate", "promote", "deploy")
# Every step is retried (KFP's retryPolicy) after a lost pod or a store's transient error: each
# is safe to rerun (outputs are rewritten whole, registry writes are conditional and repeatable,
# deploys are server-side applies that roll back to what was live before the first attempt)
# and tune resumes its saved search instead of starting over.
RETRIES = {
    "fingerprint": 2,
    "prepare": 2,
    "tune": 2,
    "evaluate": 1,
    "package": 2,
    "gate": 2,
    "promote": 3,
    "deploy": 1,
}
RETRY_BACKOFF = "30s"


class Outputs(NamedTuple):
    schema: Artifact
    profile: Artifact
    model: Model
    leaderboard: Dataset
    metrics: Metrics
    report: HTML
    summary: Markdown
    model_card: Artifact
    bento: Model
    decision: Artifact
    data_report: HTML
    data_summary: Markdown
    search_report: HTML


def _storage_credentials(task) -> None:
    kubernetes.use_secret_as_env(task, STORAGE_SECRET, {k: k for k in STORAGE_ENV}, optional=True)
    # The registry a run shares with the namespace's other runs is scoped by the namespace.
    kubernetes.use_field_path_as_env(task, NAMESPACE_ENV, "metadata.namespace")


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Tabular AutoML: prepare a table, search models with Ray Tune, evaluate, package a Bento.",
)
def training(
    data: str = "",
    target: str = "",
    task: str = "auto",
    metric: str = "",
    families: str = "",
    time_budget_s: int = 120,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
    model_name: str = "",
    registry_root: str = "",
    min_improvement: float = 0.0,
    slice_column: str = "",
    n_bootstrap: int = 200,
    deploy_namespace: str = "",
    deploy_manifests: str = "",
    deploy_timeout_s: int = 300,
    drop_columns: str = "",
    categorical_columns: str = "",
    numeric_columns: str = "",
    datetime_columns: str = "",
    text_columns: str = "",
    boolean_columns: str = "",
    time_column: str = "",
    group_column: str = "",
    drop_duplicates: bool = False,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    search_algorithm: str = "tpe",
    validation: str = "auto",
    early_stopping: bool = True,
    warm_start: str = "",
    ensemble: bool = True,
    tune_threshold: bool = True,
    search_state_root: str = "",
    prepare_cpu: str = "2",
    prepare_memory: str = "6Gi",
    tune_cpu: str = "2",
    tune_memory: str = "8Gi",
    step_cpu: str = "1",
    step_memory: str = "4Gi",
) -> Outputs:
    """Train and package a model for `target` in `data`.

    Args:
        data: Table path or fsspec URL; empty uses the built-in churn demo table.
        target: Target column (empty with empty data: the demo table's target).
        task: auto, classification or regression.
        metric: Metric to optimise; empty picks the task's default.
        families: Comma-separated model families to search (linear, random_forest, extra_trees,
            hist_gb, lightgbm, catboost); empty searches all.
        time_budget_s: Wall-clock seconds of the whole run: the search (Ray's start included)
            and the refit get what prepare spent and the steps after them need (about 28 s)
            leave, at least 10 s or a quarter of the budget.
        max_trials: Trial cap (0: only the time budget stops the search).
        seed: Seed for the split, the search and the models.
        ray_address: Ray cluster for the search: its Jobs API, http(s)://HEAD:8265 (on KubeRay
            http://automl-ray-head-svc.kfp-automl.svc.cluster.local:8265), runs the search there
            as a Ray job, files through the search state's store; empty starts Ray inside the
            tune step. ray:// (Ray Client) is refused.
        model_name: Name of the BentoML model and Bento; empty derives it from the target.
        registry_root: Model registry: a folder every run reaches (a shared volume), or an object
            store, s3://, minio:// (KFP's MinIO; endpoint from AWS_ENDPOINT_URL) or gs://
            bucket/prefix; empty: on a cluster, kfp-automl-registry/<namespace> in the
            artifact store's bucket (every run in the namespace shares it), locally beside
            the BentoML store.
        min_improvement: The least gain on the metric for a new model to replace the champion.
        slice_column: Categorical column for per-slice metrics in the report; empty picks one.
        n_bootstrap: Bootstrap resamples for the holdout metrics' confidence intervals.
        deploy_namespace: Namespace of the serving Deployment a model the gate passed is rolled
            out to (server-side apply, rollback when not ready) before it is promoted: it is
            promoted only once it is live. Empty deploys nothing.
        deploy_manifests: Rendered serving manifests (path or URL) for the deploy step; empty
            uses the copy baked into the components image.
        deploy_timeout_s: Seconds the deploy step waits for the rollout before rolling back.
        drop_columns: Columns to drop before training (comma-separated, or a JSON array).
        categorical_columns: Columns to treat as categorical (comma-separated, or a JSON array).
        numeric_columns: Columns to treat as numbers (comma-separated, or a JSON array).
        datetime_columns: Columns to parse as dates/times (comma-separated, or a JSON array).
        text_columns: Columns to treat as free text (comma-separated, or a JSON array).
        boolean_columns: Columns to treat as true/false (comma-separated, or a JSON array).
        time_column: Time-ordered split on this column (empty: random, stratified for classification).
        group_column: Split so one value of this column never spans train and test.
        drop_duplicates: Drop exact repeats of a row (the data report counts them); by default
            they are kept as observations (distinct records that look the same), each set of
            identical rows on one side of every split and validation fold.
        valid_fraction: Share of the rows held out to compare trials (the holdout of large
            tables; folded into cross-validation on small ones).
        test_fraction: Share of the rows held out for the final evaluation and the gate.
        search_algorithm: tpe (Optuna, default), random or grid.
        validation: Per-trial validation: auto (CV up to 10,000 rows, else the holdout), cv, holdout.
        early_stopping: ASHA early stopping for iterative families (rounds, trees).
        warm_start: A previous run's leaderboard CSV (path or URL) that seeds the search.
        ensemble: Ship a greedy ensemble of the top trials when it beats the best on validation.
        tune_threshold: For a binary target and f1, balanced_accuracy or f1_macro, tune the
            decision threshold on the chosen model's out-of-fold predictions (kept when it
            beats the most probable class).
        search_state_root: Where the tune step keeps its resumable state (a retry resumes it);
            empty: beside the tune task's outputs under the pipeline root; "none": a temporary
            folder.
        prepare_cpu: CPUs of the prepare pod (request = limit; a cluster only). Kubernetes
            quantity, e.g. 2 or 500m.
        prepare_memory: Memory of the prepare pod (request = limit; a cluster only). prepare
            peaks at about 3.5x the table's in-memory size, e.g. 6Gi for a 1.5 GiB table.
        tune_cpu: CPUs of the tune pod: the search and its trials without ray_address; with a
            Jobs URL the pod only waits for the job.
        tune_memory: Memory of the tune pod.
        step_cpu: CPUs of every other step's pod (fingerprint, evaluate, package, gate, promote,
            deploy).
        step_memory: Memory of every other step's pod.
    """
    versions = fingerprint_inputs(data=data, warm_start=warm_start).set_display_name("fingerprint")
    prep = prepare_data(
        data=data,
        target=target,
        task=task,
        seed=seed,
        drop_columns=drop_columns,
        categorical_columns=categorical_columns,
        numeric_columns=numeric_columns,
        datetime_columns=datetime_columns,
        text_columns=text_columns,
        boolean_columns=boolean_columns,
        time_column=time_column,
        group_column=group_column,
        drop_duplicates=drop_duplicates,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        data_version=versions.outputs["data_version"],
    ).set_display_name("prepare")
    tune = tune_models(
        train=prep.outputs["train"],
        valid=prep.outputs["valid"],
        schema=prep.outputs["schema"],
        metric=metric,
        families=families,
        time_budget_s=time_budget_s,
        max_trials=max_trials,
        seed=seed,
        ray_address=ray_address,
        search_algorithm=search_algorithm,
        validation=validation,
        early_stopping=early_stopping,
        warm_start=warm_start,
        ensemble=ensemble,
        tune_threshold=tune_threshold,
        search_state_root=search_state_root,
        warm_start_version=versions.outputs["warm_start_version"],
    ).set_display_name("tune")
    kubernetes.use_secret_as_env(tune, RAY_SECRET, {"auth_token": "RAY_AUTH_TOKEN"}, optional=True)
    evaluation = evaluate_model(
        model=tune.outputs["model"],
        test=prep.outputs["test"],
        schema=prep.outputs["schema"],
        leaderboard=tune.outputs["leaderboard"],
        train=prep.outputs["train"],
        valid=prep.outputs["valid"],
        metric=metric,
        slice_column=slice_column,
        n_bootstrap=n_bootstrap,
        seed=seed,
    ).set_display_name("evaluate")
    pkg = package_model(
        model=tune.outputs["model"],
        schema=prep.outputs["schema"],
        profile=prep.outputs["profile"],
        prediction_reference=evaluation.outputs["prediction_reference"],
        metrics=evaluation.outputs["metrics"],
        report=evaluation.outputs["report"],
        model_name=model_name,
        registry_root=registry_root,
    ).set_display_name("package")
    gate = gate_model(
        model=tune.outputs["model"],
        test=prep.outputs["test"],
        schema=prep.outputs["schema"],
        registry_root=registry_root,
        model_name=model_name,
        metric=metric,
        min_improvement=min_improvement,
    ).set_display_name("gate")
    gate.after(
        pkg
    )  # the champion is read after the new version is registered, never promoted in between
    for step in (versions, prep, tune, pkg, gate):
        _storage_credentials(step)
    steps = {
        "fingerprint": versions,
        "prepare": prep,
        "tune": tune,
        "evaluate": evaluation,
        "package": pkg,
        "gate": gate,
    }
    with dsl.If(gate.outputs["Output"] == True, name="deploy"):  # noqa: E712 (a KFP condition)
        # Roll out first, promote only once the new version is live: a rollout that fails (and
        # is rolled back) leaves the new version a challenger and the champion served. With
        # deploy_namespace empty the deploy step deploys nothing and says so.
        deploy = deploy_model(
            bento=pkg.outputs["bento"],
            decision=gate.outputs["decision"],
            namespace=deploy_namespace,
            manifests=deploy_manifests,
            timeout_s=deploy_timeout_s,
        ).set_display_name("deploy")
        promote = (
            promote_model(
                bento=pkg.outputs["bento"],
                decision=gate.outputs["decision"],
                registry_root=registry_root,
            )
            .set_display_name("promote")
            .after(deploy)
        )
        for step in (deploy, promote):  # deploy_manifests may be an object-store URL
            _storage_credentials(step)
        steps["deploy"] = deploy
        steps["promote"] = promote
    for name, step in steps.items():
        if name in NEVER_CACHED:
            step.set_caching_options(False)
        step.set_retry(RETRIES[name], backoff_duration=RETRY_BACKOFF, backoff_factor=2.0)
        cpu, memory = {
            "prepare": (prepare_cpu, prepare_memory),
            "tune": (tune_cpu, tune_memory),
        }.get(name, (step_cpu, step_memory))
        # KFP's compiler does not count a resource's channel as a task input, so a task in a
        # condition would read parameters its sub-DAG never receives: register them.
        step.register_pipeline_channels([cpu, memory])
        step.set_cpu_request(cpu).set_cpu_limit(cpu)
        step.set_memory_request(memory).set_memory_limit(memory)
    return Outputs(
        schema=prep.outputs["schema"],
        profile=prep.outputs["profile"],
        model=tune.outputs["model"],
        leaderboard=tune.outputs["leaderboard"],
        metrics=evaluation.outputs["metrics"],
        report=evaluation.outputs["report"],
        summary=evaluation.outputs["summary"],
        model_card=evaluation.outputs["model_card"],
        bento=pkg.outputs["bento"],
        decision=gate.outputs["decision"],
        data_report=prep.outputs["data_report"],
        data_summary=prep.outputs["data_summary"],
        search_report=tune.outputs["search_report"],
    )
