"""KFP component: evaluate (holdout metrics the Kubeflow dashboard draws, HTML report)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    test: Input[Dataset],
    schema: Input[Artifact],
    leaderboard: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    metric: str = "",
):
    """Score the model on the holdout rows.

    Args:
        model: Model from tune.
        test: Holdout rows from prepare.
        schema: Column roles from prepare.
        leaderboard: Trials from tune, shown in the report.
        metrics: Every holdout metric of the task (scalar metrics in the dashboard).
        classification_metrics: Confusion matrix and, for binary targets, the ROC curve.
        report: HTML report.
        metric: Primary metric; empty uses the one tune optimised.
    """
    from components.evaluate.evaluate import run

    ev = run(
        model.path,
        model.metadata.get("sha256", ""),
        dict(model.metadata),
        test.path,
        schema.path,
        leaderboard.path,
        report.path,
        metric,
    )
    for name, value in ev.metrics.items():
        metrics.log_metric(name, value)
    metrics.metadata["primary_metric"] = ev.metric
    if ev.confusion:
        classification_metrics.log_confusion_matrix([str(c) for c in ev.labels], ev.confusion)
    if ev.roc:
        classification_metrics.log_roc_curve(ev.roc["fpr"], ev.roc["tpr"], ev.roc["threshold"])
