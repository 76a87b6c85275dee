"""Requests are turned into exactly the input the model was trained on (no train/serve skew)."""

from __future__ import annotations

import math

import numpy as np

from kfp_automl.components.prepare.prepare import prepare
from kfp_automl.components.tune.families import FAMILIES, build_model, flat_config
from kfp_automl.runtime.records import coerce_frame, predict_frame, records_to_frame


def test_records_and_tables_score_like_the_training_frame(churn_df):
    prepared = prepare(churn_df.head(1500), "churn")
    X_train = prepared.train.drop(columns="churn")
    X_test = prepared.test.drop(columns="churn")  # Parquet dtypes, as the model saw in training
    for family in ("linear", "hist_gb"):
        config = flat_config(family, FAMILIES[family].initial)
        model = build_model(prepared.schema, config).fit(X_train, prepared.train["churn"])
        expected = model.predict_proba(X_test)
        records = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in X_test.astype(object).to_dict("records")
        ]
        for frame in (
            records_to_frame(records, prepared.schema),
            coerce_frame(X_test, prepared.schema),
        ):
            got = predict_frame(model, frame)
            assert np.allclose(got[["proba_No", "proba_Yes"]].to_numpy(), expected, atol=1e-12)
            assert (got["prediction"].to_numpy() == model.predict(X_test)).mean() > 0.999
