"""Names the service exports and the rules, the dashboard and the reports read: one definition.

Prometheus series are named as prometheus_client is given them; a counter is queried with
`_total` after the name (`total(RECORDS)`), a histogram with `_bucket`, `_sum`, `_count`.
The service (kfp_automl/serving) creates them; kfp_automl/observability writes PromQL over
them; tests/manifests/test_monitoring.py checks every query names a series that exists.
"""

from __future__ import annotations

SERVICE_NAME = "kfp-automl"  # @bentoml.service(name=...): BentoML's runner_name label
PREDICT_ENDPOINT = "/predict"
READY_ENDPOINT = "/readyz"  # BentoML's readiness probe (the Deployment's readinessProbe)
FEEDBACK_ENDPOINT = "/feedback"
# GET: "ok", or "degraded" while the prediction log or its store cannot be written (the pod
# stays ready: predictions keep flowing); 503 when /readyz is
STATUS_ENDPOINT = "/status"
PREDICTION = "__prediction__"  # the pseudo-feature whose bins are the model's predictions

# ---- series of serving/monitoring.py (every scored batch) ----------------------------------
RECORDS = "automl_records"  # counter: records scored
REQUESTS_REJECTED = "automl_requests_rejected"  # counter by reason: requests refused for bad input
# reasons of REQUESTS_REJECTED that the HTTP protocol counts on any path (slow clients, the
# connection limit): not bad input to /predict, so the rejected-share alert leaves them out
CONNECTION_REFUSALS = ("header_timeout", "body_timeout", "too_many_connections")
FEATURE_BIN = "automl_feature_bin"  # counter by feature, bin: records per reference bin
FEATURE_MISSING = "automl_feature_missing"  # counter by feature
FEATURE_OUT_OF_RANGE = "automl_feature_out_of_range"  # counter by feature: beyond training range
FEATURE_UNSEEN_CATEGORY = "automl_feature_unseen_category"  # counter by feature
INFERENCE_SECONDS = "automl_inference_duration_seconds"  # histogram per batch
BATCH_RECORDS = "automl_batch_size_records"  # histogram: records per batch
REFERENCE_SHARE = "automl_feature_reference_share"  # gauge by feature, bin: training share
DRIFT_THRESHOLD = "automl_drift_threshold"  # gauge by feature, statistic: calibrated alert level
MODEL_INFO = "automl_model_info"  # gauge (1) labelled with the served model's facts
# gauge (1) by package, recorded, installed: the model is not loaded (runtime/packages.py)
PACKAGE_MISMATCH = "automl_package_mismatch"

# ---- series of serving/quality.py (prediction log, labels, live quality) --------------------
LOG_RECORDS = "automl_prediction_log_records"  # counter
LOG_DROPPED = "automl_prediction_log_dropped"  # counter by reason
LOG_ERRORS = "automl_prediction_log_errors"  # counter by part
LOG_HEALTHY = "automl_prediction_log_healthy"  # gauge by part
FEEDBACK_LABELS = "automl_feedback_labels"  # counter by outcome
FEEDBACK_REJECTED = "automl_feedback_rejected"  # counter by reason: /feedback refused whole
PREDICTIONS_EXPIRED = "automl_predictions_expired"  # counter: unlabelled, past their TTL
LABEL_DELAY_SECONDS = "automl_label_delay_seconds"  # histogram: prediction to label
LIVE_METRIC = "automl_live_metric"  # gauge by metric: over the newest labels
LIVE_WINDOW_LABELS = "automl_live_window_labels"  # gauge: labels in that window
# gauge by metric: over the newest labels of this replica's own predictions (a shared store:
# LIVE_METRIC is the fleet's, the same in every pod; this one shows a replica that differs)
LIVE_REPLICA_METRIC = "automl_live_replica_metric"
LIVE_REPLICA_WINDOW_LABELS = "automl_live_replica_window_labels"  # gauge: labels in it
LOG_BACKLOG = "automl_prediction_log_backlog"  # gauge: predictions waiting for the store
EVALUATION_METRIC = "automl_evaluation_metric"  # gauge by metric, bound: the holdout's


def total(counter: str) -> str:
    """The series a counter is queried by."""
    return f"{counter}_total"
