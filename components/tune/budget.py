"""The search's wall-clock budget, with a model at the end of it.

Ray Tune's own `time_budget_s` ends the search when the time is up, finished
trials or not; on a busy machine, or with a budget close to Ray's start-up
time, that leaves nothing to refit and the run fails. `BudgetStopper` ends the
search at the deadline once some trial has finished its full budget, and
otherwise waits for the first one to finish for at most `grace_s` longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ray.tune.stopper import Stopper

from kfp_automl.progress import say


def grace_for(time_budget_s: float) -> float:
    """How long past the budget a search with no finished trial waits for its first one."""
    return max(30.0, time_budget_s / 2)


class BudgetStopper(Stopper):
    """Stop every trial at `deadline` (a `clock()` time) if one has finished, else at
    `deadline + grace_s`. A finished trial is one that reported `final`."""

    def __init__(
        self, deadline: float, grace_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.deadline, self.grace_s, self.clock = deadline, grace_s, clock
        self.finished = 0
        self.waiting = False  # past the deadline, waiting for the first finished trial

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("final"):
            self.finished += 1
        return False  # trials are never stopped one by one here

    def stop_all(self) -> bool:
        now = self.clock()
        if now < self.deadline:
            return False
        if self.finished:
            return True
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
