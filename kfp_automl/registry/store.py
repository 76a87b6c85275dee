"""Loading a model this project packaged from the BentoML model store, hash-checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.runtime.model_file import load_model
from kfp_automl.serving.files import SCHEMA_FILE
from kfp_automl.tables.io import fsspec_url


def bentoml_home() -> Path:
    """Where BentoML keeps its stores: $BENTOML_HOME, else ~/bentoml (BentoML's documented
    default; tests/unit/test_private_apis.py checks BentoML resolves it the same)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


def load_stored_model(tag: str) -> tuple[Any, Schema, dict[str, Any]]:
    """(fitted pipeline, schema, metadata) of BentoML model `tag`, after the SHA-256 check."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise UserError(f"model {tag} is not in the BentoML store") from None
    meta = dict(stored.info.metadata)
    if not isinstance(meta.get("sha256"), str):
        raise UserError(
            f"model {stored.tag} was not written by kfp-automl (no sha256 in its metadata)"
        )
    schema = Schema.read(stored.path_of(SCHEMA_FILE))
    return load_model(stored.path, str(meta["sha256"])), schema, meta


def load_registered_model(name: str, entry: dict[str, Any]) -> tuple[Any, Schema, dict[str, Any]]:
    """The model of registry entry `entry` (a version of `name`), hash-checked.

    From the local BentoML store when it is there; else (a fresh pod on a cluster) from the
    Bento archive the package step wrote, `entry["bento_uri"]` (a path, or a URL under the
    pipeline root: s3://, minio://, gs://), imported into the store first.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{name}:{entry['version']}"
    try:
        bentoml.models.get(tag)
    except NotFound:
        uri = entry.get("bento_uri") or ""
        if not uri:
            raise UserError(
                f"model {tag} is not in the BentoML store, and the registry records no Bento "
                "archive for it (registered before archives were recorded)"
            ) from None
        _import_archive(uri, tag)
    return load_stored_model(tag)


def _import_archive(uri: str, tag: str) -> None:
    """Copy the .bento archive at `uri` to a temporary file and import it (Bento and model)."""
    import tempfile

    import bentoml
    import fsspec
    from bentoml.exceptions import BentoMLException, NotFound

    url = fsspec_url(uri)
    with tempfile.TemporaryDirectory(prefix="kfp-automl-champion-") as tmp:
        local = Path(tmp) / "champion.bento"
        try:
            fs, path = fsspec.core.url_to_fs(url)
            fs.get_file(path, str(local))
        except ImportError as exc:
            raise UserError(
                f"cannot fetch model {tag} from {uri}: {exc} (pip install 'kfp-automl[storage]')"
            ) from None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot fetch model {tag} from {uri}: {exc}") from None
        try:
            bentoml.import_bento(str(local))
        except BentoMLException as exc:
            raise UserError(f"{uri} is not a Bento archive of {tag}: {exc}") from None
    try:
        bentoml.models.get(tag)
    except NotFound:
        raise UserError(f"the Bento archive at {uri} does not hold model {tag}") from None
