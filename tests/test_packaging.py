"""`pip install .` puts one namespace, kfp_automl, in site-packages: the wheel holds it and only it.

The wheel is built from a copy of what the Dockerfiles copy (pyproject.toml, README.md,
kfp_automl/, components/, pipelines/), as an image build would build it.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "kfp_automl", "components", "pipelines")

pytestmark = pytest.mark.slow  # builds a wheel (pip fetches setuptools into its build env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [built] = out.glob("kfp_automl-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_installs_one_namespace_and_nothing_else(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"kfp_automl"}


def test_every_package_in_the_repository_is_in_the_wheel(wheel):
    """A new sub-package must be listed in pyproject.toml's packages, or it would not ship."""
    names = set(wheel.namelist())
    folders = {"kfp_automl": ROOT / "kfp_automl"}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in config["package-dir"].items():
        folders[package] = ROOT / folder
    for package, folder in folders.items():
        for source in folder.rglob("*.py"):
            if "__pycache__" in source.parts:
                continue
            if package == "kfp_automl" and source.is_relative_to(ROOT / "kfp_automl"):
                rel = source.relative_to(ROOT)
            else:
                rel = Path(*package.split(".")) / source.relative_to(folder)
            assert rel.as_posix() in names, f"{source.relative_to(ROOT)} is not in the wheel"


def test_the_wheel_carries_the_built_in_table_the_compiled_pipeline_and_the_portfolio(wheel):
    names = set(wheel.namelist())
    assert "kfp_automl/tables/data/wa_churn.csv.gz" in names
    assert "kfp_automl/pipelines/compiled/training.yaml" in names
    assert "kfp_automl/components/tune/portfolio.json" in names
    assert not any(n.startswith(("tests/", "docs/")) or "/tests/" in n for n in names)


def test_the_console_script_is_the_namespaces(wheel):
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"kfp-automl": "kfp_automl.cli.main:main"}
