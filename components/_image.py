"""The one image every component runs in, and the serving image beside it.

Derived from the package version so a compiled pipeline always names the
image built from the same source (see images/components.Dockerfile). These are
the defaults; `kfp-automl images --registry ... --tag ...` (and `make images`)
points the compiled pipeline and the manifests at another registry and tag.
"""

from kfp_automl import __version__

DEFAULT_REGISTRY = "ghcr.io/kfp-automl"
IMAGE_REPOSITORY = f"{DEFAULT_REGISTRY}/components"
SERVING_REPOSITORY = f"{DEFAULT_REGISTRY}/serving"
COMPONENTS_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
