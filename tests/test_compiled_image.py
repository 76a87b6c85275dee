"""`compile --image`: the image is an argument written into every executor; no secrets in the YAML."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from kfp_automl import __version__
from kfp_automl.cli.main import main
from kfp_automl.components._image import COMPONENTS_IMAGE
from kfp_automl.errors import UserError
from kfp_automl.pipelines.compile import COMPILED_DIR, check_image, compile_pipeline

REF = "registry.example.com:5000/ml/kfp-automl-components:2026.11.1"


def _images(path) -> dict[str, str]:
    spec = next(yaml.safe_load_all(path.read_text()))
    return {n: ex["container"]["image"] for n, ex in spec["deploymentSpec"]["executors"].items()}


def test_compile_image_writes_ref_into_every_executor(tmp_path, capsys):
    assert main(["compile", "--output-dir", str(tmp_path), "--image", REF]) == 0
    assert f"wrote {tmp_path / 'training.yaml'}" in capsys.readouterr().out
    images = _images(tmp_path / "training.yaml")
    default = _images(COMPILED_DIR / "training.yaml")
    assert set(images) == set(default) and len(images) >= 6  # every step, none missed
    assert set(images.values()) == {REF} and set(default.values()) == {COMPONENTS_IMAGE}
    # everything but the image lines is what the default compile writes
    committed = (COMPILED_DIR / "training.yaml").read_text()
    fresh = (tmp_path / "training.yaml").read_text()
    assert fresh.count(REF) == len(images)
    assert fresh.replace(REF, COMPONENTS_IMAGE) == committed


def test_default_compile_is_unchanged_and_ignores_the_environment(tmp_path):
    env_dir = tmp_path / "env"
    # whoever compiles, with whatever in their environment, gets the same YAML
    env = {"PATH": "/usr/bin:/bin", "KFP_AUTOML_IMAGE": REF, "IMAGE": REF, "COMPONENTS_IMAGE": REF}
    subprocess.run(
        [sys.executable, "-m", "kfp_automl.cli.main", "compile", "--output-dir", str(env_dir)],
        check=True,
        env=env,
        capture_output=True,
    )
    assert set(_images(env_dir / "training.yaml").values()) == {COMPONENTS_IMAGE}
    assert (env_dir / "training.yaml").read_text() == (COMPILED_DIR / "training.yaml").read_text()
    same = compile_pipeline("training", tmp_path / "same.yaml", image=COMPONENTS_IMAGE)
    assert same.read_text() == (COMPILED_DIR / "training.yaml").read_text()


@pytest.mark.parametrize(
    "ref",
    [
        f"ghcr.io/kfp-automl/components:{__version__}",
        "localhost:5000/components:dev-1",
        "components@sha256:" + "a" * 64,
        "reg.io/team/components:1.0@sha256:" + "0" * 64,
    ],
)
def test_pinned_refs_are_accepted(ref):
    assert check_image(ref) == ref


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("ghcr.io/kfp-automl/components", "pin a tag"),
        ("ghcr.io/kfp-automl/components:latest", "pin a tag"),
        ("GHCR.io/Team/Components:1.0", "not an image reference"),
        ("ghcr.io/kfp automl:1", "not an image reference"),
        ("", "not an image reference"),
        ("ghcr.io/x:1@sha256:abc", "not an image reference"),
    ],
)
def test_bad_refs_exit_2_and_write_nothing(tmp_path, capsys, ref, problem):
    with pytest.raises(UserError):
        check_image(ref)
    assert main(["compile", "--output-dir", str(tmp_path / "out"), "--image", ref]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --image") and problem in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# Names a credential would go by, and values that look like one.
_SECRET_NAME = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|credential|private[_-]?key|access[_-]?key|auth|cookie",
    re.I,
)
_SECRET_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|gh[pousr]_[A-Za-z0-9]{20,}|xox[abp]-|"
    r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}|[A-Za-z0-9+/]{40,}={0,2}"
)


def _parameters(spec: dict):
    """Every (owner, name, definition) of an input parameter in the pipeline and its components."""
    yield "root", spec["root"]["inputDefinitions"]["parameters"]
    for name, comp in spec["components"].items():
        yield name, comp.get("inputDefinitions", {}).get("parameters", {})


@pytest.mark.parametrize("image", [None, REF])
def test_no_credential_in_pipeline_parameters(tmp_path, image):
    path = compile_pipeline("training", tmp_path / "t.yaml", image=image)
    spec = next(yaml.safe_load_all(path.read_text()))
    seen = 0
    for owner, params in _parameters(spec):
        for name, definition in params.items():
            seen += 1
            assert not _SECRET_NAME.search(name), f"{owner}: parameter {name} looks like a secret"
            default = definition.get("defaultValue")
            if isinstance(default, str):
                assert not _SECRET_VALUE.search(default), f"{owner}: {name} default looks secret"
    assert seen > 20  # the scan saw the pipeline's and every component's parameters
    # no constant anywhere in the run-time arguments looks like a credential either
    for ex in spec["deploymentSpec"]["executors"].values():
        for arg in ex["container"].get("args", []) + ex["container"]["command"]:
            assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN|Bearer ", arg)


def test_secret_scan_catches_a_planted_credential():
    """The scan is not vacuous: a pipeline with a token parameter and a key default fails it."""
    spec = {
        "root": {
            "inputDefinitions": {
                "parameters": {
                    "hf_token": {"parameterType": "STRING"},
                    "bucket": {"defaultValue": "AKIAABCDEFGHIJKLMNOP"},
                }
            }
        },
        "components": {},
    }
    names = [n for _, ps in _parameters(spec) for n in ps if _SECRET_NAME.search(n)]
    values = [
        n
        for _, ps in _parameters(spec)
        for n, d in ps.items()
        if _SECRET_VALUE.search(str(d.get("defaultValue", "")))
    ]
    assert names == ["hf_token"] and values == ["bucket"]
