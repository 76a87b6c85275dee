"""The baseline of the serving bench: the BentoML service a user would write by hand.

One non-batchable endpoint over the same fitted pipeline as the project's Bento:
the records go straight into `pd.DataFrame` and `predict_proba`, with no
batching, no validation and no metrics. It loads the same model file from the
BentoML model store (hash-checked, like the project's service).

    bentoml serve service:PlainService --working-dir tests/bench/plain_service \
        --arg model_tag=automl-churn:VERSION
"""

from __future__ import annotations

from typing import Any

import bentoml
import pandas as pd
from pydantic import BaseModel

from kfp_automl.runtime.model_file import load_model


class PlainArgs(BaseModel):
    model_tag: str


args = bentoml.use_arguments(PlainArgs)


@bentoml.service(name="plain-baseline", traffic={"timeout": 60})
class PlainService:
    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        stored = self.bento_model
        self.model = load_model(stored.path, stored.info.metadata["sha256"])
        self.classes = [str(c) for c in self.model.classes_]

    @bentoml.api
    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        df = pd.DataFrame(records)
        proba = self.model.predict_proba(df)
        return [
            {
                "prediction": self.classes[int(row.argmax())],
                "probabilities": dict(zip(self.classes, row.tolist(), strict=True)),
            }
            for row in proba
        ]
