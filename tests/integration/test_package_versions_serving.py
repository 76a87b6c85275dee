"""A served Bento whose recorded package versions are not the installed ones stays unready
(/readyz 503 naming the package and both versions), and never unpickles its model.

The Bento is packaged for real by `kfp-automl repackage` in an environment whose package
metadata says scikit-learn is an older release (a dist-info directory ahead of the installed one
on PYTHONPATH), then served by a real `kfp-automl serve` in the test's own environment.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from importlib import metadata
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from kfp_automl.components.package.bento import runtime_versions
from tests.support.servers import CLI, free_port, json_records, serve, start, stop, wait_ready

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"
OLD_SKLEARN = "0.24.2"

pytestmark = pytest.mark.slow


def _repackage(home: Path, output: Path, pythonpath: str = "") -> None:
    env = {**os.environ, "BENTOML_HOME": str(home)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [
            *CLI,
            "repackage",
            "--model",
            str(LEGACY / "automl-legacy.bento"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _recorded(archive: Path) -> dict[str, str]:
    """The versions the model's metadata records, read from the .bento archive."""
    with tarfile.open(archive) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("model.yaml")]
        info = yaml.safe_load(tar.extractfile(member))
    return info["metadata"]["runtime_packages"]


@pytest.fixture(scope="module")
def bentos(tmp_path_factory) -> dict[str, Path]:
    """`matching` packaged here; `older` packaged where scikit-learn says it is OLD_SKLEARN."""
    assert metadata.version("scikit-learn") != OLD_SKLEARN
    root = tmp_path_factory.mktemp("versions")
    elsewhere = root / "site"
    dist = elsewhere / f"scikit_learn-{OLD_SKLEARN}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: scikit-learn\nVersion: {OLD_SKLEARN}\n"
    )
    out = {"matching": root / "matching.bento", "older": root / "older.bento"}
    _repackage(root / "home-matching", out["matching"])
    _repackage(root / "home-older", out["older"], pythonpath=str(elsewhere))
    assert _recorded(out["matching"]) == runtime_versions()  # every pinned package
    assert _recorded(out["older"])["scikit-learn"] == OLD_SKLEARN
    return out


def _rows() -> list[dict]:
    rows = pd.read_parquet(LEGACY / "rows.parquet").head(3)
    rows["signup"] = rows["signup"].dt.strftime("%Y-%m-%d")
    return json_records(rows)


def test_a_bento_of_other_package_versions_is_unready_and_says_why(bentos, tmp_path):
    installed = metadata.version("scikit-learn")
    port = free_port()
    proc = start(
        [*CLI, "serve", "--model", str(bentos["older"]), "--port", str(port)],
        env={"BENTOML_HOME": str(tmp_path / "bentoml")},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/livez", proc)  # alive: a restart would not change the versions
        for _ in range(3):  # every probe gets the same answer
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 503
        error = ready.json()["error"]
        assert error["reason"] == "package_mismatch"
        assert f"scikit-learn recorded {OLD_SKLEARN}, installed {installed}" in error["problem"]
        assert "automl-legacy:" in error["problem"]
        answer = httpx.post(f"{base}/predict", json={"records": _rows()}, timeout=30)
        assert answer.status_code == 503 and answer.json()["error"] == error
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        stop(proc)
    output = proc.stdout.read() if proc.stdout else ""
    mismatch = [
        line for line in metrics.splitlines() if line.startswith("automl_package_mismatch{")
    ]
    assert len(mismatch) == 1 and mismatch[0].endswith(" 1.0")
    for label in (
        'package="scikit-learn"',
        f'recorded="{OLD_SKLEARN}"',
        f'installed="{installed}"',
    ):
        assert label in mismatch[0]
    # the model was never loaded: no model series, and the reason logged once, not per probe
    assert "automl_model_info{" not in metrics
    assert output.count("not ready: model automl-legacy:") == 1, output[-3000:]


def test_a_bento_of_the_installed_versions_serves_as_before(bentos, tmp_path):
    with serve(str(bentos["matching"]), env={"BENTOML_HOME": str(tmp_path / "bentoml")}) as base:
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        answer = httpx.post(f"{base}/predict", json={"records": _rows()}, timeout=30)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert answer.status_code == 200 and len(answer.json()) == 3
    assert "automl_package_mismatch" not in metrics and "automl_model_info{" in metrics
