"""The standing adversarial suite: hostile requests and artifacts against the real parts.

One small real Bento (the 0.1.0 fixture model packaged again by `kfp-automl repackage`,
which takes seconds) is built per session; each test module serves it with the settings it
probes, in a BentoML home of its own (servers sharing one share a Prometheus directory).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.support.servers import CLI, json_records, serve

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"


@pytest.fixture(scope="session")
def small_bento(tmp_path_factory) -> Path:
    """A .bento archive of this release's service around a small fitted model."""
    root = tmp_path_factory.mktemp("adversarial-bento")
    archive = root / "small.bento"
    done = subprocess.run(
        [
            *CLI,
            "repackage",
            "--model",
            str(LEGACY / "automl-legacy.bento"),
            "--output",
            str(archive),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENTOML_HOME": str(root / "home")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return archive


def good_records(n: int = 3) -> list[dict]:
    """`n` records the small Bento's model scores (n <= 50)."""
    rows = pd.read_parquet(LEGACY / "rows.parquet").head(n)
    rows["signup"] = rows["signup"].dt.strftime("%Y-%m-%d")
    return json_records(rows)


@contextlib.contextmanager
def served(
    archive: Path, home: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`kfp-automl serve` of `archive` in the BentoML home `home`; yields the base URL."""
    with serve(str(archive), *extra, env={"BENTOML_HOME": str(home), **(env or {})}) as base:
        yield base
