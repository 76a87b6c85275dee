"""Shared fixtures. Every test session gets its own BentoML store (BENTOML_HOME)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Session fixtures that cost a pipeline run: the tests that use them share one worker of
# `pytest -n 2 --dist loadgroup`, so the run happens once.
_SHARED_RUNS = ("pipeline_run",)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """With --dist loadgroup (the slow tests in `make test`), each test module runs on one
    worker (its module fixtures, servers and clusters are made once); tests on a shared
    pipeline run go together."""
    if config.getoption("dist", None) != "loadgroup":
        return
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        shared = next((f for f in _SHARED_RUNS if f in item.fixturenames), None)
        if shared is None and item.module.__name__.startswith("tests.component."):
            # the searches count trials within a time budget: one Ray search at a time
            shared = "search"
        item.add_marker(pytest.mark.xdist_group(shared or item.module.__name__))


def pytest_configure(config):
    # Before anything imports bentoml: keep the user's ~/bentoml out of the tests.
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="kfp-automl-test-bentoml-")


@pytest.fixture(scope="session")
def churn_df():
    from kfp_automl.tables.io import DEFAULT_DATASET, read_table

    return read_table(DEFAULT_DATASET)


@pytest.fixture(scope="session")
def small_churn_csv(churn_df, tmp_path_factory) -> Path:
    """400 rows of the built-in churn table (stratified), with its missing values kept."""
    from sklearn.model_selection import train_test_split

    small, _ = train_test_split(
        churn_df, train_size=400, stratify=churn_df["churn"], random_state=0
    )
    missing = churn_df[churn_df["total_charges"].isna()].head(3)
    import pandas as pd

    small = pd.concat([small, missing], ignore_index=True)
    path = tmp_path_factory.mktemp("data") / "small_churn.csv"
    small.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this test session (tests/support/postgres.py); each test that
    uses it takes its own database (`fresh_database`)."""
    from tests.support.postgres import remove, start_postgres

    server = start_postgres()
    yield server
    remove(server)


@pytest.fixture
def store_url(postgres, request) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres.fresh_database()
