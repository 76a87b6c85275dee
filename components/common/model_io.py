"""Model files this project writes, and loads only after checking their hash.

A fitted model is one sklearn Pipeline (preprocessing + estimator) stored with
joblib. Its SHA-256 travels with the artifact's metadata; loading refuses a
file whose hash differs, so nothing but our own output is ever unpickled.
The loader lives in serving/automl_io.py because every Bento ships it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import joblib

from components.common.io import atomic_path
from components.serving.automl_io import MODEL_FILE, ModelIntegrityError, load_model, sha256_file

__all__ = ["MODEL_FILE", "ModelIntegrityError", "load_model", "save_model", "sha256_file"]


def save_model(model: Any, directory: str | os.PathLike[str]) -> str:
    """Save `model` as `directory/model.joblib`; return its SHA-256."""
    target = Path(directory) / MODEL_FILE
    with atomic_path(target) as tmp:
        joblib.dump(model, tmp)
    return sha256_file(target)
