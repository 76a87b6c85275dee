"""Finding packaged models: a Bento tag in the local BentoML store, or a .bento archive.

An archive is imported only after the checks of kfp_automl/registry/archive.py: its SHA-256
against `--sha256` when given, else against the `bento_sha256` the registry records for its
Bento version (a warning when the registry has none: an archive this project never
registered, or one registered before digests were recorded), then its members.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.registry.store import bentoml_home


@dataclass
class PackagedModel:
    model: Any
    schema: Schema
    model_tag: str
    bento_tag: str


def _archive_tag(path: Path) -> str:
    """name:version of the Bento inside a .bento archive, from its bento.yaml (after the
    archive checks of kfp_automl/registry/archive.py; no digest is checked here)."""
    from kfp_automl.registry.archive import verify_archive

    return verify_archive(path, None).tag


def _registered_digest(tag: str) -> tuple[str | None, str]:
    """(the archive digest the registry records for Bento `tag`, where) - None when the
    registry ($KFP_AUTOML_REGISTRY, else beside the BentoML store) has none for it."""
    from kfp_automl.registry.registry import Registry

    name, version = tag.split(":", 1)
    registry = Registry()
    entry = next(
        (
            v
            for v in registry.versions(name)
            if v.get("bento_tag") == tag or (v["version"] == version and not v.get("bento_tag"))
        ),
        None,
    )
    digest = (entry or {}).get("bento_sha256")
    return (str(digest) if digest else None), f"the registry at {registry.root}"


def verify_local_archive(path: Path, sha256: str = "", shown: str = ""):
    """The archive checks for a local .bento file, with its digest checked against `sha256`,
    else against the registry's record of its version; a warning when neither has one."""
    import sys

    from kfp_automl.registry.archive import check_digest, verify_archive
    from kfp_automl.runtime.model_file import parse_sha256

    shown = shown or str(path)
    if sha256:
        return verify_archive(path, parse_sha256(sha256), shown, recorded="--sha256")
    info = verify_archive(path, None, shown)
    recorded, where = _registered_digest(info.tag)
    if recorded is None:
        print(
            f"warning: {shown}: no --sha256 given and {where} records no digest for Bento "
            f"{info.tag}; the archive is not checked against a digest recorded outside it",
            file=sys.stderr,
        )
    else:
        check_digest(info.sha256, recorded, shown, where)
    return info


def resolve_bento(ref: str, sha256: str = ""):
    """Return the Bento for `ref`: a tag in the store, or an archive (imported into the store
    once, after its digest and members are checked: `verify_local_archive`)."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    path = Path(ref)
    if ref.endswith(".bento") or path.is_file():
        if not path.is_file():
            raise UserError(f"Bento archive not found: {ref}")
        info = verify_local_archive(path, sha256, ref)
        try:
            return bentoml.get(info.tag)
        except NotFound:
            pass
        try:
            # an absolute path: BentoML reads a relative one from the root folder
            return bentoml.import_bento(str(path.resolve()), input_format=info.compression)
        except BentoMLException as exc:
            raise UserError(f"cannot import Bento archive {ref}: {exc}") from None
    if sha256:
        raise UserError(f"--sha256 goes with a .bento archive; {ref!r} is a tag in the store")
    try:
        return bentoml.get(ref)
    except (NotFound, BentoMLException, ValueError):
        raise UserError(
            f"no Bento {ref!r} in the BentoML store ({bentoml_home()}); "
            "run `kfp-automl run` first or pass a .bento archive"
        ) from None


def check_servable(bento) -> None:
    """A UserError unless `bento` runs this release's service (a Bento of 0.1.0 does not)."""
    from kfp_automl.serving.files import SERVICE

    service = str(getattr(bento.info, "service", ""))
    if service != SERVICE:
        raise UserError(
            f"Bento {bento.tag} runs the service {service!r}, not this release's {SERVICE!r} "
            "(it was built by kfp-automl 0.1); `kfp-automl repackage --model "
            f"{bento.tag} --output NEW.bento` packages its model for this release"
        )


def load_packaged_model(ref: str, sha256: str = "") -> PackagedModel:
    """The fitted pipeline and schema inside a Bento, loaded only after the hash checks."""
    from kfp_automl.registry.store import load_stored_model

    bento = resolve_bento(ref, sha256)
    model_tag = (bento.info.args or {}).get("model_tag")
    if not model_tag:
        raise UserError(
            f"Bento {bento.tag} names no model_tag argument; it was not built by kfp-automl"
        )
    model, schema, _ = load_stored_model(model_tag)
    return PackagedModel(model, schema, str(model_tag), str(bento.tag))
