"""Copy the Python sources into DEST laid out as `pip install .` lays them out.

pyproject.toml maps components/ and pipelines/ into the kfp_automl namespace
([tool.setuptools.package-dir]). Tools that walk a package's directory (import-linter's
grimp, mypy's module discovery) see only kfp_automl/ in the repository; this builds the
installed layout for them: `python -m tests.support.installed_tree DEST`.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def package_dirs() -> dict[str, Path]:
    """Package name -> its folder in the repository, from pyproject's package-dir mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in config["package-dir"].items()}


def build(dest: Path) -> Path:
    """Lay the packages out under `dest` (replaced); return `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    for name, folder in sorted(package_dirs().items()):  # parents before children
        target = dest / name.replace(".", "/")
        shutil.copytree(
            folder,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "compiled", "data"),
        )
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.installed_tree DEST")
    print(build(Path(sys.argv[1])))
