"""Loading a model this project packaged from the BentoML model store, hash-checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.common.errors import UserError
from components.common.model_io import load_model


def load_stored_model(tag: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(fitted pipeline, schema, metadata) of BentoML model `tag`, after the SHA-256 check."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise UserError(f"model {tag} is not in the BentoML store") from None
    meta = dict(stored.info.metadata)
    if "sha256" not in meta:
        raise UserError(
            f"model {stored.tag} was not written by kfp-automl (no sha256 in its metadata)"
        )
    schema = json.loads(Path(stored.path_of("schema.json")).read_text())
    return load_model(stored.path, meta["sha256"]), schema, meta
