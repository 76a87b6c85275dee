"""`kfp-automl deploy`: roll a Bento out to the serving Deployment of a cluster (or print it)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from kfp_automl.components.deploy.render import DEFAULT_NAME
from kfp_automl.errors import UserError


def _bento(ref: str, version: str, dry_run: bool) -> tuple[str, str]:
    """(URL the pod fetches, version) for an archive path or URL."""
    if "://" in ref and not ref.startswith("file://"):
        if not version:
            raise UserError(f"--version is required when --bento is a URL ({ref})")
        return ref, version
    from kfp_automl.bentos.lookup import _archive_tag

    path = Path(ref.removeprefix("file://"))
    if not path.is_file():
        raise UserError(f"--bento: Bento archive not found: {ref}")
    tag_version = _archive_tag(path).split(":", 1)[1]
    if version and version != tag_version:
        raise UserError(f"--version {version!r} differs from the archive's version {tag_version!r}")
    if not dry_run:
        raise UserError(
            f"--bento {ref} is a local file the cluster cannot fetch: upload it and pass its URL "
            "(s3://, gs://, https://, ...) with --version, or use --dry-run"
        )
    return path.resolve().as_uri(), tag_version


@click.command(name="deploy")
@click.option(
    "--bento", required=True, help="The .bento archive: a URL the serving pod can fetch, or a path."
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
    help="Model version (the Bento's version); read from the archive when --bento is a file.",
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
def deploy_cmd(bento, manifests, namespace, name, version, timeout, context, dry_run):
    """Apply the serving manifests for a Bento (server-side apply) and roll back if not ready.

    Credentials: the pod's service account in a cluster, else the kubeconfig.
    """
    from kfp_automl.components.deploy.deploy import check, deploy, read_manifests
    from kfp_automl.components.deploy.render import to_yaml

    url, version = _bento(bento, version, dry_run)
    text = read_manifests(manifests)
    objects = check(text, url, version, namespace, name, manifests)  # before any API call
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
        outcome = deploy(cluster, text, url, version, namespace, name, timeout)
    finally:
        cluster.close()
    click.echo(
        f"version {outcome.version} is live in {namespace}/{name} "
        f"({len(outcome.applied)} objects applied, {outcome.elapsed_s:g}s; "
        f"before: {outcome.previous_version or 'none recorded'})"
    )
