"""The prepare component's python_func with artifacts in a tmp dir (no Ray, no pipeline run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, Dataset, Markdown

from kfp_automl.components.prepare.component import prepare_data
from kfp_automl.errors import UserError
from tests.support.bad_tables import good_frame

OUTPUTS = {
    "train": Dataset,
    "valid": Dataset,
    "test": Dataset,
    "schema": Artifact,
    "profile": Artifact,
    "data_report": HTML,
    "data_summary": Markdown,
}


def _arts(tmp: Path) -> dict:
    return {n: cls(name=n, uri=str(tmp / "out" / n), metadata={}) for n, cls in OUTPUTS.items()}


def test_prepare_component_writes_every_output_with_role_parameters(tmp_path):
    data = tmp_path / "t.csv"
    good_frame(300).assign(
        when=lambda d: [f"2024-01-{1 + i % 28:02d}" for i in range(len(d))]
    ).to_csv(data, index=False)
    arts = _arts(tmp_path)
    prepare_data.python_func(
        data=str(data),
        target="label",
        **arts,
        drop_columns='["spend"]',
        categorical_columns="age",
        time_column="when",
    )
    for name, art in arts.items():
        assert Path(art.path).exists(), name
    schema = json.loads(Path(arts["schema"].path).read_text())
    roles = {f["name"]: f["role"] for f in schema["features"]}
    assert roles == {"age": "categorical", "plan": "categorical", "when": "datetime"}
    assert schema["split"]["strategy"] == "time"
    assert arts["train"].metadata["rows"] == schema["rows"]["train"]
    assert arts["schema"].metadata["target"] == "label"
    assert "<h1>Data report: label" in Path(arts["data_report"].path).read_text()
    assert Path(arts["data_summary"].path).read_text().startswith("# Data: label")


def test_prepare_component_failure_writes_nothing(tmp_path):
    data = tmp_path / "t.csv"
    good_frame().to_csv(data, index=False)
    arts = _arts(tmp_path)
    with pytest.raises(UserError, match="--text names column 'nope'"):
        prepare_data.python_func(data=str(data), target="label", **arts, text_columns="nope")
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*"))
