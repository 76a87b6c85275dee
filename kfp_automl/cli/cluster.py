"""`kfp-automl submit` and `kfp-automl schedule`: runs on a Kubeflow Pipelines cluster."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from kfp_automl.cli.parameters import given, pipeline_options
from kfp_automl.cli.prepare_options import prepare_params, schema_file_option
from kfp_automl.cluster import client as cluster
from kfp_automl.errors import PipelineFailed, UserError


def connection_options(f):
    """--host, --token-file, --kube-context, --ui-url."""
    options = [
        click.option(
            "--host",
            envvar="KF_PIPELINES_ENDPOINT",
            default=None,
            help="KFP API URL, e.g. http://localhost:8080 after `kubectl port-forward "
            "-n kubeflow svc/ml-pipeline-ui 8080:80` ($KF_PIPELINES_ENDPOINT). Default: the "
            "in-cluster service, else the current kubeconfig context.",
        ),
        click.option(
            "--token-file",
            envvar=cluster.SA_TOKEN_ENV,
            default=None,
            help="File holding a bearer token (a projected service-account token); "
            f"default: {cluster.SA_TOKEN_PATH} when it exists.",
        ),
        click.option("--kube-context", default=None, help="kubeconfig context (without --host)."),
        click.option(
            "--ui-url", default=None, help="Dashboard URL for the printed link (default: --host)."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def run_options(f):
    """Where the run goes, and every pipeline parameter as a flag (kfp_automl/cli/parameters.py;
    only the flags given are sent) or as --param NAME=VALUE."""
    options = [
        click.option("--namespace", default=None, help="Profile namespace (multi-user KFP)."),
        click.option(
            "--experiment",
            default=cluster.DEFAULT_EXPERIMENT,
            show_default=True,
            help="Experiment to file the run under (created when missing).",
        ),
        click.option(
            "--pipeline",
            type=click.Path(dir_okay=False),
            default=None,
            help="Compiled pipeline YAML (default: the packaged training pipeline).",
        ),
        click.option(
            "--image",
            default=None,
            help="Compile the pipeline with this image for every step (see `compile --image`).",
        ),
        click.option(
            "--service-account", default=None, help="Kubernetes service account of the run's pods."
        ),
        click.option(
            "--cache/--no-cache",
            default=True,
            show_default=True,
            help="--cache: each step's compiled setting (prepare, tune and evaluate reuse an "
            "earlier run's outputs when their inputs, the data's version included, are the "
            "same; fingerprint, package, gate, promote and deploy always run). --no-cache: "
            "every step runs (KFP's enable_caching=False).",
        ),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="NAME=VALUE",
            help="Any pipeline parameter (repeatable), checked against the pipeline's declared "
            "parameters and types.",
        ),
    ]
    f = pipeline_options(show_defaults=False)(schema_file_option(f))
    for option in reversed(options):
        f = option(f)
    return f


def _check_run_flags(flags: dict) -> None:
    """The checks `run` makes on the same flags that need no data: metric and family names."""
    from kfp_automl.components.tune.families import select_families
    from kfp_automl.runtime.metrics import METRICS

    if flags.get("metric") and flags["metric"] not in METRICS:
        raise UserError(
            f"--metric {flags['metric']!r} is unknown; choose from {', '.join(METRICS)}"
        )
    if flags.get("families"):
        select_families(flags["families"])


def prepare(kw: dict, tmp_dir: Path) -> tuple[Path, dict]:
    """The pipeline file and the runtime arguments from the shared options (popped from `kw`)."""
    from kfp_automl.pipelines.compile import check_image, compile_pipeline

    pipeline, image = kw.pop("pipeline"), kw.pop("image")
    if pipeline and image:
        raise UserError("--image compiles the packaged pipeline; it cannot change --pipeline")
    if image:
        pipeline = compile_pipeline("training", tmp_dir / "training.yaml", image=check_image(image))
    pipeline = Path(pipeline) if pipeline else cluster.DEFAULT_PIPELINE
    role_params, _ = prepare_params(kw)  # the schema file's roles, folded into the role lists
    flags = {**given(kw), **role_params}
    _check_run_flags(flags)
    params = cluster.parse_assignments(kw.pop("params"))
    arguments = cluster.build_arguments(pipeline, flags, params)
    data = arguments.get("data", "")
    if data and "://" not in data:
        click.echo(f"note: --data {data!r} is a path: the pipeline's pods must see it", err=True)
    if not arguments.get("registry_root"):
        click.echo(
            "note: no --registry-root: the steps share the namespace's registry "
            "<artifact bucket>/kfp-automl-registry/<namespace> (every run in the namespace "
            "sees it)"
        )
    return pipeline, arguments


def enable_caching(kw: dict) -> bool | None:
    """KFP's `enable_caching` for `--cache/--no-cache` (popped from `kw`): None keeps each
    step's compiled setting (True would turn caching on for the steps that must never cache)."""
    return None if kw.pop("cache") else False


def _connection(kw: dict) -> cluster.Connection:
    return cluster.Connection(
        host=kw.pop("host"),
        token_path=kw.pop("token_file"),
        kube_context=kw.pop("kube_context"),
        ui_url=kw.pop("ui_url"),
    )


def _api_error(exc: cluster.KfpApiError) -> Exception:
    """Unreachable, refused, or a request the server rejects: the user's to fix (exit 2)."""
    if exc.status == 0 or 400 <= exc.status < 500:
        return UserError(str(exc))
    return PipelineFailed(str(exc))


def _show_arguments(arguments: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items()) or "the pipeline's defaults"


@click.command()
@connection_options
@run_options
@click.option("--run-name", default=None, help="Run name (default: kfp-automl <UTC time>).")
def submit(**kw):
    """Create a run of the training pipeline on a Kubeflow Pipelines cluster."""
    import tempfile

    conn = _connection(kw)
    run_name = kw.pop("run_name") or f"kfp-automl {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S}"
    with tempfile.TemporaryDirectory(prefix="kfp-automl-") as tmp:
        pipeline, arguments = prepare(kw, Path(tmp))
        caching = enable_caching(kw)
        click.echo(
            f"submitting {run_name!r} to {conn.where} ({_show_arguments(arguments)}"
            f"{'; caching off' if caching is False else ''})"
        )
        try:
            run = cluster.create_run(
                conn,
                arguments,
                run_name,
                experiment=kw["experiment"],
                namespace=kw["namespace"],
                pipeline=pipeline,
                service_account=kw["service_account"],
                enable_caching=caching,
            )
        except cluster.KfpApiError as exc:
            raise _api_error(exc) from None
    click.echo(f"run {run.id} created in experiment {kw['experiment']!r}")
    click.echo(f"  dashboard  {run.url or '(pass --ui-url for a link)'}")


@click.command()
@connection_options
@run_options
@click.option("--cron", required=True, help=cluster.KFP_CRON_HELP + ". Times are UTC.")
@click.option(
    "--name", "name", default="kfp-automl retraining", show_default=True, help="Recurring run name."
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="Runs of this schedule at the same time.",
)
@click.option("--catchup", is_flag=True, help="Start the runs missed while paused (default: skip).")
def schedule(**kw):
    """Create a recurring run (cron schedule) of the training pipeline."""
    import tempfile

    conn = _connection(kw)
    cron = cluster.check_cron(kw.pop("cron"))
    with tempfile.TemporaryDirectory(prefix="kfp-automl-") as tmp:
        pipeline, arguments = prepare(kw, Path(tmp))
        caching = enable_caching(kw)
        click.echo(
            f"scheduling {kw['name']!r} ({cron}) on {conn.where}"
            f"{' with caching off' if caching is False else ''}"
        )
        try:
            job = cluster.create_recurring_run(
                conn,
                arguments,
                kw["name"],
                cron,
                experiment=kw["experiment"],
                namespace=kw["namespace"],
                pipeline=pipeline,
                max_concurrency=kw["max_concurrency"],
                catchup=kw["catchup"],
                service_account=kw["service_account"],
                enable_caching=caching,
            )
        except cluster.KfpApiError as exc:
            raise _api_error(exc) from None
    click.echo(f"recurring run {job.id} created in experiment {kw['experiment']!r}")
    click.echo(f"  dashboard  {job.url or '(pass --ui-url for a link)'}")
