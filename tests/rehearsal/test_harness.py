"""The rehearsal's own rules, checked on their own (fast): what it resolves, hides and caches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import rehearsal
from tests.support.rehearsal import RehearsalError


@pytest.mark.parametrize(
    ("condition", "params", "expected"),
    [
        ("inputs.parameter_values['pipelinechannel--gate-model-Output'] == true", {"pipelinechannel--gate-model-Output": True}, True),
        ("inputs.parameter_values['pipelinechannel--gate-model-Output'] == true", {"pipelinechannel--gate-model-Output": False}, False),
        ("inputs.parameter_values['pipelinechannel--deploy_namespace'] != ''", {"pipelinechannel--deploy_namespace": ""}, False),
        ("inputs.parameter_values['pipelinechannel--deploy_namespace'] != ''", {"pipelinechannel--deploy_namespace": "prod"}, True),
    ],
)  # fmt: skip
def test_conditions_as_the_compiler_writes_them(condition, params, expected):
    assert rehearsal._evaluate(condition, params) is expected


def test_an_unknown_condition_is_refused_not_guessed():
    with pytest.raises(RehearsalError, match="condition not implemented"):
        rehearsal._evaluate("inputs.parameter_values['a'] > 1 && true", {"a": 2})


def test_placeholders_resolve_as_kfps_driver_resolves_them():
    params = {"pipelinechannel--step_cpu": "2", "n": 3}
    assert (
        rehearsal._substitute("{{$.inputs.parameters['pipelinechannel--step_cpu']}}", params) == "2"
    )
    assert rehearsal._substitute("{{$.inputs.parameters['n']}}", params) == 3  # the type kept
    assert rehearsal._substitute("x-{{$.inputs.parameters['n']}}", params) == "x-3"
    # the driver passes {{$.pipeline_root}} through to a lightweight component's parameter
    assert rehearsal._substitute("{{$.pipeline_root}}", params) == "{{$.pipeline_root}}"
    # whole numbers reach the component as the Go backend prints them
    assert rehearsal._protojson({"seed": 42.0, "f": 0.15, "l": [1.0]}) == {
        "seed": 42,
        "f": 0.15,
        "l": [1],
    }


def test_resources_must_be_kubernetes_quantities():
    container = {"resources": {"resourceMemoryLimit": "{{$.inputs.parameters['m']}}"}}
    assert rehearsal.Rehearsal._resources(container, {"m": "4Gi"}) == {"resourceMemoryLimit": "4Gi"}
    with pytest.raises(RehearsalError, match="not a Kubernetes quantity"):
        rehearsal.Rehearsal._resources(container, {"m": "4 gigs"})


def test_a_pod_sees_only_what_the_components_image_installs(tmp_path):
    """pytest and moto are installed here for the tests, not in the image; kfp and the project
    are in both."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(rehearsal._SITECUSTOMIZE)
    hidden = rehearsal.hidden_modules()
    assert any(h.endswith("/pytest") for h in hidden) and any(h.endswith("/moto") for h in hidden)
    assert not any(h.endswith(("/kfp", "/ray", "/kfp_automl", "/sklearn")) for h in hidden)
    env = {
        "PYTHONPATH": str(site),
        "REHEARSAL_HIDDEN_MODULES": ":".join(hidden),
        "PATH": "/usr/bin:/bin",
    }
    probe = (
        "import importlib.util as u, kfp, sklearn, kfp_automl\n"
        "try:\n    import pytest\nexcept ModuleNotFoundError as e:\n    print('hidden:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "hidden: No module named 'pytest' (not installed in the components image)" in out


def test_the_cache_key_changes_with_any_input_and_nothing_else():
    backend = object.__new__(rehearsal.Rehearsal)
    backend.namespace, backend.spec = "team-a", {"pipelineInfo": {"name": "p"}}
    component = {"outputDefinitions": {"artifacts": {"out": {}}}}
    container = {"image": "img:1", "command": ["python"], "args": ["{{$}}"]}
    art = rehearsal.RArtifact("artifact-1", "train", "minio://b/x", "system.Dataset")
    key = backend._cache_key(component, container, {"data_version": "etag:1"}, {"train": art})
    assert key == backend._cache_key(
        component, container, {"data_version": "etag:1"}, {"train": art}
    )
    assert key != backend._cache_key(
        component, container, {"data_version": "etag:2"}, {"train": art}
    )
    other = rehearsal.RArtifact("artifact-2", "train", "minio://b/x", "system.Dataset")
    assert key != backend._cache_key(
        component, container, {"data_version": "etag:1"}, {"train": other}
    )
    assert key != backend._cache_key(
        component, {**container, "image": "img:2"}, {"data_version": "etag:1"}, {"train": art}
    )
