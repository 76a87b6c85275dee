"""What the project relies on beyond its libraries' documented API, each behind one shim.

When a library changes one of these, this file fails and names the shim to update:
- joblib's unpickler class (kfp_automl/runtime/model_file.py: unpickle, for module renames);
- Ray Tune's restored run config (components/tune/ray_private.py);
- BentoML's home directory rule (kfp_automl/registry/store.py: bentoml_home).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"


def test_joblib_unpickler_takes_what_model_file_gives_it(tmp_path):
    import joblib
    from joblib.numpy_pickle import NumpyUnpickler

    params = list(inspect.signature(NumpyUnpickler.__init__).parameters)
    assert params[:4] == ["self", "filename", "file_handle", "ensure_native_byte_order"], (
        f"joblib.numpy_pickle.NumpyUnpickler takes {params} now: update "
        "kfp_automl/runtime/model_file.py:unpickle"
    )
    from kfp_automl.runtime.model_file import unpickle

    value = {"a": np.arange(5.0), "b": [1, "x"]}
    joblib.dump(value, tmp_path / "v.joblib")
    back = unpickle(tmp_path / "v.joblib")
    assert np.array_equal(back["a"], value["a"]) and back["b"] == value["b"]


def test_ray_tuner_still_has_the_run_config_a_resumed_search_replaces(tmp_path):
    """A Tuner built as search.py builds it exposes the attributes ray_private rewrites."""
    from ray import tune

    from kfp_automl.components.tune.ray_private import replace_run_settings

    tuner = tune.Tuner(
        lambda config: {"score": 1.0},
        tune_config=tune.TuneConfig(num_samples=1, time_budget_s=30),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe"),
    )
    marker, stop = object(), object()
    replace_run_settings(tuner, [marker], stop)
    local = tuner._local_tuner
    assert local._run_config.callbacks == [marker] and local._run_config.stop is stop
    assert local._tune_config.time_budget_s is None


def test_bentoml_resolves_its_home_as_bentoml_home_says(tmp_path):
    code = (
        "from bentoml._internal.configuration.containers import BentoMLContainer;"
        "from kfp_automl.registry.store import bentoml_home;"
        "print(BentoMLContainer.bentoml_home.get()); print(bentoml_home())"
    )
    for env in ({"BENTOML_HOME": str(tmp_path / "home")}, {"HOME": str(tmp_path)}):
        base = {"PATH": "/usr/bin:/bin", "BENTOML_DO_NOT_TRACK": "true"}
        if "BENTOML_HOME" not in env:
            base["HOME"] = env["HOME"]
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**base, **env},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        theirs, ours = done.stdout.split()
        assert Path(theirs) == Path(ours), (
            f"BentoML puts its home at {theirs}, kfp_automl.registry.store.bentoml_home says "
            f"{ours}: update it"
        )
