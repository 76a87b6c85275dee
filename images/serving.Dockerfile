# The serving image: runs a Bento from a .bento archive with `kfp-automl serve`, so a new
# model needs no image build. manifests/serving/base/deployment.yaml runs it twice:
#   init container:  kfp-automl fetch-bento --url $(BENTO_URL) --dest /bento/model.bento
#   main container:  kfp-automl serve --model /bento/model.bento --host 0.0.0.0 --port 3000
# The archive is imported into BENTOML_HOME (an emptyDir there) at start; the image holds
# kfp-automl's serving path (BentoML, scikit-learn, the service code) and s3fs/gcsfs for
# fetching from object stores. Build: make images   (docker, podman or buildah)

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
 && python -m pip --python /opt/venv/bin/python install --only-binary=:all: ".[storage]"

# ---- final: the virtualenv, a non-root user, writable dirs for a plain `docker run` --------
FROM python:3.11.11-slim-bookworm
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin automl \
 && mkdir -p /bento /var/lib/bentoml \
 && chown 10001:10001 /bento /var/lib/bentoml
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    BENTOML_HOME=/var/lib/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 3000
ENTRYPOINT ["kfp-automl"]
CMD ["serve", "--model", "/bento/model.bento", "--host", "0.0.0.0", "--port", "3000"]
