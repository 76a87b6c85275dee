"""What the compiled pipeline tells a KFP backend about caching, retries and resources.

kfp.local ignores most of this; a Kubeflow cluster acts on every field. Each assertion is on
pipelines/compiled/training.yaml, the file users submit.
"""

from __future__ import annotations

import pytest
import yaml

from kfp_automl.pipelines.compile import COMPILED_DIR

STEPS = {
    "fingerprint": "fingerprint-inputs",
    "prepare": "prepare-data",
    "tune": "tune-models",
    "evaluate": "evaluate-model",
    "package": "package-model",
    "gate": "gate-model",
    "promote": "promote-model",
    "deploy": "deploy-model",
}


@pytest.fixture(scope="module")
def spec():
    return next(yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text()))


def _tasks(spec) -> dict:
    """Every task of the pipeline, the ones inside its conditions included."""
    found = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        found.update(comp.get("dag", {}).get("tasks", {}))
    return found


def _executor(spec, task) -> dict:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_steps_with_effects_outside_their_outputs_never_cache(spec):
    """A cached package/gate/promote/deploy would skip the registry write, the champion read
    or the rollout; a cached fingerprint would reuse an old version of the data."""
    tasks = _tasks(spec)
    for step in ("fingerprint", "package", "gate", "promote", "deploy"):
        assert tasks[STEPS[step]].get("cachingOptions", {}).get("enableCache") is not True, step
    for step in ("prepare", "tune", "evaluate"):
        assert tasks[STEPS[step]]["cachingOptions"]["enableCache"] is True, step


def test_steps_reading_urls_are_keyed_on_the_data_version(spec):
    """KFP's cache key holds the resolved inputs: prepare and tune take the versions the
    fingerprint step read, so a changed table or leaderboard behind the same URL is a miss."""
    tasks = _tasks(spec)
    prep = tasks["prepare-data"]["inputs"]["parameters"]["data_version"]
    assert prep["taskOutputParameter"] == {
        "producerTask": "fingerprint-inputs",
        "outputParameterKey": "data_version",
    }
    tune = tasks["tune-models"]["inputs"]["parameters"]["warm_start_version"]
    assert tune["taskOutputParameter"]["producerTask"] == "fingerprint-inputs"
    fingerprint = tasks["fingerprint-inputs"]["inputs"]["parameters"]
    assert fingerprint["data"]["componentInputParameter"] == "data"
    assert fingerprint["warm_start"]["componentInputParameter"] == "warm_start"


def test_every_step_is_retried_with_backoff(spec):
    tasks = _tasks(spec)
    for step, name in STEPS.items():
        policy = tasks[name].get("retryPolicy", {})
        assert policy.get("maxRetryCount", 0) >= 1, step
        assert policy["backoffDuration"] == "30s" and policy["backoffFactor"] == 2, step
    assert tasks["tune-models"]["retryPolicy"]["maxRetryCount"] >= 2


def test_every_step_has_requests_and_limits_from_pipeline_parameters(spec):
    tasks = _tasks(spec)
    params = spec["root"]["inputDefinitions"]["parameters"]
    for step, name in STEPS.items():
        resources = _executor(spec, tasks[name])["resources"]
        group = step if step in ("prepare", "tune") else "step"
        cpu = f"{{{{$.inputs.parameters['pipelinechannel--{group}_cpu']}}}}"
        memory = f"{{{{$.inputs.parameters['pipelinechannel--{group}_memory']}}}}"
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == cpu, step
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == memory
        assert params[f"{group}_cpu"]["parameterType"] == "STRING"
    assert params["tune_memory"]["defaultValue"] == "8Gi"
    assert params["prepare_memory"]["defaultValue"] == "6Gi"


def test_registry_steps_know_their_namespace(spec):
    """With registry_root empty, package, gate and promote share the namespace's registry in
    the artifact bucket: the pod's namespace reaches them from its metadata."""
    tasks = _tasks(spec)
    platform = next(
        d
        for d in yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text())
        if d and "platforms" in d
    )["platforms"]["kubernetes"]["deploymentSpec"]
    for step in ("package", "gate", "promote"):
        task = tasks[STEPS[step]]
        assert task["inputs"]["parameters"]["registry_root"]["componentInputParameter"].endswith(
            "registry_root"
        )
        assert "pipeline_root" not in task["inputs"]["parameters"], step
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        fields = platform["executors"][label]["fieldPathAsEnv"]
        assert {"name": "KFP_AUTOML_NAMESPACE", "fieldPath": "metadata.namespace"} in fields


def _dags(spec) -> dict:
    """Every DAG of the pipeline (the root and each condition's), by component name."""
    dags = {"root": spec["root"]}
    dags.update({name: comp for name, comp in spec["components"].items() if "dag" in comp})
    return dags


def test_every_parameter_a_task_reads_reaches_its_dag(spec):
    """A task inside a condition reads only what its sub-DAG declares: a resource set from a
    pipeline parameter that the sub-DAG never receives fails the task on any backend (KFP's
    compiler does not wire a resource's channel by itself)."""
    import re

    reads = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
    for name, dag in _dags(spec).items():
        declared = set(dag.get("inputDefinitions", {}).get("parameters", {}))
        for task_name, task in dag["dag"]["tasks"].items():
            params = task.get("inputs", {}).get("parameters", {})
            for key, value in params.items():
                source = value.get("componentInputParameter")
                assert source is None or source in declared, (name, task_name, key, source)
                constant = str(value.get("runtimeValue", {}).get("constant", ""))
                for read in reads.findall(constant):
                    assert read in params, (name, task_name, key, read)


def test_promote_waits_for_the_rollout_and_its_retries(spec):
    """A KFP backend starts promote only when deploy succeeded, after deploy's own retries: a
    rollout that fails every attempt leaves the new version a challenger and the champion
    served; a retried deploy that succeeds is then promoted. No condition sits between them
    (deploy runs, and deploys nothing, without a namespace), so a local run promotes too."""
    tasks = _tasks(spec)
    assert tasks["promote-model"]["dependentTasks"] == ["deploy-model"]
    assert tasks["deploy-model"]["retryPolicy"]["maxRetryCount"] >= 1
    branch = next(
        dag["dag"]["tasks"]
        for dag in _dags(spec).values()
        if "promote-model" in dag["dag"]["tasks"]
    )
    assert set(branch) == {"deploy-model", "promote-model"}
    assert not any("triggerPolicy" in task for task in branch.values())
