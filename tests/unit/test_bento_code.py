"""The code a Bento ships (components/package/bento.py: bento_sources) is all the service needs.

A Bento carries kfp_automl.serving, kfp_automl.runtime and kfp_automl.contracts, so it serves
with the code it was built with and its pickled model finds its classes wherever the Bento's
Python packages are installed, without the rest of the project.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from kfp_automl.components.package.bento import bento_sources

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"


def _imported(source: Path) -> set[str]:
    """The kfp_automl modules `source` imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("kfp_automl")
        ):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("kfp_automl")}
    return names


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_every_project_import_of_the_shipped_code_is_shipped_too():
    sources = bento_sources()
    shipped = {_module(rel) for rel in sources}
    assert "kfp_automl.serving.service" in shipped
    missing = {
        f"{rel} imports {name}"
        for rel, path in sources.items()
        for name in _imported(path)
        if name not in shipped
    }
    assert not missing, f"a Bento would not carry what these import: {sorted(missing)}"


SELF_CONTAINED = """
import json, sys
root = sys.argv[1]
sys.path.insert(0, root)
import pandas as pd
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.fast_path import serving_model
from kfp_automl.runtime.model_file import load_model
from kfp_automl.runtime.records import coerce_frame, predict_frame
from kfp_automl.serving import monitoring, prediction_log, quality  # noqa: F401
legacy = sys.argv[2]
schema = Schema.read(legacy + "/schema.json")
model = serving_model(load_model(legacy, open(legacy + "/sha256").read().strip()), schema)
rows = pd.read_parquet(legacy + "/rows.parquet")
answers = predict_frame(model, coerce_frame(rows, schema))
loaded = {n: getattr(m, "__file__", "") for n, m in sys.modules.items() if n.startswith("kfp_automl")}
heavy = sorted(n for n in ("kfp", "ray", "click", "kubernetes", "bentoml") if n in sys.modules)
print(json.dumps({"loaded": loaded, "heavy": heavy, "n": len(answers)}))
"""


def test_the_shipped_code_scores_a_model_without_the_installed_project(tmp_path):
    """The Bento's copy alone loads and scores a model: nothing of the installed package
    (its steps, pipelines, CLI) is imported, nor kfp, Ray or click."""
    for rel, source in bento_sources().items():
        target = tmp_path / "bento" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    done = subprocess.run(
        [sys.executable, "-c", SELF_CONTAINED, str(tmp_path / "bento"), str(LEGACY)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["n"] == 60
    outside = {n: f for n, f in report["loaded"].items() if not f.startswith(str(tmp_path))}
    assert not outside, f"imported from the installed project, not the Bento: {outside}"
    assert report["heavy"] == []
