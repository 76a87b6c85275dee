"""kfp-automl: tabular AutoML and MLOps on Kubeflow Pipelines.

The namespace holds one package per concern (see docs/architecture.md):
`components` (the pipeline's steps), `pipelines` (the pipeline definition, compiling it,
running it locally), `runtime` (what a fitted model and a Bento need), `serving` (the Bento
service), `contracts` (the typed files steps exchange), `registry`, `bentos`, `tables`,
`cluster` (the Kubeflow Pipelines client), `retrain` (the alert webhook), `observability`
(Prometheus rules and the Grafana dashboard), `feedback` and `cli`.

Importing this package imports nothing else.
"""

__version__ = "0.2.0"
