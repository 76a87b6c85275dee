"""`kfp-automl fetch-bento`: the serving pod's init step (kfp_automl/bentos/fetch.py does the work)."""

from __future__ import annotations

import time

import click

from kfp_automl.bentos.fetch import display_url, fetch


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
def fetch_bento(url: str, dest: str) -> None:
    """Copy a Bento archive from the artifact store to a local file (the serving init step)."""
    from kfp_automl.progress import say

    say("fetch-bento", f"fetching {display_url(url)}")
    start = time.monotonic()
    tag, size = fetch(url, dest)
    elapsed = time.monotonic() - start
    click.echo(f"fetched Bento {tag} ({size / 1e6:.1f} MB in {elapsed:.1f}s) to {dest}")
