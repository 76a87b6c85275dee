"""The model registry: stages, promotion, rollback, and promotions that race."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from kfp_automl.errors import UserError
from kfp_automl.registry.registry import Registry


def _registry(tmp_path, versions=("v1", "v2", "v3")) -> Registry:
    reg = Registry(tmp_path / "reg")
    for v in versions:
        reg.register("m", v, {"metric": "roc_auc", "valid_score": 0.8})
    return reg


def test_new_versions_are_challengers_and_one_champion_at_a_time(tmp_path):
    reg = _registry(tmp_path)
    assert [v["stage"] for v in reg.versions("m")] == ["challenger"] * 3
    assert reg.champion("m") is None
    reg.promote("m", "v1")
    reg.promote("m", "v2", reason="better")
    stages = {v["version"]: v["stage"] for v in reg.versions("m")}
    assert stages == {"v1": "archived", "v2": "champion", "v3": "challenger"}
    assert reg.champion("m")["version"] == "v2"
    assert reg.events("m")[-1] == {
        **reg.events("m")[-1],
        "event": "promote",
        "from": "v1",
        "reason": "better",
    }


def test_rollback_returns_to_the_previous_champion(tmp_path):
    reg = _registry(tmp_path)
    reg.promote("m", "v1")
    reg.promote("m", "v2")
    reg.promote("m", "v3")
    assert reg.rollback("m")["version"] == "v2"
    assert reg.rollback("m")["version"] == "v1"
    with pytest.raises(UserError, match="first champion"):
        reg.rollback("m")


def test_errors_name_the_problem(tmp_path):
    reg = _registry(tmp_path)
    with pytest.raises(UserError, match="no champion"):
        reg.rollback("m")
    with pytest.raises(UserError, match="no version 'v9'"):
        reg.promote("m", "v9")


def _promote_many(root: str, versions: list[str]) -> None:
    reg = Registry(root)
    for v in versions:
        reg.promote("m", v)


def test_racing_promotions_leave_exactly_one_champion(tmp_path):
    versions = [f"v{i}" for i in range(20)]
    reg = _registry(tmp_path, versions)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_promote_many, args=(str(reg.root), versions[i::2] * 5))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = json.loads((reg.root / "m.json").read_text())  # never half-written
    champions = [v for v in reg.versions("m") if v["stage"] == "champion"]
    assert len(champions) == 1 and champions[0]["version"] == state["champion"]
    promotions = [e for e in reg.events("m") if e["event"] == "promote"]
    assert len(promotions) == 100  # no update lost to the race
    # each promotion names the champion it replaced: the chain is unbroken
    for before, after in zip(promotions, promotions[1:], strict=False):
        assert after["from"] == before["version"]
