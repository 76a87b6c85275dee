"""`kfp-automl images` (and `make images` / `make push`): one registry and tag reach every file a
user deploys from, checked by rendering with the real `kubectl kustomize` and compiling.

Each test works on a copy of the repository's deployable files in a temporary directory, so
the working tree is never rewritten. Building and pushing go to stand-in engines that record
the commands (no container engine runs here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kfp_automl import __version__
from kfp_automl.cli.images import RENDERED_HEADER, image_set, retag_kustomization
from kfp_automl.cli.main import main
from kfp_automl.components._image import COMPONENTS_IMAGE
from kfp_automl.errors import UserError
from tests.manifests.render import kubectl

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "registry.example.com:5000/ml-team"
TAG = "2026.12.1"
NEW = {image: f"{REGISTRY}/{image}:{TAG}" for image in ("components", "serving")}
DEFAULT = {
    image: f"ghcr.io/kfp-automl/{image}:{__version__}" for image in ("components", "serving")
}
# Every kustomization a user applies, and the image each one runs. The serving base is not
# applied on its own: the overlays set its image.
ROOTS = {
    "serving/overlays/dev": {"serving"},
    "serving/overlays/prod": {"serving"},
    "serving/overlays/prod-keda": {"serving"},
    "serving/overlays/prod-kserve": {"serving"},
    "tuning": {"components"},
    "retraining": {"components"},
    "retraining/schedule": {"components"},
}
COPIED = ("manifests", "images", "pipelines/compiled", "kfp_automl/__init__.py", "Makefile")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of what `kfp-automl images`, images/build.sh and the Makefile read and write."""
    root = tmp_path / "repo"
    for rel in COPIED:
        source, target = ROOT / rel, root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".venv" not in p.parts
    }


def _images(text: str) -> set[str]:
    return set(re.findall(r"^\s*image: *([^\s#]+)", text, flags=re.M))


def _kustomize(directory: Path) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _kustomization_roots(manifests: Path) -> set[str]:
    """Every kustomization under manifests/ that renders on its own (not a Component)."""
    found = set()
    for path in manifests.rglob("kustomization.yaml"):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.add(str(path.parent.relative_to(manifests)))
    return found


def _executor_images(path: Path) -> dict[str, str]:
    spec = next(yaml.safe_load_all(path.read_text()))
    return {n: ex["container"]["image"] for n, ex in spec["deploymentSpec"]["executors"].items()}


def test_with_the_defaults_every_file_stays_as_committed(repo, capsys):
    before = _files(repo)
    assert main(["images", "--root", str(repo)]) == 0
    out = capsys.readouterr().out
    assert _files(repo) == before
    assert "wrote" not in out and "already named them" in out


def test_one_registry_and_tag_reach_every_place_a_user_deploys_from(repo, capsys):
    committed_files = _files(repo)
    # before: every kustomization a user applies runs the project's default images
    manifests = repo / "manifests"
    assert _kustomization_roots(manifests) >= set(ROOTS)
    for name, images in ROOTS.items():
        assert _images(_kustomize(manifests / name)) == {DEFAULT[i] for i in images}, name

    assert main(["images", "--root", str(repo), "--registry", REGISTRY, "--tag", TAG]) == 0
    out = capsys.readouterr().out
    assert f"images: {NEW['components']}, {NEW['serving']}" in out

    # every kustomization, rendered by the real kubectl, runs the new images and no other
    for name, images in ROOTS.items():
        assert _images(_kustomize(manifests / name)) == {NEW[i] for i in images}, name
    # the compiled pipeline: every step, and nothing else changed
    compiled = repo / "pipelines/compiled/training.yaml"
    executors = _executor_images(compiled)
    assert len(executors) >= 6 and set(executors.values()) == {NEW["components"]}
    committed = (ROOT / "pipelines/compiled/training.yaml").read_text()
    assert compiled.read_text().replace(NEW["components"], COMPONENTS_IMAGE) == committed
    # the deploy step's default manifests: the prod overlay as it renders now
    rendered = (repo / "images/rendered/serving.yaml").read_text()
    assert rendered == RENDERED_HEADER + _kustomize(manifests / "serving/overlays/prod")
    assert _images(rendered) == {NEW["serving"]}
    # a kustomization keeps its comments and layout: only the images' lines changed
    for rel in ("serving/overlays/prod", "tuning", "retraining"):
        old = (ROOT / "manifests" / rel / "kustomization.yaml").read_text().splitlines()
        new = (manifests / rel / "kustomization.yaml").read_text().splitlines()
        added = [line.strip() for line in new if line not in old]
        removed = [line.strip() for line in old if line not in new]
        assert removed == [f'newTag: "{__version__}"']
        image = next(iter(ROOTS[rel]))
        assert added == [f"newName: {REGISTRY}/{image}", f'newTag: "{TAG}"']

    # and with no options the defaults come back, byte for byte
    assert main(["images", "--root", str(repo)]) == 0
    assert _files(repo) == committed_files


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--tag", "latest"], "--tag latest is refused"),
        (["--tag", "two words"], "is not an image tag"),
        (["--tag", ""], "is not an image tag"),
        (["--registry", "https://registry.example.com/team"], "is not a registry path"),
        (["--registry", "Registry.example.com/Team"], "is not a registry path"),
        (["--registry", "registry.example.com/team:1.0"], "is not a registry path"),
        (["--registry", ""], "is not a registry path"),
    ],
)
def test_bad_registry_or_tag_exit_2_and_write_nothing(repo, capsys, args, problem):
    before = _files(repo)
    assert main(["images", "--root", str(repo), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and err.count("\n") == 1
    assert _files(repo) == before


def test_not_a_checkout_exits_2(tmp_path, capsys):
    assert main(["images", "--root", str(tmp_path), "--registry", REGISTRY]) == 2
    err = capsys.readouterr().err
    assert "is not a kfp-automl checkout" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_without_kubectl_nothing_is_written(repo, monkeypatch, capsys):
    before = _files(repo)
    monkeypatch.setenv("PATH", str(repo / "no-tools"))
    assert main(["images", "--root", str(repo), "--registry", REGISTRY]) == 2
    assert "kubectl is needed" in capsys.readouterr().err
    assert _files(repo) == before


def test_a_failed_render_writes_nothing_not_even_the_kustomizations_before_it(repo, capsys):
    (repo / "manifests/serving/base/service.yaml").unlink()  # the prod overlay cannot render
    before = _files(repo)
    assert main(["images", "--root", str(repo), "--registry", REGISTRY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: kubectl kustomize prod failed:") and err.count("\n") == 1
    assert _files(repo) == before


def test_an_entry_in_flow_style_is_refused_and_nothing_is_written(repo, capsys):
    path = repo / "manifests/tuning/kustomization.yaml"
    text = path.read_text()
    block = f'  - name: ghcr.io/kfp-automl/components\n    newTag: "{__version__}"\n'
    assert block in text
    path.write_text(
        text.replace(
            block, f'  - {{name: ghcr.io/kfp-automl/components, newTag: "{__version__}"}}\n'
        )
    )
    before = _files(repo)
    assert main(["images", "--root", str(repo), "--registry", REGISTRY]) == 2
    err = capsys.readouterr().err
    assert "cannot set the images in manifests/tuning/kustomization.yaml" in err
    assert err.count("\n") == 1
    assert _files(repo) == before  # not the kustomizations before it either


def test_retag_keeps_other_entries_and_drops_a_stale_digest():
    text = (
        "images:\n"
        "  - name: ghcr.io/kfp-automl/serving\n"
        '    newTag: "0.2.0"\n'
        "    # pinned by hand\n"
        "    digest: sha256:" + "a" * 64 + "\n"
        "  - name: docker.io/library/busybox  # someone else's\n"
        '    newTag: "1.36"\n'
    )
    new = retag_kustomization(text, image_set("reg.example.com/t/", "7"))
    assert yaml.safe_load(new)["images"] == [
        {
            "name": "ghcr.io/kfp-automl/serving",
            "newName": "reg.example.com/t/serving",
            "newTag": "7",
        },
        {"name": "docker.io/library/busybox", "newTag": "1.36"},
    ]
    assert "# someone else's" in new and "    # pinned by hand\n" in new
    back = retag_kustomization(new, image_set("ghcr.io/kfp-automl", "0.2.0"))
    assert "newName" not in back and "# pinned by hand" in back
    assert yaml.safe_load(back) == yaml.safe_load(
        text.replace("    digest: sha256:" + "a" * 64 + "\n", "")
    )
    with pytest.raises(UserError, match="latest"):
        image_set("reg.example.com/t", "latest")


# ---- make images / make push, with stand-in engines -----------------------------------------


def _stand_in_engines(directory: Path, log: Path, *names: str) -> Path:
    """Scripts named like container engines that record their arguments (`info` succeeds)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        script = directory / name
        script.write_text(
            f'#!{shutil.which("bash")}\nif [ "$1" = info ]; then exit 0; fi\n'
            f'echo "{name} $*" >> {log}\n'
        )
        script.chmod(0o755)
    return directory


def _make(repo: Path, engines: Path, *args: str, env: dict[str, str] | None = None):
    # the repository's own environment; its setup stamp is taken as up to date
    if not (repo / ".venv").exists():
        (repo / ".venv").symlink_to(ROOT / ".venv")
        shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    base = {"PATH": f"{engines}:{os.environ['PATH']}", "HOME": str(repo)}
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.setup-stamp", *args],
        cwd=repo,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_images_points_every_file_at_the_tags_it_builds(repo, tmp_path):
    log = tmp_path / "calls.log"
    engines = _stand_in_engines(tmp_path / "bin", log, "docker")
    done = _make(repo, engines, "images", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert log.read_text().splitlines() == [
        f"docker build -f images/{image}.Dockerfile -t {NEW[image]} ."
        for image in ("components", "serving")
    ]
    # what the components image carries names the images just built
    assert _images((repo / "images/rendered/serving.yaml").read_text()) == {NEW["serving"]}
    compiled = repo / "pipelines/compiled/training.yaml"
    assert set(_executor_images(compiled).values()) == {NEW["components"]}
    assert _images(_kustomize(repo / "manifests/retraining")) == {NEW["components"]}


def test_make_push_needs_a_registry_and_pushes_what_it_built(repo, tmp_path):
    log = tmp_path / "calls.log"
    engines = _stand_in_engines(tmp_path / "bin", log, "podman")
    refused = _make(repo, engines, "push")
    assert refused.returncode == 2 and "make push needs REGISTRY=" in refused.stderr
    assert not log.exists()
    done = _make(repo, engines, "push", env={"REGISTRY": REGISTRY})  # from the environment
    assert done.returncode == 0, done.stdout + done.stderr
    default_tag = {
        image: f"{REGISTRY}/{image}:{__version__}" for image in ("components", "serving")
    }
    assert log.read_text().splitlines() == [
        f"podman build -f images/components.Dockerfile -t {default_tag['components']} .",
        f"podman build -f images/serving.Dockerfile -t {default_tag['serving']} .",
        f"podman push {default_tag['components']}",
        f"podman push {default_tag['serving']}",
    ]


# ---- images/build.sh alone ------------------------------------------------------------------


def _build(repo: Path, engines: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    tools = engines / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash", "sed", "dirname", "cat"):
        if not (tools / tool).exists():
            os.symlink(shutil.which(tool), tools / tool)
    return subprocess.run(
        [str(tools / "bash"), str(repo / "images/build.sh"), *args],
        env={"PATH": f"{engines}:{tools}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_build_refuses_a_components_image_whose_files_name_other_images(repo, tmp_path):
    log = tmp_path / "calls.log"
    engines = _stand_in_engines(tmp_path / "bin", log, "docker")
    done = _build(repo, engines, REGISTRY=REGISTRY, TAG=TAG)
    assert done.returncode == 1
    assert "images/rendered/serving.yaml does not name" in done.stderr
    assert f"make images REGISTRY={REGISTRY} TAG={TAG}" in done.stderr
    assert not log.exists()  # nothing built
    # the serving image carries none of them
    assert _build(repo, engines, "serving", REGISTRY=REGISTRY, TAG=TAG).returncode == 0
    assert log.read_text().splitlines() == [
        f"docker build -f images/serving.Dockerfile -t {NEW['serving']} ."
    ]


def test_build_pushes_with_buildah_and_refuses_latest(repo, tmp_path):
    assert main(["images", "--root", str(repo), "--registry", REGISTRY, "--tag", TAG]) == 0
    log = tmp_path / "calls.log"
    engines = _stand_in_engines(tmp_path / "bin", log, "buildah")
    latest = _build(repo, engines, "--push", REGISTRY=REGISTRY, TAG="latest")
    assert latest.returncode == 2 and "TAG=latest is refused" in latest.stderr
    assert not log.exists()
    done = _build(repo, engines, "--push", "components", REGISTRY=REGISTRY + "/", TAG=TAG)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        f"buildah bud -f images/components.Dockerfile -t {NEW['components']} .",
        f"buildah push {NEW['components']}",
    ]
    bad = _build(repo, engines, "--force", REGISTRY=REGISTRY, TAG=TAG)
    assert bad.returncode == 2 and "unknown option --force" in bad.stderr
