"""What a Bento of this release holds: its service, and the files beside `model.joblib`."""

SERVICE = "kfp_automl.serving.service:AutoMLService"  # the Bento's service (bento.yaml)

SCHEMA_FILE = "schema.json"  # kfp_automl.contracts.schema.Schema
PROFILE_FILE = "profile.json"  # kfp_automl.contracts.profile.Profile (training rows)
PREDICTION_REFERENCE_FILE = "prediction_reference.json"  # contracts.profile.Bins (holdout)
EVALUATION_FILE = "evaluation.json"  # the holdout metrics with their intervals
