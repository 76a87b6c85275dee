"""`kfp-automl retrain-trigger`: serve the Alertmanager webhook that starts training runs.

The service itself is kfp_automl/retrain/trigger.py (imported only when the command runs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from kfp_automl.cli import cluster as cluster_cli
from kfp_automl.cluster import client as cluster
from kfp_automl.errors import UserError

TOKEN_ENV = "KFP_AUTOML_TRIGGER_TOKEN"  # the same name as in kfp_automl/retrain/trigger.py


@click.command(name="retrain-trigger")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--kfp-host", required=True, help="KFP API URL, e.g. http://ml-pipeline.kubeflow:8888."
)
@click.option(
    "--kfp-token-file",
    default=None,
    help=f"Bearer token file for the KFP API (default: ${cluster.SA_TOKEN_ENV}, "
    f"else {cluster.SA_TOKEN_PATH} when it exists).",
)
@click.option("--ui-url", default=None, help="Dashboard URL for run links (default: --kfp-host).")
@cluster_cli.run_options
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default="retrain-state",
    show_default=True,
    help="Where the started runs are remembered (a volume that outlives the process).",
)
@click.option(
    "--cooldown",
    type=click.FloatRange(min=0),
    default=3600,
    show_default=True,
    help="Seconds during which a model or alert that started a run starts no other.",
)
@click.option(
    "--token-env",
    default=TOKEN_ENV,
    show_default=True,
    help="Environment variable holding the bearer token Alertmanager must send.",
)
def command(**kw):
    """Start training runs on KFP from Alertmanager alerts labelled action=retrain.

    POST /alerts (Alertmanager webhook, version 4, bearer token), GET /metrics, GET /healthz.
    An alert's `data_url` annotation overrides --data for the run it starts.
    """
    import tempfile

    import uvicorn

    from kfp_automl.retrain.trigger import TriggerConfig, create_app, read_token

    token = read_token(kw.pop("token_env"))
    conn = cluster.Connection(
        host=kw.pop("kfp_host"), token_path=kw.pop("kfp_token_file"), ui_url=kw.pop("ui_url")
    )
    if not (conn.host or "").startswith(("http://", "https://")):
        raise UserError(f"--kfp-host {conn.host!r} must start with http:// or https://")
    cluster._token_file(conn)  # a missing token file is a startup error, not a 502 later
    host, port = kw.pop("host"), kw.pop("port")
    compiled = Path(tempfile.mkdtemp(prefix="kfp-automl-trigger-"))
    pipeline, arguments = cluster_cli.prepare(kw, compiled)
    caching = cluster_cli.enable_caching(kw)
    config = TriggerConfig(
        conn=conn,
        token=token,
        state_dir=Path(kw["state_dir"]),
        cooldown_s=kw["cooldown"],
        pipeline=pipeline,
        arguments=arguments,
        experiment=kw["experiment"],
        namespace=kw["namespace"],
        service_account=kw["service_account"],
        enable_caching=caching,
    )
    app = create_app(config)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    click.echo(
        f"retrain trigger on http://{host}:{port}/alerts -> {conn.host} "
        f"(cooldown {kw['cooldown']:g}s, state in {config.state_dir}"
        f"{', caching off' if caching is False else ''})"
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
