"""The run's wall-clock budget: what the search gets, and a model at the end of it.

`--time-budget` is the whole run's: the steps before the search (prepare) have spent
part of it, the steps after it (the refit, evaluate, package, gate, promote) need part
of it, and the search gets the rest (`split_budget`), at least `MIN_SEARCH_S`. Inside
the search, `RefitReserve` estimates from the finished trials' fit times what refitting
the winner on train+valid will cost, and the search ends that much earlier.

Ray Tune's own `time_budget_s` ends the search when the time is up, finished
trials or not; on a busy machine, or with a budget close to Ray's start-up
time, that leaves nothing to refit and the run fails. `BudgetStopper` ends the
search at the deadline once some trial has finished its full budget, and
otherwise waits for the first one to finish for at most `grace_s` longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.tune.stopper import Stopper

from kfp_automl.progress import say

# What the steps after the search cost besides the refit, measured on this 2-core machine
# on tables up to 10,000 rows: evaluate (its start, the holdout's predictions, the
# diagnostics, the learning curve's allowance), package (the Bento and its archive), gate,
# deploy and promote, each a process that imports its libraries. On a cluster each is also a
# pod to schedule, which no step can see or budget.
AFTER_SEARCH_S = 28.0
MIN_SEARCH_S = 10.0  # the search never gets less, whatever the budget leaves
MIN_SEARCH_SHARE = 0.25  # ... nor less than this share of the budget
REFIT_SHARE = 0.5  # the refit reserve takes at most this share of the search's time
ENSEMBLE_MEMBERS = 3  # distinct members an ensemble's refit is estimated for
SEARCH_TAIL_S = 2.0  # after the stop: the trials' ends, Ray's shutdown, the ensemble's choice


@dataclass(frozen=True)
class RunBudget:
    run_s: float  # the whole run's budget (--time-budget)
    spent_s: float  # before the search: prepare
    after_s: float  # reserved for the steps after the search, besides the refit
    search_s: float  # what the search gets (Ray's start included); the refit comes out of it

    @property
    def over_s(self) -> float:
        """How far the run is expected to go past its budget (the search's floor)."""
        return max(0.0, self.spent_s + self.search_s + self.after_s - self.run_s)

    def describe(self) -> str:
        text = (
            f"run budget {self.run_s:.0f}s: {self.spent_s:.0f}s spent before the search, "
            f"about {self.after_s:.0f}s kept for the steps after it, {self.search_s:.0f}s "
            "for the search and the refit"
        )
        if self.over_s:
            text += (
                f"; the search's least is {self.search_s:.0f}s, so the run will take about "
                f"{self.over_s:.0f}s more than its budget"
            )
        return text


def split_budget(run_s: float, spent_s: float = 0.0, after_s: float = AFTER_SEARCH_S) -> RunBudget:
    """The search's share of a run budget of `run_s`, `spent_s` of which is already spent."""
    spent_s = max(0.0, spent_s)
    floor = max(MIN_SEARCH_S, MIN_SEARCH_SHARE * run_s)
    search_s = max(floor, run_s - spent_s - after_s)
    return RunBudget(run_s=run_s, spent_s=spent_s, after_s=after_s, search_s=search_s)


class RefitReserve:
    """What refitting the search's winner should cost, from the finished trials.

    A trial's `fit_time_s` covers every split it fitted (and scored); refitting on
    train+valid costs about that times `rows_ratio` (refit rows / the rows the trial's
    splits fitted together). The estimate is the best trial's, or with an ensemble the sum
    over the best `members` trials, at most `cap_s`.
    """

    def __init__(
        self, greater_is_better: bool, rows_ratio: float, members: int = 1, cap_s: float = 0.0
    ):
        self.sign = 1.0 if greater_is_better else -1.0
        self.rows_ratio, self.members, self.cap_s = rows_ratio, members, cap_s
        self.best: list[tuple[float, float]] = []  # (signed score, estimate), best first

    def add(self, score: float, fit_time_s: float) -> None:
        if not (score == score and fit_time_s == fit_time_s):  # nan
            return
        self.best.append((self.sign * float(score), max(0.0, fit_time_s) * self.rows_ratio))
        self.best.sort(key=lambda pair: -pair[0])
        del self.best[self.members :]

    def __call__(self) -> float:
        estimate = SEARCH_TAIL_S + sum(cost for _, cost in self.best)
        return min(estimate, self.cap_s) if self.cap_s > 0 else estimate


def grace_for(time_budget_s: float) -> float:
    """How long past the budget a search with no finished trial waits for its first one."""
    return max(30.0, time_budget_s / 2)


class BudgetStopper(Stopper):
    """Stop every trial at `deadline` (a `clock()` time) if one has finished, else at
    `deadline + grace_s`. A finished trial is one that reported `final`. With a `reserve`,
    the deadline moves earlier by its estimate of the refit once a trial has finished."""

    def __init__(
        self,
        deadline: float,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
        reserve: RefitReserve | None = None,
    ):
        self.deadline, self.grace_s, self.clock = deadline, grace_s, clock
        self.reserve = reserve
        self.finished = 0
        self.waiting = False  # past the deadline, waiting for the first finished trial

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("final"):
            self.finished += 1
            if self.reserve is not None:
                self.reserve.add(result.get("score", float("nan")), result.get("fit_time_s", 0.0))
        return False  # trials are never stopped one by one here

    def reserved_s(self) -> float:
        return self.reserve() if self.reserve is not None else 0.0

    def stop_all(self) -> bool:
        now = self.clock()
        if now < self.deadline - self.reserved_s():
            return False
        if self.finished:  # past the deadline, or into the refit's share before it
            return True
        if now < self.deadline:
            return False
        if now >= self.deadline + self.grace_s:
            return True
        if not self.waiting:
            self.waiting = True
            say(
                "tune",
                "no trial has finished yet at the end of the budget; "
                f"waiting up to {self.grace_s:.0f}s more for the first one",
            )
        return False
