"""Fixtures for the deploy tests: the contract-following manifests and the stand-in API server."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "serving.yaml"


@pytest.fixture
def manifests_text() -> str:
    return FIXTURE.read_text()


@pytest.fixture
def api():
    """A running stand-in API server (threaded, 127.0.0.1, a free port)."""
    from tests.support.kube_apiserver import StandInApiServer

    with StandInApiServer() as server:
        yield server


@pytest.fixture
def cluster(api):
    """The deploy step's Cluster on the real kubernetes client, pointed at the stand-in."""
    from kubernetes import client

    from kfp_automl.components.deploy.kube import Cluster

    c = Cluster(client.ApiClient(client.Configuration(host=api.host)))
    yield c
    c.close()
