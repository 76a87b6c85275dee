"""Loading a model this project packaged from the BentoML model store, hash-checked, and
importing a registered version's archive into it (digest from the registry, then the archive
checks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.runtime.model_file import load_model, parse_sha256
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


class UnverifiedArchive(UserError):
    """The registry records no digest for a version's archive (registered before digests were
    recorded), so the archive is not imported."""


def load_registered_model(name: str, entry: dict[str, Any]) -> tuple[Any, Schema, dict[str, Any]]:
    """The model of registry entry `entry` (a version of `name`), hash-checked.

    From the local BentoML store when it is there; else (a fresh pod on a cluster) from the
    Bento archive the package step wrote, `entry["bento_uri"]` (a path, or a URL under the
    pipeline root: s3://, minio://, gs://), imported into the store only if its SHA-256 is the
    `bento_sha256` the registry records and its members pass the archive checks
    (kfp_automl/registry/archive.py). An entry without a digest raises UnverifiedArchive.
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
        digest = entry.get("bento_sha256") or ""
        if not digest:
            raise UnverifiedArchive(
                f"the registry records no sha256 for the archive of {tag} (registered before "
                "kfp-automl recorded archive digests), so it is not imported"
            ) from None
        _import_archive(uri, tag, parse_sha256(str(digest), f"the registry's sha256 for {tag}"))
    return load_stored_model(tag)


def _import_archive(uri: str, tag: str, sha256: str) -> None:
    """Copy the .bento archive at `uri` to a temporary file (capped), check its digest and its
    members, and import it (Bento and model)."""
    import tempfile

    import bentoml
    import fsspec
    from bentoml.exceptions import BentoMLException, NotFound

    from kfp_automl.registry.archive import (
        Limits,
        check_digest,
        check_source,
        copy_capped,
        display_url,
        verify_archive,
    )

    shown = display_url(uri)
    check_source(uri, f"the archive of {tag}")
    limits = Limits()
    with tempfile.TemporaryDirectory(prefix="kfp-automl-champion-") as tmp:
        local = Path(tmp) / "champion.bento"
        try:
            fs, path = fsspec.core.url_to_fs(fsspec_url(uri))
            with fs.open(path, "rb") as src, open(local, "wb") as out:
                measured = copy_capped(src, out, limits.max_archive_bytes, shown)
        except UserError:
            raise
        except ImportError as exc:
            raise UserError(
                f"cannot fetch model {tag} from {shown}: {exc} (pip install 'kfp-automl[storage]')"
            ) from None
        except (OSError, ValueError) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"cannot fetch model {tag} from {shown}: {detail}") from None
        recorded = "the registry's bento_sha256"
        check_digest(measured[1], sha256, shown, recorded)
        info = verify_archive(local, sha256, shown, limits, recorded, measured)
        try:
            bentoml.import_bento(str(local), input_format=info.compression)
        except BentoMLException as exc:
            raise UserError(f"{shown} is not a Bento archive of {tag}: {exc}") from None
    try:
        bentoml.models.get(tag)
    except NotFound:
        raise UserError(f"the Bento archive at {shown} does not hold model {tag}") from None
