"""`kfp-automl fetch-bento`: the serving pod's init step (kfp_automl/bentos/fetch.py does the work)."""

from __future__ import annotations

import time

import click

from kfp_automl.bentos.fetch import display_url, fetch
from kfp_automl.registry.archive import MAX_ARCHIVE_MB, MAX_RATIO, MAX_UNPACKED_MB, Limits


@click.command(name="fetch-bento")
@click.option(
    "--url",
    required=True,
    help="The .bento archive: a path, file://, http(s)://, s3://, minio:// or gs:// URL.",
)
@click.option(
    "--dest",
    required=True,
    type=click.Path(dir_okay=False),
    help="Local file to write (atomically), e.g. /bento/model.bento.",
)
@click.option(
    "--sha256",
    "sha256",
    envvar="BENTO_SHA256",
    default="",
    help="The archive's SHA-256 as the registry recorded it (default: $BENTO_SHA256, which the "
    "deploy step sets); an archive with another digest is refused.",
)
@click.option(
    "--max-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=MAX_ARCHIVE_MB,
    show_default=True,
    help="Largest archive to download (MB).",
)
@click.option(
    "--max-unpacked-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=MAX_UNPACKED_MB,
    show_default=True,
    help="Most the archive's members may add up to (MB).",
)
@click.option(
    "--max-ratio",
    type=click.FloatRange(min=1),
    default=MAX_RATIO,
    show_default=True,
    help="Most the members may add up to, as a multiple of the archive's size (at least 64 MB "
    "is always allowed).",
)
def fetch_bento(
    url: str, dest: str, sha256: str, max_mb: float, max_unpacked_mb: float, max_ratio: float
) -> None:
    """Copy a Bento archive from the artifact store to a local file (the serving init step).

    The archive is written only if its SHA-256 is --sha256 and it holds nothing but regular
    files and folders under relative paths, within the size limits.
    """
    from kfp_automl.progress import say

    say("fetch-bento", f"fetching {display_url(url)}")
    start = time.monotonic()
    limits = Limits(max_archive_mb=max_mb, max_unpacked_mb=max_unpacked_mb, max_ratio=max_ratio)
    info = fetch(url, dest, sha256, limits)
    elapsed = time.monotonic() - start
    click.echo(
        f"fetched Bento {info.tag} ({info.size / 1e6:.1f} MB in {elapsed:.1f}s, "
        f"sha256 {info.sha256}) to {dest}"
    )
