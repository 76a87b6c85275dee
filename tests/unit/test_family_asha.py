"""components/tune/scheduler.py: ASHA that compares a trial only with its own family."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from kfp_automl.components.tune.scheduler import FamilyASHA
from kfp_automl.components.tune.trial import MAX_STEP, STEPS

ARGS = dict(time_attr="step", metric="score", mode="min", max_t=MAX_STEP,
            grace_period=STEPS[0], reduction_factor=3)  # fmt: skip


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def _first_step(scheduler, trials_and_scores):
    """Add each trial and report its first-step score (an rmse, lower is better)."""
    actions = {}
    for trial, score in trials_and_scores:
        scheduler.on_trial_add(None, trial)
        actions[trial.trial_id] = scheduler.on_trial_result(
            None, trial, {"step": STEPS[0], "score": score}
        )
    return actions


def _forests_then_boosting():
    forests = [(FakeTrial(f"rf{i}", {"family": "random_forest"}), 5.0 + i / 10) for i in range(6)]
    # boosting at a ninth of its rounds trails every forest, and the second trails the first
    boosting = [(FakeTrial("gb0", {"family": "hist_gb"}), 8.0),
                (FakeTrial("gb1", {"family": "hist_gb"}), 9.0)]  # fmt: skip
    return forests + boosting


def test_one_shared_asha_stops_every_boosting_trial():
    actions = _first_step(ASHAScheduler(**ARGS), _forests_then_boosting())
    assert actions["gb0"] == actions["gb1"] == TrialScheduler.STOP


def test_family_asha_compares_within_the_family():
    scheduler = FamilyASHA(**ARGS)
    actions = _first_step(scheduler, _forests_then_boosting())
    assert actions["gb0"] == TrialScheduler.CONTINUE  # the first of its family goes on
    assert actions["gb1"] == TrialScheduler.STOP  # trails its own family's first
    assert actions["rf0"] == TrialScheduler.CONTINUE
    assert actions["rf5"] == TrialScheduler.STOP  # the forests still stop each other
    assert scheduler.stopped()["hist_gb"] == 1
    assert scheduler.stopped()["random_forest"] >= 1
    # the last step ends a trial, as ASHA does
    trial = FakeTrial("gb0")
    assert scheduler.on_trial_result(None, trial, {"step": MAX_STEP, "score": 3.0}) == "STOP"
    scheduler.on_trial_complete(None, trial, {"step": MAX_STEP, "score": 3.0})


def test_family_asha_survives_save_and_restore(tmp_path):
    scheduler = FamilyASHA(**ARGS)
    _first_step(scheduler, _forests_then_boosting()[:3] + _forests_then_boosting()[6:7])
    scheduler.save(str(tmp_path / "state"))
    back = FamilyASHA(**ARGS)
    back.restore(str(tmp_path / "state"))
    worse = FakeTrial("gb9", {"family": "hist_gb"})
    back.on_trial_add(None, worse)
    assert back.on_trial_result(None, worse, {"step": STEPS[0], "score": 99.0}) == "STOP"


@pytest.mark.parametrize(("metric", "mode", "ok"), [(None, None, True), ("score", None, False)])
def test_family_asha_search_properties(metric, mode, ok):
    assert FamilyASHA(**ARGS).set_search_properties(metric, mode) is ok
    bare = FamilyASHA(time_attr="step", max_t=MAX_STEP)
    assert bare.set_search_properties("score", "max") is True
    bare.on_trial_add(None, FakeTrial("t", {"family": "linear"}))  # no error: metric is known
