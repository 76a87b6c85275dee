"""Model files this project writes, and loads only after checking their digest.

A fitted model is one scikit-learn estimator (a Pipeline of preprocessing and model, or a
soft-voting ensemble of such pipelines) stored with joblib as `model.joblib`. Its SHA-256
travels outside the file (the tune step's artifact metadata, the BentoML model's metadata,
the registry); `load_model` refuses a file whose digest differs, so nothing but our own
output is ever unpickled. Inside a .bento archive that digest travels with the archive, so the
archive itself is checked first against the `bento_sha256` the registry and the release
record (kfp_automl/registry/archive.py); `parse_sha256` reads such a digest from a flag.

Models written before the project moved under the `kfp_automl` namespace (release 0.1)
reference their transformers as `components.common.preprocess.<Class>`; `LEGACY_MODULES`
maps those names to where the classes live now, so such a file loads as it always did.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import joblib

from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path

MODEL_FILE = "model.joblib"
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

# module paths pickled by earlier releases -> where those classes live now
LEGACY_MODULES = {"components.common.preprocess": "kfp_automl.runtime.transformers"}


class ModelIntegrityError(RuntimeError):
    """The model file is not the one this project wrote."""


def parse_sha256(value: str, what: str = "--sha256") -> str:
    """`value` as 64 lower-case hex digits (an optional `sha256:` prefix and case are accepted);
    a UserError naming `what` otherwise."""
    text = value.strip()
    digest = text.lower().removeprefix("sha256:")
    if not text:
        raise UserError(f"{what} is empty: give the archive's sha256 (64 hex digits)")
    if not SHA256_PATTERN.fullmatch(digest):
        raise UserError(f"{what} {text[:80]!r} is not a sha256 digest (64 hex digits)")
    return digest


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(model: Any, directory: str | os.PathLike[str]) -> str:
    """Save `model` as `directory/model.joblib` (atomically); return its SHA-256."""
    target = Path(directory) / MODEL_FILE
    with atomic_path(target) as tmp:
        joblib.dump(model, tmp)
    return sha256_file(target)


def load_model(directory: str | os.PathLike[str], sha256: str) -> Any:
    """Load `directory/model.joblib` only if its SHA-256 is `sha256`."""
    path = Path(directory) / MODEL_FILE
    if not sha256:
        raise ModelIntegrityError(f"no hash recorded for {path}; refusing to load it")
    actual = sha256_file(path)
    if actual != sha256:
        raise ModelIntegrityError(
            f"{path} has sha256 {actual[:12]}..., expected {sha256[:12]}...; refusing to load it"
        )
    return unpickle(path)


def unpickle(path: str | os.PathLike[str]) -> Any:
    """joblib's load of an uncompressed file, with earlier releases' module paths renamed.

    The one use of joblib's unpickler class (`joblib.numpy_pickle.NumpyUnpickler`, not part
    of joblib's documented API): subclassed to rename modules in `find_class`.
    tests/unit/test_private_apis.py fails loudly when joblib changes it.
    """
    from joblib.numpy_pickle import NumpyUnpickler

    class _Renaming(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(LEGACY_MODULES.get(module, module), name)

    with open(path, "rb") as fh:
        return _Renaming(str(path), fh, ensure_native_byte_order=True).load()
