"""What a Bento is made of: the service, the project code it ships, the packages it pins.

A Bento ships the service and everything of this project it imports (kfp_automl.serving,
kfp_automl.runtime, kfp_automl.contracts and the small base modules), so a Bento runs the code
it was built with, and its pickled model finds its classes, wherever its Python packages are
installed: the rest of the project need not be. tests/unit/test_bento_code.py holds the list
to what the shipped code imports and scores a model with that copy alone.
"""

from __future__ import annotations

import importlib
import shutil
from importlib import metadata as importlib_metadata
from pathlib import Path

from kfp_automl.serving.files import SERVICE

__all__ = [
    "SERVICE",
    "bento_sources",
    "build_context",
    "runtime_requirements",
    "runtime_versions",
]

BENTO_PACKAGES = ("kfp_automl.contracts", "kfp_automl.runtime", "kfp_automl.serving")
BENTO_MODULES = ("kfp_automl", "kfp_automl.errors", "kfp_automl.files")


def bento_sources() -> dict[str, Path]:
    """The files a Bento ships: path inside the Bento -> file in this installation."""
    files: dict[str, Path] = {}
    for name in BENTO_MODULES:
        module = importlib.import_module(name)
        source = Path(module.__file__)
        rel = name.replace(".", "/") + ("/__init__.py" if source.name == "__init__.py" else ".py")
        files[rel] = source
    for name in BENTO_PACKAGES:
        package_dir = Path(importlib.import_module(name).__file__).parent
        for source in sorted(package_dir.glob("*.py")):
            files[f"{name.replace('.', '/')}/{source.name}"] = source
    return files


def build_context(directory: Path) -> list[str]:
    """Copy the Bento's code into `directory`; return the files (BentoML's `include`)."""
    sources = bento_sources()
    for rel, source in sources.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return sorted(sources)


# What the service imports; pinned to the versions that trained the model so it unpickles the same.
# Their versions are also recorded in the model's metadata, and the service checks those of
# kfp_automl/runtime/packages.py: MODEL_PACKAGES against the installed ones at start.
RUNTIME_PACKAGES = [
    "scikit-learn",
    "pandas",
    "numpy",
    "scipy",  # scikit-learn's estimators hold and call it
    "joblib",
    "pyarrow",
    "prometheus-client",
    "lightgbm",  # a model of the lightgbm family unpickles only with it
    "catboost",  # ... and one of the catboost family with it
    # the shared label store (serving/postgres_store.py, with AUTOML_LOG_STORE)
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
]


def runtime_versions() -> dict[str, str]:
    """The installed version of each of RUNTIME_PACKAGES (what the Bento pins and records)."""
    return {p: importlib_metadata.version(p) for p in RUNTIME_PACKAGES}


def runtime_requirements(versions: dict[str, str] | None = None) -> list[str]:
    """Exact pins of `versions` (default: runtime_versions())."""
    return [f"{p}=={v}" for p, v in (versions or runtime_versions()).items()]
