"""KFP component: evaluate (holdout metrics the Kubeflow dashboard draws, report, model card)."""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    test: Input[Dataset],
    schema: Input[Artifact],
    leaderboard: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    model_card: Output[Artifact],
    prediction_reference: Output[Artifact],
    train: Input[Dataset] = None,
    valid: Input[Dataset] = None,
    metric: str = "",
    slice_column: str = "",
    n_bootstrap: int = 200,
    seed: int = 42,
):
    """Score the model on the holdout rows, with bootstrap intervals and diagnostics.

    Args:
        model: Model from tune.
        test: Holdout rows from prepare.
        schema: Column roles from prepare.
        leaderboard: Trials from tune, shown in the report.
        metrics: Every holdout metric of the task, and `<name>_ci_low`/`<name>_ci_high`
            (95% bootstrap interval) when the interval is defined.
        classification_metrics: Confusion matrix and, for binary targets, the ROC curve.
        report: HTML report (self-contained).
        summary: A few lines of Markdown: model, primary metric with interval, warnings.
        model_card: Directory with model_card.json and model_card.md.
        prediction_reference: The bins of the model's predictions on the holdout rows (JSON),
            the service's reference for prediction drift.
        train: Training rows from prepare (learning curve); optional.
        valid: Validation rows from prepare (learning curve); optional.
        metric: Primary metric; empty uses the one tune optimised.
        slice_column: Column whose values slice the holdout metrics; empty picks the
            categorical feature with the fewest categories.
        n_bootstrap: Bootstrap resamples per interval (0 turns intervals off).
        seed: Seed for the resamples, permutations and learning-curve folds.
    """
    from kfp_automl.progress import reported

    with reported("evaluate"):
        from kfp_automl.components.evaluate.evaluate import run
        from kfp_automl.contracts.model_info import ModelInfo

        ev = run(
            model_dir=model.path,
            model_info=ModelInfo.from_metadata(dict(model.metadata)),
            test_path=test.path,
            schema_path=schema.path,
            leaderboard_path=leaderboard.path,
            report_path=report.path,
            prediction_reference_path=prediction_reference.path,
            metric=metric,
            train_path=train.path if train is not None else "",
            valid_path=valid.path if valid is not None else "",
            summary_path=summary.path,
            model_card_dir=model_card.path,
            slice_column=slice_column,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for name, value in ev.metrics.items():
            metrics.log_metric(name, value)
            interval = ev.intervals.get(name)
            if interval is not None and interval.defined:
                metrics.log_metric(f"{name}_ci_low", interval.low)
                metrics.log_metric(f"{name}_ci_high", interval.high)
        metrics.metadata["primary_metric"] = ev.metric
        if ev.confusion:
            classification_metrics.log_confusion_matrix([str(c) for c in ev.labels], ev.confusion)
        if ev.roc:
            classification_metrics.log_roc_curve(ev.roc["fpr"], ev.roc["tpr"], ev.roc["threshold"])
