#!/usr/bin/env bash
# Build (and push) the kfp-automl images with the first working engine: docker, podman or buildah.
#   images/build.sh [--push] [IMAGE...]     IMAGE: components, serving (default: both)
# Tags: $REGISTRY/<image>:$TAG, by default ghcr.io/kfp-automl/<image>:<package version>
# (kfp_automl/__init__.py), the names components/_image.py and manifests/ use. `make images`
# first points the compiled pipeline and the manifests at the same tags (`kfp-automl images`);
# the components image carries two of those files, so it is refused when they name others.
set -euo pipefail
cd "$(dirname "$0")/.."

registry=${REGISTRY:-ghcr.io/kfp-automl}
registry=${registry%/}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' kfp_automl/__init__.py)
[ -n "$version" ] || { echo "error: no __version__ in kfp_automl/__init__.py" >&2; exit 1; }
tag=${TAG:-$version}
if [ "$tag" = latest ]; then
  echo "error: TAG=latest is refused: pin a version (default: $version)" >&2; exit 2
fi
push=0
images=()
for arg in "$@"; do
  case $arg in
    --push) push=1 ;;
    -*) echo "error: unknown option $arg (usage: images/build.sh [--push] [IMAGE...])" >&2; exit 2 ;;
    *) images+=("$arg") ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=(components serving)

engine=()
if command -v docker >/dev/null 2>&1; then
  if docker info >/dev/null 2>&1; then
    engine=(docker)
  else
    echo "docker is installed but its daemon does not answer (docker info failed);" \
      "trying podman and buildah" >&2
  fi
fi
if [ ${#engine[@]} -eq 0 ] && command -v podman >/dev/null 2>&1; then engine=(podman); fi
if [ ${#engine[@]} -eq 0 ] && command -v buildah >/dev/null 2>&1; then engine=(buildah); fi
if [ ${#engine[@]} -eq 0 ]; then
  cat >&2 <<'MSG'
error: building the images needs a container engine, and none works here.
Install one of them, then run `make images` again:
  Docker  https://docs.docker.com/engine/install/ (and start the daemon)
  Podman  apt-get install podman     (rootless, no daemon)
  Buildah apt-get install buildah    (no daemon)
MSG
  exit 1
fi
build=("${engine[@]}" build)
[ "${engine[0]}" = buildah ] && build=(buildah bud)

# The components image carries the rendered serving manifests and the compiled pipeline:
# they must name the images being built.
carries() {  # FILE IMAGE
  local ref=$registry/$2:$tag
  [[ -f $1 && $(<"$1")$'\n' == *"image: $ref"$'\n'* ]] && return 0
  echo "error: $1 does not name $ref, and the components image carries it;" \
    "run \`make images REGISTRY=$registry TAG=$tag\` (it points the files at the images first)" >&2
  exit 1
}
for image in "${images[@]}"; do
  file=images/$image.Dockerfile
  [ -f "$file" ] || { echo "error: no $file (images: components, serving)" >&2; exit 1; }
  if [ "$image" = components ]; then
    carries images/rendered/serving.yaml serving
    carries pipelines/compiled/training.yaml components
  fi
done

for image in "${images[@]}"; do
  ref=$registry/$image:$tag
  echo "building $ref with ${build[*]}"
  "${build[@]}" -f "images/$image.Dockerfile" -t "$ref" .
done
if [ $push -eq 1 ]; then
  for image in "${images[@]}"; do
    ref=$registry/$image:$tag
    echo "pushing $ref with ${engine[0]}"
    "${engine[0]}" push "$ref"
  done
fi
