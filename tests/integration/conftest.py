"""Shared by the integration tests: one pipeline run and one served Bento per session."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.servers import CLI, serve


@pytest.fixture(scope="session")
def run_api():
    """A stand-in Kubernetes API server that `pipeline_run`'s kubeconfig points at: a run
    without `--deploy-namespace` must send it nothing."""
    from tests.support.kube_apiserver import StandInApiServer

    with StandInApiServer() as server:
        yield server


@pytest.fixture(scope="session")
def pipeline_run(small_churn_csv, tmp_path_factory, run_api):
    """`kfp-automl run` on 403 churn rows: (output dir, summary, stdout)."""
    from tests.support.kube_apiserver import write_kubeconfig

    out = tmp_path_factory.mktemp("run")
    kubeconfig = write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", run_api.host)
    args = ["--data", str(small_churn_csv), "--target", "churn", "--time-budget", "40"]
    proc = subprocess.run(
        [*CLI, "run", *args, "--max-trials", "8", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


@pytest.fixture(scope="session")
def server(pipeline_run):
    """`kfp-automl serve` (a real `bentoml serve`) on a free 127.0.0.1 port: its base URL."""
    with serve(pipeline_run[1]["bento_tag"]) as base:
        yield base
