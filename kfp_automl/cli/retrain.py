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
    "--allow-model",
    "allow_models",
    multiple=True,
    metavar="NAME[,NAME...]",
    help="A model whose alerts may start runs (repeatable, or comma-separated; required). "
    "An alert for any other model, or without a model label, is refused and counted.",
)
@click.option(
    "--allow-data-prefix",
    "data_prefixes",
    multiple=True,
    metavar="PREFIX[,PREFIX...]",
    help="A data location an alert's data_url annotation may name, e.g. "
    "s3://lake/churn/ (repeatable, or comma-separated). Without one the annotation is "
    "ignored and every run trains on --data; with some, a data_url outside them is refused.",
)
@click.option(
    "--max-runs-per-hour",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Runs started in any hour, over all models (kept in --state-dir across restarts); "
    "more alerts are refused and counted.",
)
@click.option(
    "--champion-registry",
    default=None,
    help="Registry (folder, s3://, minio://, gs:// BUCKET/PREFIX) where the trigger looks "
    "up a model's champion before a run may deploy (default: --registry-root). Needed "
    "with --deploy-namespace: a run of a model without a champion never deploys.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a request may take to send its body (408 after that).",
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
    Only alerts of the --allow-model models start runs; an alert's `data_url` annotation
    overrides --data only under an --allow-data-prefix.
    """
    import tempfile

    import uvicorn

    from kfp_automl.retrain import policy
    from kfp_automl.retrain.trigger import TriggerConfig, create_app, read_token

    models = frozenset(policy.split_values(kw.pop("allow_models")))
    if not models:
        raise UserError(
            "give --allow-model NAME for each model whose alerts may start runs "
            "(e.g. --allow-model automl-churn)"
        )
    prefixes = tuple(policy.check_prefix(p) for p in policy.split_values(kw.pop("data_prefixes")))
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
    registry = _champion_registry(kw.pop("champion_registry"), arguments)
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
        allowed_models=models,
        data_prefixes=prefixes,
        max_runs_per_hour=kw["max_runs_per_hour"],
        registry=registry,
        body_timeout_s=kw["body_timeout"],
    )
    app = create_app(config)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    click.echo(
        f"retrain trigger on http://{host}:{port}/alerts -> {conn.host} "
        f"(models {', '.join(sorted(models))}; cooldown {kw['cooldown']:g}s, at most "
        f"{kw['max_runs_per_hour']} runs an hour; data_url "
        f"{'under ' + ', '.join(prefixes) if prefixes else 'ignored'}; state in "
        f"{config.state_dir}{', caching off' if caching is False else ''})"
    )
    if registry is not None:
        click.echo(f"runs deploy only models with a champion in {registry.root}")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def _champion_registry(given: str | None, arguments: dict):
    """The registry the trigger reads champions from: needed when the runs may deploy."""
    root = given or str(arguments.get("registry_root") or "").strip()
    if not arguments.get("deploy_namespace"):
        return None
    if not root:
        raise UserError(
            "--deploy-namespace: the trigger checks that a model has a champion before its "
            "run may deploy; give --champion-registry (on a cluster: "
            "<artifact bucket>/kfp-automl-registry/<namespace>) or --registry-root"
        )
    from kfp_automl.registry.registry import Registry

    return Registry(root)
