"""The one use of Ray Tune's private API: giving a restored search this driver's run settings.

`Tuner.restore` brings back the run config of the driver that died (its callbacks, stopper
and time budget, pickled with the experiment) and has no public way to replace them, so a
resumed search would report to a dead process and stop on an old deadline. This module is
the only place that reaches into `Tuner._local_tuner`; tests/unit/test_private_apis.py fails
loudly when Ray changes what it touches.
"""

from __future__ import annotations

from typing import Any


def replace_run_settings(tuner: Any, callbacks: list[Any], stop: Any) -> None:
    """Make a restored `tuner` use `callbacks` and `stop`, and no time budget of its own."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None or not hasattr(local, "_run_config") or not hasattr(local, "_tune_config"):
        raise RuntimeError(
            "ray.tune.Tuner has no _local_tuner._run_config/_tune_config any more: "
            "components/tune/ray_private.py needs updating for this Ray version"
        )
    local._run_config.callbacks = callbacks
    local._run_config.stop = stop
    local._tune_config.time_budget_s = None
