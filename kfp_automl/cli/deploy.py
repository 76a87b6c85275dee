"""`kfp-automl deploy`: roll a Bento out to the serving Deployment of a cluster (or print it).

`--bento` deploys one archive (`--sha256` gives its digest; a local file's is read from it);
`--champion NAME` deploys the registry's champion of NAME (the archive URL, Bento version and
archive digest its registry entry records), which is how the served version is brought back to
the champion after `kfp-automl promote` or `rollback` changed the registry. The digest goes
into the release and the serving pod's BENTO_SHA256, which its init container checks; a
champion registered before digests were recorded is refused (deploy it with --bento and the
--sha256 of an archive you checked).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from kfp_automl.components.deploy.render import DEFAULT_NAME
from kfp_automl.errors import UserError
from kfp_automl.runtime.model_file import parse_sha256


def champion_hint(name: str, registry: str) -> str:
    """The line `promote` and `rollback` end with: they change the registry, not what is served."""
    where = f" --registry {registry}" if registry else ""
    return (
        "the served version did not change (this changes the registry only); roll the serving "
        f"Deployment to the champion with `kfp-automl deploy --champion {name}{where} "
        "--namespace NS --manifests FILE`"
    )


def _champion(name: str, registry: str, dry_run: bool) -> tuple[str, str, str, str]:
    """(URL the pod fetches, Bento version, archive sha256, NAME:VERSION) of the registry's
    champion of `name`."""
    from kfp_automl.registry.registry import Registry

    reg = Registry(registry or None)
    if name not in reg.names():
        raise UserError(f"--champion: no model named {name!r} in the registry at {reg.root}")
    champ = reg.champion(name)
    if champ is None:
        raise UserError(
            f"--champion: model {name!r} has no champion in the registry at {reg.root}; "
            f"promote a version first (`kfp-automl promote {name}:VERSION`)"
        )
    ref = f"{name}:{champ['version']}"
    url, tag = str(champ.get("bento_uri") or ""), str(champ.get("bento_tag") or "")
    if not url or ":" not in tag:
        missing = "Bento archive URL" if not url else "Bento tag"
        raise UserError(
            f"--champion: the registry records no {missing} for {ref} (registered by an earlier "
            "release); deploy its archive with --bento URL --version VERSION"
        )
    version = tag.split(":", 1)[1]
    recorded = str(champ.get("bento_sha256") or "")
    if not recorded:
        raise UserError(
            f"--champion: the registry records no archive sha256 for {ref} (registered before "
            "kfp-automl recorded digests), so the serving pod could not check it; deploy it with "
            f"--bento {url} --version {version} --sha256 HEX, the digest of an archive you checked"
        )
    digest = parse_sha256(recorded, f"the registry's sha256 for {ref}")
    if "://" in url and not url.startswith("file://"):
        return url, version, digest, ref
    path = Path(url.removeprefix("file://"))
    if not dry_run:
        raise UserError(
            f"--champion: the archive of {ref} is a local file the cluster cannot fetch ({url}, "
            "a local run's registry): upload it and deploy it with --bento URL --version "
            f"{version}, or use --dry-run"
        )
    if not path.is_file():
        raise UserError(f"--champion: the archive of {ref} is not found: {url}")
    from kfp_automl.registry.archive import verify_archive

    info = verify_archive(path, digest, url, recorded="the registry's bento_sha256")
    if info.tag != tag:
        raise UserError(f"--champion: {url} holds Bento {info.tag}, the registry records {tag}")
    return path.resolve().as_uri(), version, digest, ref


def _bento(ref: str, version: str, sha256: str, dry_run: bool) -> tuple[str, str, str]:
    """(URL the pod fetches, version, archive sha256) for an archive path or URL."""
    if "://" in ref and not ref.startswith("file://"):
        if not version:
            raise UserError(f"--version is required when --bento is a URL ({ref})")
        if not sha256:
            raise UserError(
                f"--sha256 is required when --bento is a URL ({ref}): the serving pod refuses "
                "an archive with another digest (the registry's bento_sha256, or `sha256sum` "
                "of the archive you checked)"
            )
        return ref, version, parse_sha256(sha256)
    from kfp_automl.registry.archive import verify_archive

    path = Path(ref.removeprefix("file://"))
    if not path.is_file():
        raise UserError(f"--bento: Bento archive not found: {ref}")
    info = verify_archive(path, parse_sha256(sha256) if sha256 else None, ref, recorded="--sha256")
    tag_version = info.tag.split(":", 1)[1]
    if version and version != tag_version:
        raise UserError(f"--version {version!r} differs from the archive's version {tag_version!r}")
    if not dry_run:
        raise UserError(
            f"--bento {ref} is a local file the cluster cannot fetch: upload it and pass its URL "
            "(s3://, gs://, https://, ...) with --version and --sha256, or use --dry-run"
        )
    return path.resolve().as_uri(), tag_version, info.sha256


@click.command(name="deploy")
@click.option(
    "--bento", default="", help="The .bento archive: a URL the serving pod can fetch, or a path."
)
@click.option(
    "--champion",
    "champion",
    default="",
    metavar="NAME",
    help="Deploy the registry's champion of model NAME (the archive URL and version its "
    "registry entry records) instead of --bento.",
)
@click.option(
    "--registry",
    "registry",
    default="",
    help="With --champion: registry folder, or s3://, minio://, gs:// BUCKET/PREFIX (default: "
    "$KFP_AUTOML_REGISTRY, else beside the BentoML store).",
)
@click.option(
    "--manifests",
    required=True,
    help="Rendered serving manifests (`kubectl kustomize manifests/serving/overlays/prod`).",
)
@click.option("--namespace", required=True, help="Namespace of the serving Deployment.")
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="The serving Deployment.")
@click.option(
    "--version",
    "version",
    default="",
    help="Model version (the Bento's version); read from the archive when --bento is a file, "
    "from the registry with --champion.",
)
@click.option(
    "--sha256",
    "sha256",
    default="",
    help="The archive's SHA-256 (the registry's bento_sha256); required when --bento is a URL, "
    "read from the file when it is a path, from the registry with --champion.",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for the rollout before rolling back.",
)
@click.option("--context", default="", help="kubeconfig context (default: the current one).")
@click.option(
    "--dry-run", is_flag=True, help="Print the rendered objects as YAML; contact no cluster."
)
def deploy_cmd(
    bento,
    champion,
    registry,
    manifests,
    namespace,
    name,
    version,
    sha256,
    timeout,
    context,
    dry_run,
):
    """Apply the serving manifests for a Bento (server-side apply) and roll back if not ready.

    The Bento is --bento, or with --champion NAME the registry's champion (which makes the
    served version the champion again after `promote` or `rollback`). Credentials: the pod's
    service account in a cluster, else the kubeconfig.
    """
    from kfp_automl.components.deploy.deploy import DeployError, check, deploy, read_manifests
    from kfp_automl.components.deploy.render import to_yaml

    if bool(bento) == bool(champion):
        raise UserError("give the Bento to deploy: --bento ARCHIVE or --champion NAME (one)")
    if champion and version:
        raise UserError("--version comes from the registry with --champion; leave it out")
    if champion and sha256:
        raise UserError("--sha256 comes from the registry with --champion; leave it out")
    if registry and not champion:
        raise UserError("--registry goes with --champion (where the champion is read)")
    ref = ""
    if champion:
        url, version, digest, ref = _champion(champion, registry, dry_run)
    else:
        url, version, digest = _bento(bento, version, sha256, dry_run)
    text = read_manifests(manifests)
    # before any API call
    objects = check(text, url, version, namespace, name, manifests, bento_sha256=digest)
    if dry_run:
        click.echo(to_yaml(objects), nl=False)
        return
    from kfp_automl.components.deploy.kube import ApiProblem, Cluster, api_client

    # urllib3 logs each connection retry; the outcome is reported as one line instead
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    try:
        cluster = Cluster(api_client(context))
    except ApiProblem as exc:
        raise UserError(f"deploy to {namespace}/{name}: {exc}") from None
    try:
        outcome = deploy(cluster, text, url, version, namespace, name, timeout, bento_sha256=digest)
    except DeployError as exc:
        if ref:
            raise DeployError(f"{exc}; {ref} stays the registry's champion, not served") from None
        raise
    finally:
        cluster.close()
    what = f" (the champion {ref})" if ref else ""
    click.echo(
        f"version {outcome.version}{what} is live in {namespace}/{name} "
        f"({len(outcome.applied)} objects applied, {outcome.elapsed_s:g}s; "
        f"before: {outcome.previous_version or 'none recorded'})"
    )
