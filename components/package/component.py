"""KFP component: package (BentoML model + service -> Bento archive)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output
from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def package_model(
    model: Input[Model],
    schema: Input[Artifact],
    profile: Input[Artifact],
    test: Input[Dataset],
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
        test: Holdout rows; the model's predictions on them are the prediction-drift reference.
        metrics: Holdout metrics from evaluate, recorded in the registry.
        report: The evaluation report, recorded in the registry.
        bento: The exported Bento archive; metadata carries bento_tag and model_tag.
        model_name: BentoML model and Bento name; empty derives automl-<target>.
        registry_root: Registry folder or s3://, minio://, gs:// bucket/prefix; empty uses
            the default beside the BentoML store.
    """
    from kfp_automl.components.package.package import run

    packaged = run(
        model.path,
        dict(model.metadata),
        schema.path,
        bento.path,
        model_name,
        profile.path,
        test.path,
        dict(metrics.metadata),
        report.path,
        registry_root,
        bento.uri,
    )
    bento.metadata.update({"bento_tag": packaged.bento_tag, "model_tag": packaged.model_tag})
