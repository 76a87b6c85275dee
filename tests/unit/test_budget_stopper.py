"""The run's budget: the search gets what the steps around it leave, ends early by what the
refit will cost, ends at the deadline once a trial has finished, and otherwise waits a
bounded grace for the first finished trial."""

from __future__ import annotations

from kfp_automl.components.tune.budget import (
    MIN_SEARCH_S,
    SEARCH_TAIL_S,
    BudgetStopper,
    RefitReserve,
    grace_for,
    split_budget,
)


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


# ---- the run's budget: what the search gets -------------------------------------------------


def test_the_search_gets_what_the_steps_around_it_leave():
    budget = split_budget(120, spent_s=5, after_s=20)
    assert budget.search_s == 95 and budget.over_s == 0
    assert budget.describe() == (
        "run budget 120s: 5s spent before the search, about 20s kept for the steps after it, "
        "95s for the search and the refit"
    )


def test_a_small_budget_keeps_the_search_floor_and_says_the_run_will_pass_it():
    budget = split_budget(20, spent_s=5, after_s=20)
    assert budget.search_s == MIN_SEARCH_S
    assert budget.over_s == 5 + MIN_SEARCH_S + 20 - 20
    assert "the run will take about 15s more than its budget" in budget.describe()
    # a quarter of a large budget is the floor when the steps around the search are slow
    assert split_budget(400, spent_s=300, after_s=100).search_s == 100


def test_the_refit_reserve_is_the_best_trials_refit_estimate():
    reserve = RefitReserve(greater_is_better=True, rows_ratio=0.25, members=1)
    assert reserve() == SEARCH_TAIL_S  # nothing finished: only the search's tail
    reserve.add(0.80, fit_time_s=8.0)  # 5 folds of 80 %: a refit costs a quarter of the trial
    reserve.add(0.70, fit_time_s=40.0)  # worse: not the winner, its cost does not count
    assert reserve() == SEARCH_TAIL_S + 2.0
    reserve.add(0.90, fit_time_s=20.0)
    assert reserve() == SEARCH_TAIL_S + 5.0
    reserve.add(float("nan"), fit_time_s=1.0)  # a failed score is ignored
    assert reserve() == SEARCH_TAIL_S + 5.0


def test_an_ensembles_reserve_sums_its_likely_members_and_is_capped():
    loss = RefitReserve(greater_is_better=False, rows_ratio=1.0, members=2, cap_s=10.0)
    loss.add(3.0, fit_time_s=1.0)
    loss.add(2.0, fit_time_s=2.0)  # lower rmse: better
    loss.add(9.0, fit_time_s=50.0)  # the worst of three: not a likely member
    assert loss() == SEARCH_TAIL_S + 3.0
    loss.add(1.0, fit_time_s=30.0)
    assert loss() == 10.0  # capped: the reserve never takes the whole search


def test_the_search_ends_early_by_the_reserve_once_a_trial_finished():
    clock = Clock()
    reserve = RefitReserve(greater_is_better=True, rows_ratio=0.5)
    stopper = BudgetStopper(deadline=110.0, grace_s=30, clock=clock, reserve=reserve)
    clock.now = 105.0
    assert stopper.stop_all() is False  # nothing finished: no reserve, the deadline holds
    stopper("t1", {"score": 0.8, "final": True, "fit_time_s": 6.0})  # refit ~3 s, +tail
    assert stopper.reserved_s() == SEARCH_TAIL_S + 3.0
    clock.now = 110.0 - SEARCH_TAIL_S - 3.0 - 0.1
    assert stopper.stop_all() is False
    clock.now = 110.0 - SEARCH_TAIL_S - 3.0
    assert stopper.stop_all() is True
