# The one image every kfp-automl component runs in (components/_image.py names it
# ghcr.io/kfp-automl/components:<package version>). Dependencies are baked in, so
# no component installs anything at run time.
# Build: make images   (needs docker, podman or buildah)

FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --create-home --uid 10001 automl
USER 10001
WORKDIR /home/automl
ENV BENTOML_HOME=/tmp/bentoml \
    TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 \
    PYTHONUNBUFFERED=1
