"""The Kubeflow Pipelines API client: runs and recurring runs of the compiled pipeline."""
