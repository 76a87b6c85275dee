"""Early stopping that compares a trial only with trials of its own model family.

ASHA stops a trial whose score at a budget step trails the others' at that step.
Across families that comparison is unfair: at a ninth of its trees a random
forest is already close to its final score, while a boosting model at a ninth
of its rounds has barely started, so one shared ASHA stops every boosting
trial at its first step whenever forests are in the search, and the search can
only ever return forests, however much better boosting would have ended up.
`FamilyASHA` keeps one ASHA per family (same settings) and hands each trial to
its family's, so learning curves are compared with curves of the same shape.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class FamilyASHA(FIFOScheduler):
    """One ASHAScheduler per `config["family"]`, created when a family's first trial arrives."""

    def __init__(self, **asha: Any):
        super().__init__()
        self._asha = asha  # ASHAScheduler's arguments (time_attr, metric, mode, max_t, ...)
        self._metric = asha.get("metric")
        self._by_family: dict[str, ASHAScheduler] = {}
        self._family_of: dict[str, str] = {}  # trial id -> family

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        # as ASHAScheduler: refuse a second metric or mode, take them when it has none
        if (metric and self._asha.get("metric")) or (mode and self._asha.get("mode")):
            return False
        if metric:
            self._asha["metric"] = self._metric = metric
        if mode:
            self._asha["mode"] = mode
        return True

    def _child(self, trial) -> ASHAScheduler:
        family = self._family_of.setdefault(trial.trial_id, str(trial.config.get("family", "")))
        if family not in self._by_family:
            self._by_family[family] = ASHAScheduler(**self._asha)
        return self._by_family[family]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._child(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._child(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._child(trial).on_trial_complete(tune_controller, trial, result)
        self._family_of.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._child(trial).on_trial_remove(tune_controller, trial)
        self._family_of.pop(trial.trial_id, None)

    def stopped(self) -> dict[str, int]:
        """Trials stopped early, per family."""
        return {f: s._num_stopped for f, s in self._by_family.items()}

    def debug_string(self) -> str:
        return "FamilyASHA: " + ", ".join(f"{f} stopped {n}" for f, n in self.stopped().items())

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
