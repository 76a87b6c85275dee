"""Fixtures for the unit tests (fast, pure: no Ray, no servers, no kfp.local)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from tests.support.frames import schema_for, synthetic_frame


@pytest.fixture
def clf_frame() -> pd.DataFrame:
    return synthetic_frame(240, "classification")


@pytest.fixture
def clf_schema() -> dict[str, Any]:
    return schema_for("classification")


@pytest.fixture
def reg_frame() -> pd.DataFrame:
    return synthetic_frame(240, "regression")


@pytest.fixture
def reg_schema() -> dict[str, Any]:
    return schema_for("regression")
