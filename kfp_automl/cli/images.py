"""`kfp-automl images`: point everything a user deploys from at one registry and tag.

Three kinds of files name the project's two images (by default
ghcr.io/kfp-automl/components and ghcr.io/kfp-automl/serving, tagged with the package
version: components/_image.py):

- the compiled pipeline (pipelines/compiled/*.yaml): the image of every step;
- every kustomization under manifests/ whose `images:` lists one of them (the manifests
  themselves keep the default names, which `images:` matches; newName and newTag change);
- images/rendered/serving.yaml, the rendered prod overlay that the components image carries
  as the deploy step's default manifests.

`set_images` writes all of them for one registry and tag; `make images` runs it before it
builds, so the images and the files that name them agree. Everything is prepared in a scratch
copy first (the overlay rendered there with the real `kubectl kustomize`), then each file that
changes is replaced atomically: a bad registry or tag, a missing kubectl or a failed render
writes nothing. With the defaults, the files are what the repository commits.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from kfp_automl import __version__
from kfp_automl.components._image import COMPONENTS_IMAGE, DEFAULT_REGISTRY
from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path

IMAGES = ("components", "serving")  # images/<name>.Dockerfile
PROD_OVERLAY = "serving/overlays/prod"  # under manifests/
RENDERED = Path("images/rendered/serving.yaml")
COMPILED = Path("pipelines/compiled")
# the first line of images/rendered/serving.yaml (also written by `make serving-manifests`)
RENDERED_HEADER = (
    "# Rendered by `make serving-manifests` (kubectl kustomize manifests/serving/overlays/prod): "
    "do not edit.\n"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_ENTRY = re.compile(r"^(?P<indent> *)- name: *(?P<name>[^\s#]+) *(#.*)?$")


@dataclass(frozen=True)
class ImageSet:
    """Where the two images live: `registry/<image>:tag`."""

    registry: str
    tag: str

    def ref(self, image: str) -> str:
        return f"{self.registry}/{image}:{self.tag}"

    def new_name(self, image: str) -> str | None:
        """The kustomize newName of `image`, None when it keeps its default name."""
        name = f"{self.registry}/{image}"
        return None if name == f"{DEFAULT_REGISTRY}/{image}" else name


def image_set(registry: str, tag: str) -> ImageSet:
    """The checked registry and tag (one-line UserError otherwise)."""
    from kfp_automl.pipelines.compile import check_image

    if tag == "latest":
        raise UserError(f"--tag latest is refused: pin a version (default: {__version__})")
    if not _TAG.fullmatch(tag):
        raise UserError(f"--tag {tag!r} is not an image tag such as {__version__} or 2026.12.1")
    cleaned = registry.rstrip("/")
    try:
        check_image(f"{cleaned}/components:{tag}")
    except UserError:
        raise UserError(
            f"--registry {registry!r} is not a registry path such as registry.example.com/team "
            "(lower-case, no scheme, no tag)"
        ) from None
    return ImageSet(cleaned, tag)


def retag_kustomization(text: str, images: ImageSet, where: str = "kustomization") -> str:
    """`text` (a kustomization) with the `images:` entries of the project's images set to
    `images`; every other line, comments included, stays as it is."""
    defaults = {f"{DEFAULT_REGISTRY}/{image}": image for image in IMAGES}
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = _ENTRY.match(line.rstrip("\n"))
        if match is None or match["name"] not in defaults:
            continue
        image = defaults[match["name"]]
        pad = " " * (len(match["indent"]) + 2)
        # the entry's lines (indented under it): its own settings go, the rest (comments) stays
        while i < len(lines) and re.match(rf"{pad}\S", lines[i]):
            if not re.match(rf"{pad}(newName|newTag|digest):", lines[i]):
                out.append(lines[i])
            i += 1
        if (name := images.new_name(image)) is not None:
            out.append(f"{pad}newName: {name}\n")
        out.append(f'{pad}newTag: "{images.tag}"\n')
    new = "".join(out)
    _check_retagged(text, new, images, where)
    return new


def names_an_image(kustomization: str) -> bool:
    """Whether a kustomization's text has an `images:` entry of one of the project's images."""
    defaults = {f"{DEFAULT_REGISTRY}/{image}" for image in IMAGES}
    return any(
        (m := _ENTRY.match(line)) is not None and m["name"] in defaults
        for line in kustomization.splitlines()
    )


class _UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        if len(keys) != len(set(map(str, keys))):
            raise yaml.constructor.ConstructorError(
                None, None, "a key is given twice in one mapping", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def _check_retagged(old: str, new: str, images: ImageSet, where: str) -> None:
    """The rewrite changed exactly the project's `images:` entries, and to what was asked."""
    if DEFAULT_REGISTRY not in old:
        return  # names none of the project's images
    try:
        before = yaml.load(old, Loader=_UniqueKeys)
        after = yaml.load(new, Loader=_UniqueKeys)
    except yaml.YAMLError as exc:
        raise UserError(f"cannot read {where}: {' '.join(str(exc).split())}") from None
    expected = dict(before) if isinstance(before, dict) else before
    if isinstance(expected, dict) and isinstance(expected.get("images"), list):
        expected["images"] = [_expected_entry(e, images) for e in expected["images"]]
    if after != expected:
        raise UserError(
            f"cannot set the images in {where}: an `images:` entry of a kfp-automl image is not "
            "in block style (`- name: ...` with newName/newTag under it); edit it by hand"
        )


def _expected_entry(entry: Any, images: ImageSet) -> Any:
    defaults = {f"{DEFAULT_REGISTRY}/{image}": image for image in IMAGES}
    if not isinstance(entry, dict) or entry.get("name") not in defaults:
        return entry
    image = defaults[entry["name"]]
    out = {k: v for k, v in entry.items() if k not in ("newName", "newTag", "digest")}
    if (name := images.new_name(image)) is not None:
        out["newName"] = name
    out["newTag"] = images.tag
    return out


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise UserError(
            "kubectl is needed to render the serving manifests (kubectl kustomize); install it"
        )
    return path


def render(directory: Path) -> str:
    """What `kubectl kustomize directory` prints."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise UserError(f"kubectl kustomize {directory.name} failed: {first}")
    return done.stdout


def _layout(root: Path) -> None:
    for need in (
        Path("manifests") / PROD_OVERLAY / "kustomization.yaml",
        RENDERED.parent,
        COMPILED,
    ):
        if not (root / need).exists():
            raise UserError(
                f"{root} is not a kfp-automl checkout (no {need}): run this in the repository, "
                "or pass --root"
            )


def planned_files(root: Path, images: ImageSet) -> dict[Path, str]:
    """Every file `set_images` writes (relative to `root`) and its new text, written nowhere."""
    from kfp_automl.pipelines.compile import compile_all

    _layout(root)
    kubectl()
    planned: dict[Path, str] = {}
    with tempfile.TemporaryDirectory(prefix="kfp-automl-images-") as tmp:
        stage = Path(tmp) / "manifests"
        shutil.copytree(root / "manifests", stage, symlinks=True)
        for path in sorted(stage.rglob("kustomization.yaml")):
            rel = Path("manifests") / path.relative_to(stage)
            text = path.read_text()
            new = retag_kustomization(text, images, str(rel))
            if new != text or names_an_image(text):
                path.write_text(new)
                planned[rel] = new
        planned[RENDERED] = RENDERED_HEADER + render(stage / PROD_OVERLAY)
        components = images.ref("components")
        image = None if components == COMPONENTS_IMAGE else components  # the default compile
        for path in compile_all(Path(tmp) / "compiled", image=image):
            planned[COMPILED / path.name] = path.read_text()
    return planned


def set_images(root: str | Path, images: ImageSet) -> list[tuple[Path, bool]]:
    """Point the compiled pipeline, the kustomizations and the rendered serving manifests under
    `root` at `images`; (file, whether it changed) for each file that names an image."""
    root = Path(root)
    planned = planned_files(root, images)
    result = []
    for rel, text in planned.items():
        target = root / rel
        changed = not target.exists() or target.read_text() != text
        if changed:
            with atomic_path(target) as tmp:
                tmp.write_text(text)
        result.append((rel, changed))
    return result


@click.command(name="images")
@click.option(
    "--registry",
    default=DEFAULT_REGISTRY,
    show_default=True,
    help="Registry and path of both images, e.g. registry.example.com/team.",
)
@click.option(
    "--tag", default=__version__, show_default=True, help="Tag of both images (not latest)."
)
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="The kfp-automl repository whose files are rewritten.",
)
def images_cmd(registry: str, tag: str, root: str) -> None:
    """Point the compiled pipeline, every kustomization's `images:` and the rendered serving
    manifests at REGISTRY/components:TAG and REGISTRY/serving:TAG.

    `make images REGISTRY=... TAG=...` runs this, then builds both images with those tags;
    with no options it writes the defaults back.
    """
    images = image_set(registry, tag)
    changes = set_images(root, images)
    click.echo(f"images: {images.ref('components')}, {images.ref('serving')}")
    for rel, changed in changes:
        if changed:
            click.echo(f"  wrote {rel}")
    unchanged = sum(not changed for _, changed in changes)
    if unchanged:
        click.echo(f"  {unchanged} file(s) already named them")
