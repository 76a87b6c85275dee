"""Compile the pipelines to KFP IR YAML (committed under pipelines/compiled/).

`compile_pipeline(name, path, image=REF)` writes REF as the image of every
executor; without `image` the components' own image (the constant in
components/_image.py) stays. The image is always an argument, never read from
the environment, so the YAML depends only on the source and the arguments.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from kfp import compiler
from kfp.compiler import pipeline_spec_builder
from kfp.pipeline_spec import pipeline_spec_pb2

from kfp_automl.errors import UserError
from kfp_automl.pipelines.feedback import feedback_retrain
from kfp_automl.pipelines.training import training

COMPILED_DIR = Path(__file__).parent / "compiled"
PIPELINES = {"training": training, "feedback-retrain": feedback_retrain}

# An OCI image reference: [registry[:port]/]path[:tag][@digest] (the grammar of
# github.com/distribution/reference, lower-case path components).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
_IMAGE_REF = re.compile(
    rf"{_DOMAIN}{_COMPONENT}(?:/{_COMPONENT})*(?P<tag>:[\w][\w.-]{{0,127}})?(?P<digest>@sha256:[0-9a-f]{{64}})?"
)


def check_image(ref: str) -> str:
    """Return `ref` if it is a pinned image reference (a tag other than latest, or a digest)."""
    match = _IMAGE_REF.fullmatch(ref)
    if match is None:
        raise UserError(
            f"--image {ref!r} is not an image reference such as registry.example.com/team/components:1.2.0"
        )
    if not match["digest"] and match["tag"] in (None, ":latest"):
        raise UserError(f"--image {ref!r} must pin a tag other than latest, or a digest")
    return ref


def _with_image(spec: pipeline_spec_pb2.PipelineSpec, image: str) -> pipeline_spec_pb2.PipelineSpec:
    """A copy of `spec` whose every container executor runs `image`."""
    copy = pipeline_spec_pb2.PipelineSpec()
    copy.CopyFrom(spec)
    executors = copy.deployment_spec["executors"]
    for name in executors:
        container = executors[name]["container"]
        container["image"] = image
    return copy


def compile_pipeline(name: str, output: str | Path, image: str | None = None) -> Path:
    """Write pipeline `name` as IR YAML to `output`; `image` replaces every executor's image."""
    if image is not None:
        check_image(image)  # before anything is written
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    func = PIPELINES[name]
    # written beside the output, then renamed: never a half-written YAML
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        if image is None:
            compiler.Compiler().compile(func, str(staged))
        else:
            pipeline_spec_builder.write_pipeline_spec_to_file(
                pipeline_spec=_with_image(func.pipeline_spec, image),
                pipeline_description=func.description,
                platform_spec=func.platform_spec,
                package_path=str(staged),
            )
        os.replace(staged, output)
    return output


def compile_all(directory: str | Path = COMPILED_DIR, image: str | None = None) -> list[Path]:
    return [
        compile_pipeline(name, Path(directory) / f"{name}.yaml", image=image) for name in PIPELINES
    ]
