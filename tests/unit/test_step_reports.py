"""kfp_automl/progress.py reported(): a failing step says why in a file, not only in its log."""

from __future__ import annotations

import pytest

from kfp_automl.errors import UserError
from kfp_automl.progress import STEP_ERRORS_ENV, read_reports, reported


def test_a_user_mistake_is_reported_as_one(tmp_path, monkeypatch):
    monkeypatch.setenv(STEP_ERRORS_ENV, str(tmp_path))
    with pytest.raises(UserError), reported("prepare"):
        raise UserError("no usable feature columns besides target 'y'\n(every one leaks)")
    [report] = read_reports(tmp_path)
    assert report == {
        "step": "prepare",
        "user_error": True,
        "type": "UserError",
        "message": "no usable feature columns besides target 'y' (every one leaks)",
    }


def test_any_other_failure_is_reported_as_not_the_users(tmp_path, monkeypatch):
    monkeypatch.setenv(STEP_ERRORS_ENV, str(tmp_path))
    with pytest.raises(RuntimeError), reported("tune"):
        raise RuntimeError("the Ray cluster went away")
    [report] = read_reports(tmp_path)
    assert report["user_error"] is False and report["type"] == "RuntimeError"
    assert list(tmp_path.iterdir()) == [tmp_path / "tune.json"]  # no temporary file left


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    """On a cluster the step's log is the record: nothing is written anywhere."""
    monkeypatch.delenv(STEP_ERRORS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), reported("gate"):
        raise ValueError("x")
    assert list(tmp_path.iterdir()) == []


def test_a_step_that_succeeds_reports_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(STEP_ERRORS_ENV, str(tmp_path))
    with reported("evaluate"):
        pass
    assert read_reports(tmp_path) == []
