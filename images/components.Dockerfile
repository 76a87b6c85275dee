# The one image every kfp-automl component runs in (components/_image.py names it
# ghcr.io/kfp-automl/components:<package version>); it is also the Ray head/worker image of
# manifests/tuning/raycluster.yaml (Ray with its dashboard, client server and autoscaler
# support, the `ray-cluster` extra), so a Ray client in a pipeline pod and the cluster run the
# same Python and Ray. Dependencies are baked in: no component installs anything at run time.
# Build: make images   (docker, podman or buildah)

# ---- build: a virtualenv with the project and its dependencies (wheels only) ----------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kfp_automl ./kfp_automl
COPY components ./components
COPY pipelines ./pipelines
# --only-binary: every dependency comes as a wheel, so no compiler is needed or installed.
RUN python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --only-binary=:all: \
      ".[ray-cluster,storage]"

# ---- final: the virtualenv, a non-root user, nothing else ------------------------------------
FROM python:3.11.11-slim-bookworm
# The KFP v2 launcher keeps artifacts under /gcs, /minio and /s3 (a fixed contract); older
# backends do not mount emptyDirs there, so the non-root user owns them in the image.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin automl \
 && mkdir -p /gcs /minio /s3 \
 && chown 10001:10001 /gcs /minio /s3
COPY --from=build /opt/venv /opt/venv
# The deploy step's default manifests: `make serving-manifests` renders the prod overlay.
COPY images/rendered/serving.yaml /opt/kfp-automl/serving.yaml
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    RAY_USAGE_STATS_ENABLED=0 \
    TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
