"""The search's budget: it ends at the deadline once a trial has finished, and otherwise
waits a bounded grace for the first finished trial."""

from __future__ import annotations

from kfp_automl.components.tune.budget import BudgetStopper, grace_for


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_before_the_deadline_nothing_stops():
    clock = Clock()
    stopper = BudgetStopper(deadline=110.0, grace_s=30, clock=clock)
    stopper("t1", {"score": 0.8, "final": True})
    clock.now = 109.9
    assert stopper.stop_all() is False


def test_at_the_deadline_a_finished_trial_ends_the_search():
    clock = Clock()
    stopper = BudgetStopper(deadline=110.0, grace_s=30, clock=clock)
    assert stopper("t1", {"score": 0.8, "final": True}) is False  # never one trial alone
    clock.now = 110.0
    assert stopper.stop_all() is True


def test_without_a_finished_trial_the_search_waits_for_one(capsys):
    clock = Clock()
    stopper = BudgetStopper(deadline=110.0, grace_s=30, clock=clock)
    stopper("t1", {"score": 0.7, "step": 1})  # an intermediate result is not a finished trial
    clock.now = 111.0
    assert stopper.stop_all() is False
    assert stopper.stop_all() is False
    out = capsys.readouterr().out
    assert out.count("waiting up to 30s more for the first one") == 1  # said once
    clock.now = 120.0
    stopper("t1", {"score": 0.75, "step": 9, "final": True})
    assert stopper.stop_all() is True


def test_the_grace_is_bounded():
    clock = Clock()
    stopper = BudgetStopper(deadline=110.0, grace_s=30, clock=clock)
    clock.now = 139.9
    assert stopper.stop_all() is False
    clock.now = 140.0
    assert stopper.stop_all() is True


def test_grace_grows_with_the_budget_from_30s():
    assert grace_for(5) == 30
    assert grace_for(60) == 30
    assert grace_for(300) == 150
