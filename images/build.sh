#!/usr/bin/env bash
# Build the kfp-automl images with the first working engine: docker, podman or buildah.
#   images/build.sh [IMAGE...]     IMAGE: components, serving (default: both)
# Tags: ghcr.io/kfp-automl/<image>:<package version> (kfp_automl/__init__.py), the names
# components/_image.py and manifests/ use. REGISTRY=... changes the registry part.
set -euo pipefail
cd "$(dirname "$0")/.."

registry=${REGISTRY:-ghcr.io/kfp-automl}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' kfp_automl/__init__.py)
[ -n "$version" ] || { echo "error: no __version__ in kfp_automl/__init__.py" >&2; exit 1; }
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(components serving)

build=()
if command -v docker >/dev/null 2>&1; then
  if docker info >/dev/null 2>&1; then
    build=(docker build)
  else
    echo "docker is installed but its daemon does not answer (docker info failed);" \
      "trying podman and buildah" >&2
  fi
fi
if [ ${#build[@]} -eq 0 ] && command -v podman >/dev/null 2>&1; then build=(podman build); fi
if [ ${#build[@]} -eq 0 ] && command -v buildah >/dev/null 2>&1; then build=(buildah bud); fi
if [ ${#build[@]} -eq 0 ]; then
  cat >&2 <<'MSG'
error: building the images needs a container engine, and none works here.
Install one of them, then run `make images` again:
  Docker  https://docs.docker.com/engine/install/ (and start the daemon)
  Podman  apt-get install podman     (rootless, no daemon)
  Buildah apt-get install buildah    (no daemon)
MSG
  exit 1
fi

for image in "${images[@]}"; do
  file=images/$image.Dockerfile
  [ -f "$file" ] || { echo "error: no $file (images: components, serving)" >&2; exit 1; }
  tag=$registry/$image:$version
  echo "building $tag with ${build[*]}"
  "${build[@]}" -f "$file" -t "$tag" .
done
