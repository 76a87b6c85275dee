"""The Bento service: POST /predict with {"records": [...]} -> predictions.

Built into every Bento by the package step together with automl_io.py; the
model tag comes from the Bento's build arguments, so one file serves every
model this project packages.
"""

from __future__ import annotations

import json
from typing import Any

import bentoml
from automl_io import (  # shipped beside this file in the Bento
    RecordError,
    load_model,
    predict_frame,
    predictions_payload,
    records_to_frame,
)
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel


class ServiceArgs(BaseModel):
    model_tag: str


args = bentoml.use_arguments(ServiceArgs)


@bentoml.service(name="kfp-automl", traffic={"timeout": 60})
class AutoMLService:
    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        stored = self.bento_model
        with open(stored.path_of("schema.json")) as fh:
            self.schema = json.load(fh)
        self.model = load_model(stored.path, stored.info.metadata["sha256"])

    @bentoml.api
    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Score records; a record the model cannot take gets a 400 naming record and field."""
        try:
            X = records_to_frame(records, self.schema)
        except RecordError as exc:
            raise InvalidArgument(json.dumps(exc.as_dict())) from None
        return predictions_payload(predict_frame(self.model, X))
