"""The one image every component runs in.

Derived from the package version so a compiled pipeline always names the
image built from the same source (see images/components.Dockerfile).
"""

from kfp_automl import __version__

IMAGE_REPOSITORY = "ghcr.io/kfp-automl/components"
COMPONENTS_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
