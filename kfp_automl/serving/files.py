"""The files a packaged model keeps beside `model.joblib` in its BentoML model folder."""

SCHEMA_FILE = "schema.json"  # kfp_automl.contracts.schema.Schema
PROFILE_FILE = "profile.json"  # kfp_automl.contracts.profile.Profile (training rows)
PREDICTION_REFERENCE_FILE = "prediction_reference.json"  # contracts.profile.Bins (holdout)
EVALUATION_FILE = "evaluation.json"  # the holdout metrics with their intervals
