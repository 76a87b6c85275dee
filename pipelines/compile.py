"""Compile the pipelines to KFP IR YAML (committed under pipelines/compiled/)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from pipelines.training import training

COMPILED_DIR = Path(__file__).parent / "compiled"
PIPELINES = {"training": training}


def compile_pipeline(name: str, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(PIPELINES[name], str(output))
    return output


def compile_all(directory: str | Path = COMPILED_DIR) -> list[Path]:
    return [compile_pipeline(name, Path(directory) / f"{name}.yaml") for name in PIPELINES]
