"""Names the service exports and the rules, dashboard and reports read: one definition each.

Prometheus series are named here without the suffix prometheus_client adds (`_total`
for a counter, `_bucket`/`_sum`/`_count` for a histogram); `series()` gives the name a
query uses.
"""

from __future__ import annotations

SERVICE_NAME = "kfp-automl"  # @bentoml.service(name=...): BentoML's runner_name label
PREDICT_ENDPOINT = "/predict"
FEEDBACK_ENDPOINT = "/feedback"
PREDICTION = "__prediction__"  # the pseudo-feature whose bins are the model's predictions
