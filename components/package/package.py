"""Packaging: the fitted model into the BentoML model store, a Bento around it, and its archive."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_automl.components.package.bento import (
    SERVICE,
    build_context,
    runtime_requirements,
    runtime_versions,
)
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.profile import Bins, Profile
from kfp_automl.contracts.schema import Schema
from kfp_automl.files import write_json
from kfp_automl.registry.registry import model_name_for
from kfp_automl.registry.training_rows import ROWS_FILE
from kfp_automl.runtime.model_file import MODEL_FILE, load_model, sha256_file
from kfp_automl.runtime.packages import RECORD_KEY
from kfp_automl.serving.files import (
    EVALUATION_FILE,
    PREDICTION_REFERENCE_FILE,
    PROFILE_FILE,
    SCHEMA_FILE,
)


@dataclass
class Packaged:
    model_tag: str
    bento_tag: str
    archive: Path
    sha256: str  # of the archive: recorded in the registry and the release, checked on import


def package(
    *,
    model_dir: str | Path,
    model_info: ModelInfo,
    schema: Schema,
    archive_path: str | Path,
    name: str = "",
    profile: Profile | None = None,
    prediction_reference: Bins | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Packaged:
    """Save the model to the BentoML store, build a Bento around it and export the archive.

    Beside the model go the schema, the drift references the service's metrics use (the
    training rows' `profile` from prepare, the holdout predictions' `prediction_reference`
    from evaluate) and the holdout `evaluation` metrics (with `<name>_ci_low/_ci_high`), so
    the service exports them next to its live quality.
    """
    import bentoml

    # refuse to package anything but our own, intact output
    load_model(model_dir, model_info.sha256)
    name = name or model_name_for(schema.target)
    labels = {"task": schema.task, "family": model_info.family, "project": "kfp-automl"}
    # what the Bento pins, also recorded beside the model: the service checks them at start
    versions = runtime_versions()
    with bentoml.models.create(
        name,
        labels=labels,
        metadata={
            **model_info.to_metadata(),
            "target": schema.target,
            "data_fingerprint": schema.data_fingerprint,
            RECORD_KEY: versions,
        },
    ) as stored:
        shutil.copyfile(Path(model_dir) / MODEL_FILE, stored.path_of(MODEL_FILE))
        schema.write(stored.path_of(SCHEMA_FILE))
        if profile is not None:
            profile.write(stored.path_of(PROFILE_FILE))
        if prediction_reference is not None:
            prediction_reference.write(stored.path_of(PREDICTION_REFERENCE_FILE))
        if evaluation:
            write_json(stored.path_of(EVALUATION_FILE), evaluation)
    # the service module reads its model tag when imported: import it afresh for this Bento,
    # not as an earlier build in this process left it in sys.modules
    sys.modules.pop(SERVICE.split(":")[0], None)
    with tempfile.TemporaryDirectory(prefix="kfp-automl-bento-") as ctx:
        bento = bentoml.bentos.build(
            SERVICE,
            name=name,
            labels=labels,
            description=f"kfp-automl {schema.task} model for target {schema.target!r}",
            build_ctx=ctx,
            include=build_context(Path(ctx)),
            # exact pins of what the serving image installs; no lock: locking resolves against a
            # package index, which a pipeline pod on a cluster often cannot reach
            python={"packages": runtime_requirements(versions), "lock_packages": False},
            args={"model_tag": str(stored.tag)},
            # the Bento takes the model's version, so BentoML's request metrics (labelled with
            # the Bento's name and version) and ours (the model's) line up in Prometheus
            version=stored.tag.version,
        )
    archive_path = Path(archive_path)
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive_path.parent, prefix=".export-") as tmp:
        # BentoML's own .bento export is xz at preset 6: 15 s for a 20 MB forest. The same
        # layout at preset 0 (what `bentoml import` reads, as .bento) takes a tenth of that
        # for about 15 % more bytes.
        folder = bentoml.export_bento(bento.tag, str(Path(tmp) / "bento"), output_format="folder")
        written = Path(tmp) / "bento.bento"
        write_archive(Path(folder), written)
        digest = sha256_file(written)
        os.replace(written, archive_path)
    return Packaged(str(stored.tag), str(bento.tag), archive_path, digest)


ARCHIVE_PRESET = 0  # xz preset of the .bento archive


def write_archive(folder: Path, path: Path, preset: int = ARCHIVE_PRESET) -> None:
    """`folder`'s files as a .bento archive: an xz tar with `./` paths, as BentoML writes it."""
    import tarfile

    with tarfile.open(path, "w:xz", preset=preset) as tar:
        tar.add(folder, arcname=".")


def repackage(ref: str, archive_path: str | Path, name: str = "") -> Packaged:
    """The model of the Bento `ref` (a tag or a .bento archive, of this or an earlier release)
    packaged again with this release's service, as a new version; its archive at `archive_path`.

    The model file is the same bytes (its digest, recorded in the model's metadata, is checked
    before it is loaded), with the schema and the drift references it was packaged with; the
    registry is not changed.
    """
    import json

    import bentoml

    from kfp_automl.bentos.lookup import resolve_bento
    from kfp_automl.errors import UserError
    from kfp_automl.serving.files import EVALUATION_FILE, PREDICTION_REFERENCE_FILE, PROFILE_FILE

    bento = resolve_bento(ref)
    model_tag = (bento.info.args or {}).get("model_tag")
    if not model_tag:
        raise UserError(
            f"Bento {bento.tag} names no model_tag argument; it was not built by kfp-automl"
        )
    stored = bentoml.models.get(model_tag)

    def present(name: str) -> Path | None:
        path = Path(stored.path_of(name))
        return path if path.exists() else None

    profile = Profile.read(path) if (path := present(PROFILE_FILE)) else None
    prediction = Bins.read(path) if (path := present(PREDICTION_REFERENCE_FILE)) else None
    if prediction is None and profile is not None:
        prediction = profile.legacy_prediction  # 0.1.0 kept it inside the profile
    evaluation = json.loads(path.read_text()) if (path := present(EVALUATION_FILE)) else None
    return package(
        model_dir=stored.path,
        model_info=ModelInfo.from_metadata(dict(stored.info.metadata)),
        schema=Schema.read(stored.path_of(SCHEMA_FILE)),
        archive_path=archive_path,
        name=name or stored.tag.name,
        profile=profile,
        prediction_reference=prediction,
        evaluation=evaluation,
    )


def run(
    *,
    model_dir: str,
    model_info: ModelInfo,
    schema_path: str,
    archive_path: str,
    name: str = "",
    profile_path: str = "",
    prediction_reference_path: str = "",
    test_metrics: dict[str, Any] | None = None,
    report_path: str = "",
    registry_root: str = "",
    bento_uri: str = "",
    model_uri: str = "",
) -> Packaged:
    """Package the tuned model (hash from `model_info`) into a Bento archive at `archive_path`.

    The new version is registered as a challenger with its metrics, its report, where its
    archive lives (`bento_uri`, the artifact's URI under the pipeline root; default the archive
    path) and the archive's SHA-256 (`bento_sha256`), so a gate in another pod can fetch it
    when it is the champion, and anything that imports it can check it is this archive.
    With them go where the hashes of the model's training inputs are (`training_rows_uri`,
    under `model_uri`, the model artifact's URI; default `model_dir`) and their digest: the
    gate of a later run leaves the rows this model learned from out of its comparison.
    """
    from kfp_automl.progress import say
    from kfp_automl.registry.registry import Registry

    schema = Schema.read(schema_path)
    packaged = package(
        model_dir=model_dir,
        model_info=model_info,
        schema=schema,
        archive_path=archive_path,
        name=name,
        profile=Profile.read(profile_path) if profile_path else None,
        prediction_reference=Bins.read(prediction_reference_path)
        if prediction_reference_path
        else None,
        evaluation=test_metrics,
    )
    model_name, version = packaged.model_tag.split(":", 1)
    Registry(registry_root or None).register(
        model_name,
        version,
        {
            "bento_tag": packaged.bento_tag,
            "family": model_info.family,
            "metric": model_info.metric,
            "valid_score": model_info.valid_score,
            "decision_threshold": model_info.decision_threshold,
            "test_metrics": {
                k: v
                for k, v in (test_metrics or {}).items()
                if isinstance(v, int | float) and not k.endswith(("_ci_low", "_ci_high"))
            },
            "report": report_path,
            "bento_uri": bento_uri or str(archive_path),
            "bento_sha256": packaged.sha256,
            "data_fingerprint": schema.data_fingerprint,
            **(
                {
                    "training_rows_uri": f"{(model_uri or str(model_dir)).rstrip('/')}/{ROWS_FILE}",
                    "training_rows_sha256": model_info.rows_sha256,
                }
                if model_info.rows_sha256
                else {}
            ),
        },
    )
    say(
        "package",
        f"Bento {packaged.bento_tag} (model {packaged.model_tag}), registered as challenger",
    )
    return packaged
