"""The package versions a model was packaged with, against the versions installed where it runs.

The package step records the version of every package it pins in the Bento
(components/package/bento.py: RUNTIME_PACKAGES) in the BentoML model's metadata, under
`runtime_packages`. The service compares the ones that decide how the pickled model loads
and what it predicts (MODEL_PACKAGES) with the installed versions before it unpickles
anything (kfp_automl/serving/service.py); a difference keeps the server unready, with a
message naming each package, instead of a model that fails to load or answers differently.

A mismatch is any difference between the recorded and the installed version string (both
as the package's metadata reports them), or a recorded package that is not installed.
Exact, not the same major.minor: scikit-learn supports a pickle only with the version that
wrote it (it warns on any other, patch releases included), patch releases of scikit-learn,
LightGBM, CatBoost and SciPy fix numerical bugs and so change predictions, and the Bento pins exact
versions, so the serving image of the release that trained the model always matches.
A model whose metadata records no versions (packaged before they were recorded) is not
checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any

RECORD_KEY = "runtime_packages"  # in the BentoML model's metadata: {package: version}

# What unpickling the model and its predictions depend on (scipy: scikit-learn's estimators
# and transformers hold and call it).
MODEL_PACKAGES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib", "lightgbm", "catboost")


@dataclass(frozen=True)
class Mismatch:
    package: str
    recorded: str
    installed: str | None  # None: not installed

    def describe(self) -> str:
        here = self.installed if self.installed is not None else "not installed"
        return f"{self.package} recorded {self.recorded}, installed {here}"


def installed_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each package (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            found[package] = None
    return found


def recorded_versions(meta: Mapping[str, Any]) -> dict[str, str]:
    """The versions a model's metadata records ({} for a model packaged before they were)."""
    record = meta.get(RECORD_KEY)
    if not isinstance(record, Mapping):
        return {}
    return {str(k): str(v) for k, v in record.items()}


def mismatches(recorded: Mapping[str, str], installed: Mapping[str, str | None]) -> list[Mismatch]:
    """The MODEL_PACKAGES whose recorded version is not the installed one, in that order.

    A package the model does not record is not compared (nothing to compare with).
    """
    out = []
    for package in MODEL_PACKAGES:
        if package not in recorded:
            continue
        want, have = recorded[package].strip(), installed.get(package)
        if have is None or have.strip() != want:
            out.append(Mismatch(package, want, have))
    return out


def check_model_packages(meta: Mapping[str, Any]) -> list[Mismatch]:
    """The mismatches between what a model's metadata records and this environment."""
    recorded = recorded_versions(meta)
    return mismatches(recorded, installed_versions(p for p in MODEL_PACKAGES if p in recorded))


def mismatch_message(model: str, found: list[Mismatch]) -> str:
    """One line saying what differs and the way out."""
    listed = "; ".join(m.describe() for m in found)
    return (
        f"model {model} was packaged with other package versions than this server has "
        f"({listed}); it is not loaded: serve it with the serving image of the kfp-automl "
        "release that trained it, or retrain it with this one"
    )
