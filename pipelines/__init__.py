"""The training pipeline, compiling it, and running it locally (installed as `kfp_automl.pipelines`)."""
