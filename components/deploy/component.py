"""KFP component: deploy (apply the serving manifests for the new version, roll back on failure)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def deploy_model(
    bento: Input[Model],
    decision: Input[Artifact],
    release: Output[Artifact],
    namespace: str = "",
    manifests: str = "",
    name: str = "automl-serving",
    timeout_s: int = 300,
):
    """Roll the packaged Bento out to the serving Deployment; roll back if it is not ready in time.

    Runs before promote: the pipeline promotes the model only once this step succeeded, so a
    failed rollout leaves the new version a challenger and the champion served. A rerun (KFP's
    retry) is safe: it rolls back to what was live before the first attempt. Credentials come
    from the pod's service account (or a kubeconfig), never from a parameter.

    Args:
        bento: The package step's Bento archive; its URI is the URL the serving pod fetches.
        decision: The gate's decision; nothing is deployed unless it says deploy.
        release: What was applied (JSON: version, namespace, objects, rollout state).
        namespace: Namespace of the serving Deployment; empty deploys nothing (and says so).
        manifests: Rendered serving manifests (path or URL); empty uses the copy in the image.
        name: Name of the serving Deployment in the manifests.
        timeout_s: Seconds to wait for the rollout before rolling back.
    """
    from kfp_automl.progress import reported

    with reported("deploy"):
        from kfp_automl.components.deploy.deploy import run
        from kfp_automl.contracts.decision import GateDecision

        outcome = run(
            bento_uri=bento.uri,
            bento_metadata=dict(bento.metadata),
            decision=GateDecision.read(decision.path),
            release_path=release.path,
            namespace=namespace,
            manifests=manifests,
            name=name,
            timeout_s=timeout_s,
        )
        if outcome.deployed:
            release.metadata.update(
                {"version": outcome.version, "namespace": namespace, "name": name}
            )
