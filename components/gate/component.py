"""KFP component: gate (champion/challenger decision on the same holdout).

It returns the decision as its single output: kfp.local 2.17.0 cannot resolve a
`dsl.If` condition on one field of a NamedTuple output.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def gate_model(
    model: Input[Model],
    test: Input[Dataset],
    schema: Input[Artifact],
    decision: Output[Artifact],
    registry_root: str = "",
    model_name: str = "",
    metric: str = "",
    min_improvement: float = 0.0,
    n_bootstrap: int = 500,
) -> bool:
    """Decide whether the new model may replace the champion.

    Args:
        model: The challenger from tune (hash-checked).
        test: Holdout rows both models are scored on.
        schema: The new data's schema; a champion with another schema is refused.
        decision: deploy, reason, both scores, the improvement and its paired-bootstrap p-value (JSON).
        registry_root: Registry folder or s3://, minio://, gs:// bucket/prefix; empty: on a
            cluster, kfp-automl-registry/<namespace> in the artifact store's bucket (shared by
            the namespace's runs), else the default beside the BentoML store.
        model_name: Registered model name; empty derives automl-<target>.
        metric: Primary metric; empty uses the task's default.
        min_improvement: The least gain on the metric that justifies a replacement.
        n_bootstrap: Paired bootstrap resamples.

    Returns:
        True when the challenger should become champion (the reason is in `decision`).
    """
    from kfp_automl.progress import reported

    with reported("gate"):
        from kfp_automl.progress import say
        from kfp_automl.registry.registry import describe_root, run_root

        say("gate", describe_root(registry_root, decision.uri))
        registry_root = run_root(registry_root, decision.uri)
        from kfp_automl.components.gate.gate import run

        d = run(
            model_dir=model.path,
            sha256=model.metadata.get("sha256", ""),
            test_path=test.path,
            schema_path=schema.path,
            decision_path=decision.path,
            registry_root=registry_root,
            model_name=model_name,
            metric=metric,
            min_improvement=min_improvement,
            n_bootstrap=n_bootstrap,
        )
        decision.metadata.update(d.metadata())
        return d.deploy
