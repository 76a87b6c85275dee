"""The committed pipeline YAML is what the code compiles to, and names one pinned image."""

from __future__ import annotations

import json

import yaml

from kfp_automl import __version__
from kfp_automl.components._image import COMPONENTS_IMAGE
from kfp_automl.pipelines.compile import COMPILED_DIR, PIPELINES, compile_pipeline


def test_committed_yaml_is_up_to_date(tmp_path):
    for name in PIPELINES:
        fresh = compile_pipeline(name, tmp_path / f"{name}.yaml").read_text()
        committed = (COMPILED_DIR / f"{name}.yaml").read_text()
        assert fresh == committed, f"pipelines/compiled/{name}.yaml is stale: run `make compile`"


def test_every_step_runs_the_versioned_project_image():
    spec = next(yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text()))
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 8
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == COMPONENTS_IMAGE, name
        assert (
            container["image"].endswith(f":{__version__}") and ":latest" not in container["image"]
        )
        text = " ".join(container["command"] + container.get("args", []))
        assert "pip install" not in text, f"{name} installs packages at run time"


def test_pipeline_wiring_and_defaults():
    spec = next(yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {
        "fingerprint-inputs",
        "prepare-data",
        "tune-models",
        "evaluate-model",
        "package-model",
        "gate-model",
        "condition-1",
    }
    condition = tasks["condition-1"]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--gate-model-Output'] == true"
    )
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    # only a passing model is deployed and promoted, and promoted only once its rollout
    # succeeded: a failed deploy fails the branch before promote, so the champion stays served
    assert set(inner) == {"deploy-model", "promote-model"}
    assert inner["promote-model"]["dependentTasks"] == ["deploy-model"]
    assert "dependentTasks" not in inner["deploy-model"]
    assert "triggerPolicy" not in inner["deploy-model"]  # runs with an empty namespace too
    deploy = inner["deploy-model"]
    assert deploy["inputs"]["artifacts"]["bento"]["componentInputArtifact"] == (
        "pipelinechannel--package-model-bento"
    )
    assert deploy["inputs"]["parameters"]["namespace"]["componentInputParameter"] == (
        "pipelinechannel--deploy_namespace"
    )
    assert deploy["inputs"]["parameters"]["timeout_s"]["componentInputParameter"] == (
        "pipelinechannel--deploy_timeout_s"
    )
    # its own parameters, and the resource channels KFP adds for set_cpu_limit(<parameter>) ...
    assert {p for p in deploy["inputs"]["parameters"] if "pipelinechannel" not in p} - {
        "cpu_limit",
        "cpu_request",
        "memory_limit",
        "memory_request",
    } == {"namespace", "manifests", "timeout_s"}
    assert tasks["tune-models"]["dependentTasks"] == ["fingerprint-inputs", "prepare-data"]
    assert set(tasks["package-model"]["dependentTasks"]) == {
        "evaluate-model",
        "prepare-data",
        "tune-models",
    }
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["time_budget_s"]["defaultValue"] == 120
    assert params["data"]["defaultValue"] == ""  # no data path baked in at compile time
    assert params["deploy_namespace"]["defaultValue"] == ""  # local runs deploy nothing
    assert params["deploy_manifests"]["defaultValue"] == ""  # the copy in the image
    assert params["deploy_timeout_s"]["defaultValue"] == 300
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {
        "bento",
        "metrics",
        "report",
        "summary",
        "model_card",
        "leaderboard",
        "model",
        "schema",
        "profile",
        "decision",
        "data_report",
        "data_summary",
        "search_report",
    } == set(outputs)
    assert params["search_algorithm"]["defaultValue"] == "tpe"
    assert params["search_state_root"]["defaultValue"] == ""
    tune_inputs = tasks["tune-models"]["inputs"]["parameters"]
    # no run id among tune's inputs: it would make every run a cache miss (the search state
    # is found from the task's own output URIs, the same on a retry)
    assert not {"run_id", "pipeline_root"} & set(tune_inputs)
    assert "pipeline_job" not in json.dumps(tune_inputs)


def test_credentials_come_from_optional_secrets_never_parameters():
    """The steps that read URLs or the model registry get object-store credentials from an
    optional Secret, the tune step the KubeRay token; no other step sees either."""
    from kfp_automl.pipelines.training import RAY_SECRET, STORAGE_ENV, STORAGE_SECRET

    _, platform = yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    registry_steps = {"exec-package-model", "exec-gate-model", "exec-promote-model"}
    assert (
        set(executors)
        == {
            "exec-fingerprint-inputs",
            "exec-prepare-data",
            "exec-tune-models",
            "exec-deploy-model",  # deploy_manifests may be an object-store URL
        }
        | registry_steps
    )
    secrets = {
        name: {
            s["secretName"]: ({m["secretKey"]: m["envVar"] for m in s["keyToEnv"]}, s["optional"])
            for s in cfg["secretAsEnv"]
        }
        for name, cfg in executors.items()
    }
    storage = ({k: k for k in STORAGE_ENV}, True)
    assert {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"} <= set(STORAGE_ENV)
    url_steps = {"exec-fingerprint-inputs", "exec-prepare-data", "exec-deploy-model"}
    for step in url_steps | registry_steps:
        assert secrets[step] == {STORAGE_SECRET: storage}, step
    assert secrets["exec-tune-models"] == {
        STORAGE_SECRET: storage,
        RAY_SECRET: ({"auth_token": "RAY_AUTH_TOKEN"}, True),
    }
