"""The series the rules record and the dashboard reads, and what they share with the service.

The service's own names (its `runner_name`, the endpoint, the prediction pseudo-feature) and
the drift formulas' floor come from the runtime, so a rule never names a series or label
value the service does not export.
"""

from __future__ import annotations

from kfp_automl.runtime.drift import EPS  # floor of p and q in PSI and JS
from kfp_automl.runtime.names import PREDICT_ENDPOINT as ENDPOINT
from kfp_automl.runtime.names import PREDICTION as PREDICTION_FEATURE
from kfp_automl.runtime.names import SERVICE_NAME

__all__ = ["ENDPOINT", "EPS", "PREDICTION_FEATURE", "SERVICE_NAME"]

# recording rules (automl:*), written by rules.py
BIN_RECORDS = "automl:feature_bin_records:increase_window"
RECORDS = "automl:feature_records:increase_window"
SHARE = "automl:feature_bin_share:window"
REFERENCE_SHARE = "automl:feature_reference_share:max"
PSI = "automl:feature_psi:window"
JS = "automl:feature_js:window"
