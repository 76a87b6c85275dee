"""Finding packaged models: a Bento tag in the local BentoML store, or a .bento archive."""

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
    """name:version of the Bento inside a .bento archive, from its bento.yaml."""
    import tarfile

    import yaml

    try:
        with tarfile.open(path) as tar:
            member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "bento.yaml")
            info = yaml.safe_load(tar.extractfile(member))
        return f"{info['name']}:{info['version']}"
    except tarfile.TarError:
        raise UserError(f"{path} is not a Bento archive (not a readable tar file)") from None
    except (StopIteration, TypeError, KeyError, yaml.YAMLError):
        raise UserError(f"{path} is not a Bento archive (no valid bento.yaml inside)") from None


def resolve_bento(ref: str):
    """Return the Bento for `ref`: a tag in the store, or an archive (imported into the store once)."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    path = Path(ref)
    if ref.endswith(".bento") or path.is_file():
        if not path.is_file():
            raise UserError(f"Bento archive not found: {ref}")
        tag = _archive_tag(path)
        try:
            return bentoml.get(tag)
        except NotFound:
            pass
        try:
            return bentoml.import_bento(str(path))
        except BentoMLException as exc:
            raise UserError(f"cannot import Bento archive {ref}: {exc}") from None
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


def load_packaged_model(ref: str) -> PackagedModel:
    """The fitted pipeline and schema inside a Bento, loaded only after the hash check."""
    from kfp_automl.registry.store import load_stored_model

    bento = resolve_bento(ref)
    model_tag = (bento.info.args or {}).get("model_tag")
    if not model_tag:
        raise UserError(
            f"Bento {bento.tag} names no model_tag argument; it was not built by kfp-automl"
        )
    model, schema, _ = load_stored_model(model_tag)
    return PackagedModel(model, schema, str(model_tag), str(bento.tag))
