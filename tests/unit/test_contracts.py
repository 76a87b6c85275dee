"""kfp_automl/contracts: every file the steps exchange reads back as written, reads the versions
earlier releases wrote, and refuses a malformed or newer file with a message naming it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kfp_automl.contracts.decision import GateDecision
from kfp_automl.contracts.errors import ContractError
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.profile import LEGACY_PREDICTION, Bins, Profile
from kfp_automl.contracts.release import DeployOutcome, Release
from kfp_automl.contracts.schema import SCHEMA_VERSION, Schema
from tests.support.frames import schema_dict

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"


def _kfp_metadata(d: dict) -> dict:
    """What KFP gives back for artifact metadata: a protobuf Struct, every number a float."""
    return json.loads(
        json.dumps(d), parse_int=float, parse_constant=float
    )  # ints come back as floats


# ---- schema ----------------------------------------------------------------------------------


def test_a_version_1_schema_reads_with_roles_from_kinds():
    s = Schema.from_dict(schema_dict("classification"))
    assert [(f.name, f.kind, f.role) for f in s.features] == [
        ("x1", "numeric", "numeric"),
        ("x2", "numeric", "numeric"),
        ("colour", "categorical", "categorical"),
    ]
    assert s.to_dict()["version"] == SCHEMA_VERSION  # written as today's version


def test_the_0_1_0_schema_file_round_trips_byte_for_byte():
    raw = json.loads((LEGACY / "schema.json").read_text())
    assert Schema.from_dict(raw).to_dict() == raw


def test_schema_write_and_read(tmp_path):
    s = Schema.read(LEGACY / "schema.json")
    s.write(tmp_path / "schema.json")
    assert Schema.read(tmp_path / "schema.json") == s
    assert s.classes == ("no", "yes") and s.n_classes == 2
    assert s.feature("city").role == "categorical" and s.by_role("text")[0].name == "note"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"version": 3}, "schema version 3"),
        ({"task": "ranking"}, "'task' must be one of"),
        ({"target": ""}, "'target' must be a string"),
        ({"features": []}, "'features' must be a non-empty list"),
        ({"features": [{"name": "a", "kind": "text"}]}, "feature 'a': 'kind' must be one of"),
        ({"features": [{"name": "a", "kind": "numeric", "role": "image"}]}, "'role' must be"),
        ({"features": [{"kind": "numeric"}]}, "'name' must be a non-empty string"),
        (
            {"features": [{"name": "a", "kind": "numeric"}, {"name": "a", "kind": "numeric"}]},
            "feature 'a' appears twice",
        ),
    ],
)
def test_a_malformed_schema_is_refused_naming_the_field(tmp_path, change, words):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({**schema_dict("regression"), **change}))
    with pytest.raises(ContractError, match=words) as err:
        Schema.read(path)
    assert str(path) in str(err.value)


def test_an_unreadable_schema_file_is_a_contract_error(tmp_path):
    (tmp_path / "schema.json").write_text("{not json")
    with pytest.raises(ContractError, match="cannot read the schema"):
        Schema.read(tmp_path / "schema.json")


# ---- profile ---------------------------------------------------------------------------------


def _numeric(**extra) -> dict:
    return {
        "kind": "numeric",
        "edges": [1.0, 2.0],
        "bins": ["b0", "b1", "b2", "missing"],
        "min": 0.0,
        "max": 3.0,
        "shares": [0.25, 0.25, 0.5, 0.0],
        "thresholds": {"psi": 0.1, "js": 0.02},
        **extra,
    }


def test_a_version_1_profile_hands_its_prediction_bins_over():
    categorical = {
        "kind": "categorical",
        "categories": ["No", "Yes"],
        "bins": ["c0", "c1", "other", "missing"],
        "shares": [0.7, 0.3, 0.0, 0.0],
    }
    raw = {"version": 1, "features": {"tenure": _numeric(), LEGACY_PREDICTION: categorical}}
    profile = Profile.from_dict(raw)
    assert set(profile.features) == {"tenure"}
    assert profile.legacy_prediction is not None
    assert profile.legacy_prediction.categories == ("No", "Yes")
    assert LEGACY_PREDICTION not in profile.to_dict()["features"]


def test_bins_round_trip_and_know_their_categories_as_a_set(tmp_path):
    b = Bins.from_dict(
        {
            "kind": "categorical",
            "categories": ["a", "b"],
            "bins": ["c0", "c1", "other", "missing"],
            "known": ["a", "b", "c", "d"],
            "counts": [3, 2, 1, 0],
            "shares": [0.5, 0.333, 0.167, 0.0],
        }
    )
    assert b.index == {"a": 0, "b": 1} and b.known == frozenset("abcd")
    b.write(tmp_path / "b.json")
    assert Bins.read(tmp_path / "b.json") == b


@pytest.mark.parametrize(
    "spec, words",
    [
        (_numeric(edges=[1.0]), "1 edges need 3 bins"),
        (_numeric(shares=[1.0]), "one value per bin"),
        ({"kind": "ordinal", "bins": ["a", "b"]}, "unknown kind"),
    ],
)
def test_malformed_bins_are_refused(spec, words):
    with pytest.raises(ContractError, match=words):
        Profile.from_dict({"version": 2, "features": {"f": spec}})


# ---- model info ------------------------------------------------------------------------------


def test_model_info_survives_kfp_metadata_with_integers_intact():
    info = ModelInfo(
        sha256="a" * 64,
        family="ensemble",
        params=[{"family": "random_forest", "params": {"n_estimators": 300}, "weight": 3}],
        metric="roc_auc",
        greater_is_better=True,
        valid_score=0.84,
        n_trials=74,
        search_s=61.5,
        refit_s=3.25,
    )
    back = ModelInfo.from_metadata(_kfp_metadata(info.to_metadata()))
    assert back == info
    assert isinstance(back.n_trials, int) and back.params[0]["params"]["n_estimators"] == 300
    assert type(back.params[0]["params"]["n_estimators"]) is int  # the JSON string kept it


def test_model_info_keeps_a_tuned_decision_threshold_and_its_class():
    info = ModelInfo(
        sha256="b" * 64,
        family="linear",
        params={"C": 1.0},
        metric="f1",
        greater_is_better=True,
        valid_score=0.61,
        decision_threshold=0.297,
        threshold_class="1",  # a numeric class travels as text
        threshold_score=0.64,
    )
    back = ModelInfo.from_metadata(_kfp_metadata(info.to_metadata()))
    assert back == info
    plain = ModelInfo.from_metadata(
        _kfp_metadata({**info.to_metadata(), "decision_threshold": None})
    )
    assert plain.decision_threshold is None
    no_threshold = replace(
        info, decision_threshold=None, threshold_class=None, threshold_score=None
    )
    assert "decision_threshold" not in no_threshold.to_metadata()  # BentoML refuses None


def test_model_info_refuses_what_tune_did_not_write():
    with pytest.raises(ContractError, match="'sha256' is missing"):
        ModelInfo.from_metadata({"family": "linear", "metric": "rmse"})
    with pytest.raises(ContractError, match="whole number"):
        ModelInfo.from_metadata(
            {"sha256": "x", "family": "linear", "metric": "rmse", "n_trials": 2.5}
        )


# ---- gate decision and release ---------------------------------------------------------------


def test_gate_decision_round_trip(tmp_path):
    d = GateDecision(
        deploy=False,
        reason="not better",
        metric="roc_auc",
        challenger_score=0.8,
        champion_version="v1",
        champion_score=0.81,
        improvement=-0.01,
        improvement_ci=(-0.03, 0.01),
        p_value=0.9,
        problems=("column 'x' is gone",),
    )
    d.write(tmp_path / "d.json")
    assert GateDecision.read(tmp_path / "d.json") == d
    assert d.metadata() == {"deploy": False, "reason": "not better"}
    (tmp_path / "bad.json").write_text('{"deploy": "yes"}')
    with pytest.raises(ContractError, match="'deploy' must be true or false"):
        GateDecision.read(tmp_path / "bad.json")


def test_release_annotation_round_trip_and_refusal():
    objects = [{"kind": "Deployment", "metadata": {"name": "automl-serving"}, "spec": {}}]
    r = Release("v2", "s3://b/a.bento", "prod", "automl-serving", objects)
    assert Release.decode(r.encode(), "prod") == r
    assert r.deployment is objects[0]
    with pytest.raises(ContractError, match="not a kfp-automl.io/release record"):
        Release.decode("bm90IGd6aXA=", "prod")


def test_a_release_carries_what_it_rolls_back_to_one_level_deep():
    objects = [{"kind": "Deployment", "metadata": {"name": "automl-serving"}, "spec": {}}]
    v1 = Release("v1", "s3://b/1.bento", "prod", "automl-serving", objects)
    v2 = Release("v2", "s3://b/2.bento", "prod", "automl-serving", objects, previous=v1)
    back = Release.decode(v2.encode(), "prod")
    assert back == v2 and back.previous == v1
    v3 = Release("v3", "s3://b/3.bento", "prod", "automl-serving", objects, previous=back)
    # the record keeps one level: v3's previous is v2 without v2's own previous
    assert Release.decode(v3.encode(), "prod").previous == Release(
        "v2", "s3://b/2.bento", "prod", "automl-serving", objects
    )


def test_deploy_outcome_round_trip(tmp_path):
    done = DeployOutcome(True, version="v2", namespace="prod", name="s", applied=("Deployment/s",))
    done.write(tmp_path / "r.json")
    assert DeployOutcome.read(tmp_path / "r.json") == done
    skipped = DeployOutcome(False, reason="gate said no")
    assert json.loads(json.dumps(skipped.to_dict())) == {
        "format": 1,
        "deployed": False,
        "reason": "gate said no",
    }
