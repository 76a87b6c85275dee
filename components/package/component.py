"""KFP component: package (BentoML model + service -> Bento archive)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def package_model(
    model: Input[Model],
    schema: Input[Artifact],
    profile: Input[Artifact],
    prediction_reference: Input[Artifact],
    metrics: Input[Metrics],
    report: Input[HTML],
    bento: Output[Model],
    model_name: str = "",
    registry_root: str = "",
):
    """Save the model to the BentoML store, build a Bento with the typed service, export it.

    Args:
        model: Model from tune (its sha256 is checked before packaging).
        schema: Column roles; serving validates requests against them.
        profile: Reference profile from prepare; serving counts requests into its bins.
        prediction_reference: Bins of the model's holdout predictions from evaluate, the
            prediction-drift reference.
        metrics: Holdout metrics from evaluate, recorded in the registry.
        report: The evaluation report, recorded in the registry.
        bento: The exported Bento archive; metadata carries bento_tag, model_tag and the
            archive's bento_sha256 (also recorded in the registry).
        model_name: BentoML model and Bento name; empty derives automl-<target>.
        registry_root: Registry folder or s3://, minio://, gs:// bucket/prefix; empty: on a
            cluster, kfp-automl-registry/<namespace> in the artifact store's bucket (shared by
            the namespace's runs), else the default beside the BentoML store.
    """
    from kfp_automl.progress import reported

    with reported("package"):
        from kfp_automl.progress import say
        from kfp_automl.registry.registry import describe_root, run_root

        say("package", describe_root(registry_root, bento.uri))
        registry_root = run_root(registry_root, bento.uri)
        from kfp_automl.components.package.package import run
        from kfp_automl.contracts.model_info import ModelInfo

        packaged = run(
            model_dir=model.path,
            model_info=ModelInfo.from_metadata(dict(model.metadata)),
            schema_path=schema.path,
            archive_path=bento.path,
            name=model_name,
            profile_path=profile.path,
            prediction_reference_path=prediction_reference.path,
            test_metrics=dict(metrics.metadata),
            report_path=report.path,
            registry_root=registry_root,
            bento_uri=bento.uri,
            model_uri=model.uri,
        )
        bento.metadata.update(
            {
                "bento_tag": packaged.bento_tag,
                "model_tag": packaged.model_tag,
                # the deploy step sets it on the serving pod, whose init container checks it
                "bento_sha256": packaged.sha256,
            }
        )
