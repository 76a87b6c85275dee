"""KFP component: promote (make the packaged model the registry's champion)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def promote_model(
    bento: Input[Model],
    decision: Input[Artifact],
    registry_root: str = "",
):
    """Promote the packaged model to champion (when the gate said deploy, once deploy succeeded).

    Args:
        bento: The package step's output; its metadata names the model tag.
        decision: The gate's decision; its reason is recorded with the promotion.
        registry_root: Registry folder or s3://, minio://, gs:// bucket/prefix; empty: on a
            cluster, kfp-automl-registry/<namespace> in the artifact store's bucket (shared by
            the namespace's runs), else the default beside the BentoML store.
    """
    from kfp_automl.progress import reported

    with reported("promote"):
        from kfp_automl.progress import say
        from kfp_automl.registry.registry import describe_root, run_root

        say("promote", describe_root(registry_root, bento.uri))
        registry_root = run_root(registry_root, bento.uri)
        from kfp_automl.contracts.decision import GateDecision
        from kfp_automl.registry.registry import promote_tag

        reason = GateDecision.read(decision.path).reason
        promote_tag(bento.metadata["model_tag"], reason, registry_root)
