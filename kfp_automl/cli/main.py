"""The `kfp-automl` command line.

User mistakes (bad path, unknown column, bad flag) end with one line
`error: ...` on stderr and exit code 2, before any Ray or BentoML work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kfp_automl import __version__
from kfp_automl.cli import cluster as cluster_cli
from kfp_automl.cli import retrain as retrain_cli
from kfp_automl.cli import train
from kfp_automl.cli.feedback import export_feedback, prediction_log_options, prediction_log_settings
from kfp_automl.errors import PipelineFailed, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kfp-automl")
def cli() -> None:
    """Tabular AutoML on Kubeflow Pipelines, runnable on one machine."""


@cli.command()
@click.option(
    "--model", "model", required=True, help="Bento tag (name:version or name) or a .bento archive."
)
@click.option("--data", required=True, help="Table to score (CSV, TSV, Parquet or JSON Lines).")
@click.option(
    "--output",
    required=True,
    help="Where to write the input columns plus prediction (and proba_<class>).",
)
@click.option(
    "--sha256",
    "sha256",
    default="",
    help="With a .bento archive: its SHA-256 as recorded (default: the registry's record).",
)
@click.option(
    "--raw-csv",
    is_flag=True,
    help="Write CSV/TSV cells as they are: by default a cell starting with = + - @ tab or CR "
    "(a spreadsheet formula) gets a leading single quote.",
)
def predict(model, data, output, sha256, raw_csv):
    """Score a table with a packaged model (batch)."""
    from kfp_automl.bentos.lookup import load_packaged_model
    from kfp_automl.bentos.scoring import score_table
    from kfp_automl.tables.io import read_table, table_format, write_table

    table_format(output)  # a bad output name fails before any work
    df = read_table(data)
    packaged = load_packaged_model(model, sha256)
    result = score_table(df, packaged)
    write_table(result, output, raw_csv=raw_csv)
    click.echo(f"wrote {len(result)} predictions to {output} (model {packaged.model_tag})")


def _server_limit_options(f):
    """`serve`'s limits for slow and greedy clients (kfp_automl/serving/http_limits.py)."""
    from kfp_automl.serving.limits import ServerLimits

    seconds = click.FloatRange(min=0.1)
    options = [
        click.option(
            "--header-timeout",
            type=seconds,
            default=ServerLimits.header_timeout_s,
            show_default=True,
            help="Seconds a client has to send a request's headers; then 408 and the close.",
        ),
        click.option(
            "--body-idle-timeout",
            type=seconds,
            default=ServerLimits.body_idle_timeout_s,
            show_default=True,
            help="Seconds a request body may pause between bytes; then 408 and the close.",
        ),
        click.option(
            "--body-timeout",
            type=seconds,
            default=ServerLimits.body_timeout_s,
            show_default=True,
            help="Seconds a client has to send a whole request body after its headers.",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=ServerLimits.max_connections,
            show_default=True,
            help="Open connections per worker; requests on more get 503 (health and metrics "
            "excepted).",
        ),
        click.option(
            "--keep-alive",
            type=seconds,
            default=ServerLimits.keep_alive_s,
            show_default=True,
            help="Seconds an idle connection stays open between requests; keep it above the "
            "idle timeout of a proxy in front.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_LIMIT_VARIABLES = {
    "AUTOML_HEADER_TIMEOUT_S": ("header_timeout_s", float),
    "AUTOML_BODY_IDLE_TIMEOUT_S": ("body_idle_timeout_s", float),
    "AUTOML_BODY_TIMEOUT_S": ("body_timeout_s", float),
    "AUTOML_MAX_CONNECTIONS": ("max_connections", int),
    "AUTOML_KEEP_ALIVE_S": ("keep_alive_s", float),
}


def _env_int(environ: dict[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise UserError(f"{key}={environ[key]!r} is not a whole number") from None


def _check_server_limits(environ: dict[str, str]) -> None:
    """The limits the workers will read, checked here: a bad one would fail every worker."""
    from kfp_automl.serving.limits import ServerLimits

    values: dict[str, float | int] = {}
    for key, (field, kind) in _LIMIT_VARIABLES.items():
        if key in environ:
            try:
                values[field] = kind(environ[key])
            except ValueError:
                what = "whole number" if kind is int else "number"
                raise UserError(f"{key}={environ[key]!r} is not a {what}") from None
    try:
        ServerLimits(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UserError(f"serving limits: {exc}") from None


@cli.command()
@click.option(
    "--model", "model", required=True, help="Bento tag (name:version or name) or a .bento archive."
)
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 exposes the service to the network.",
)
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes."
)
@click.option(
    "--reject-unknown-fields",
    is_flag=True,
    help="Answer 400 to records with fields the model does not use (default: ignore them).",
)
@click.option("--no-monitoring", is_flag=True, help="Do not count requests into drift metrics.")
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0.001),
    default=8.0,
    show_default=True,
    help="Larger request bodies get 413.",
)
@click.option(
    "--max-latency-ms",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Records still waiting for their batch after this get 503; raise it for large requests "
    "to a slow model.",
)
@click.option(
    "--sha256",
    "sha256",
    envvar="BENTO_SHA256",
    default="",
    help="With a .bento archive: its SHA-256 as recorded (default: $BENTO_SHA256, which the "
    "deploy step sets in the serving pod, else the registry's record).",
)
@_server_limit_options
@prediction_log_options
def serve(
    model,
    sha256,
    port,
    host,
    workers,
    reject_unknown_fields,
    no_monitoring,
    max_body_mb,
    max_latency_ms,
    header_timeout,
    body_idle_timeout,
    body_timeout,
    max_connections,
    keep_alive,
    **log,
):
    """Serve a packaged model over HTTP with BentoML.

    POST /predict with {"records": [...]}; GET /metrics (Prometheus), /livez, /readyz,
    /status ("ok", or "degraded" while the prediction log cannot be written); POST /feedback
    with {"labels": [...]} when predictions are logged.
    """
    from kfp_automl.bentos.lookup import check_servable, resolve_bento
    from kfp_automl.registry.store import bentoml_home
    from kfp_automl.serving.startup import PROMETHEUS_DIR, check_model, prepare_prometheus_dir

    bento = resolve_bento(model, sha256)
    check_servable(bento)
    check_model(bento)  # a model that cannot load: this line, not a worker restart loop
    # read by the service (kfp_automl/serving/service.py, ServiceArgs)
    settings = {
        "AUTOML_WORKERS": str(workers),
        "AUTOML_UNKNOWN_FIELDS": "reject" if reject_unknown_fields else "ignore",
        "AUTOML_MONITORING": str(not no_monitoring).lower(),
        "AUTOML_MAX_BODY_BYTES": str(int(max_body_mb * 1024 * 1024)),
        "AUTOML_MAX_LATENCY_MS": str(max_latency_ms),
        "AUTOML_HEADER_TIMEOUT_S": str(header_timeout),
        "AUTOML_BODY_IDLE_TIMEOUT_S": str(body_idle_timeout),
        "AUTOML_BODY_TIMEOUT_S": str(body_timeout),
        "AUTOML_MAX_CONNECTIONS": str(max_connections),
        "AUTOML_KEEP_ALIVE_S": str(keep_alive),
        **prediction_log_settings(bento, **log),
    }
    # A flag left at its default does not override the variable already set (a pod's env).
    default = click.core.ParameterSource.DEFAULT
    ctx = click.get_current_context()
    flag_of = {
        "AUTOML_WORKERS": "workers",
        "AUTOML_UNKNOWN_FIELDS": "reject_unknown_fields",
        "AUTOML_MONITORING": "no_monitoring",
        "AUTOML_MAX_BODY_BYTES": "max_body_mb",
        "AUTOML_MAX_LATENCY_MS": "max_latency_ms",
        "AUTOML_HEADER_TIMEOUT_S": "header_timeout",
        "AUTOML_BODY_IDLE_TIMEOUT_S": "body_idle_timeout",
        "AUTOML_BODY_TIMEOUT_S": "body_timeout",
        "AUTOML_MAX_CONNECTIONS": "max_connections",
        "AUTOML_KEEP_ALIVE_S": "keep_alive",
    }
    for key, flag in flag_of.items():
        if key in os.environ and ctx.get_parameter_source(flag) is default:
            del settings[key]
    environ = {**os.environ, **settings}
    _check_server_limits(environ)
    prepare_prometheus_dir(bentoml_home() / PROMETHEUS_DIR, _env_int(environ, "AUTOML_WORKERS"))
    bentoml_bin = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml_bin), "serve", str(bento.tag), "--host", host, "--port", str(port)]
    click.echo(f"serving {bento.tag} on http://{host}:{port} (POST /predict); Ctrl-C stops it")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, environ)


@cli.command()
@click.option(
    "--model", "model", required=True, help="Bento tag (name:version or name) or a .bento archive."
)
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False), help="The new .bento archive."
)
@click.option("--name", default="", help="Model and Bento name (default: the model's own).")
def repackage(model, output, name):
    """Package a Bento's model again with this release's service (a Bento of kfp-automl 0.1).

    The model file is the same (its digest is checked), as are its schema and drift
    references; the Bento gets a new version. The registry is not changed.
    """
    from kfp_automl.components.package.package import repackage as repackage_model

    packaged = repackage_model(model, output, name)
    click.echo(f"wrote {packaged.archive} (Bento {packaged.bento_tag}, model {packaged.model_tag})")


def _registry_option(f):
    return click.option(
        "--registry",
        "registry",
        default="",
        help="Registry folder, or s3://, minio://, gs:// BUCKET/PREFIX (default: "
        "$KFP_AUTOML_REGISTRY, else beside the BentoML store).",
    )(f)


def _model_names(registry, name: str) -> list[str]:
    names = [name] if name else registry.names()
    if name and name not in registry.names():
        raise UserError(f"no model named {name!r} in the registry at {registry.root}")
    return names


@cli.command()
@click.option("--name", default="", help="Only this model (default: every model).")
@_registry_option
def models(name, registry):
    """List registered model versions with their stage and metrics."""
    from kfp_automl.registry.registry import Registry

    reg = Registry(registry or None)
    names = _model_names(reg, name)
    if not names:
        click.echo(f"no models registered yet in {reg.root}; `kfp-automl run` registers one")
        return
    for n in names:
        click.echo(n)
        for v in reversed(reg.versions(n)):
            metric = v.get("metric", "")
            test = v.get("test_metrics", {}).get(metric)
            test_s = f"{test:.4f}" if isinstance(test, float) else "-"
            valid = v.get("valid_score")
            valid_s = f"{valid:.4f}" if isinstance(valid, float) else "-"
            click.echo(
                f"  {v['version']:<18} {v['stage']:<10} {v.get('family', ''):<13} "
                f"{metric} valid {valid_s} test {test_s}  {v['registered_at']}"
            )


def _warn_unverified(ref: str, entry: dict) -> None:
    """A champion registered before archive digests were recorded cannot be checked."""
    if not entry.get("bento_sha256"):
        click.echo(
            f"warning: the registry records no archive sha256 for {ref} (registered before "
            "kfp-automl recorded digests): the gate will not import it to compare, and "
            "`deploy --champion` refuses it (deploy it with --bento URL --sha256 HEX)",
            err=True,
        )


def _split_ref(ref: str, name: str) -> tuple[str, str]:
    if ":" in ref:
        return tuple(ref.split(":", 1))  # type: ignore[return-value]
    if not name:
        raise UserError(f"give the version as NAME:VERSION or pass --name (got {ref!r})")
    return name, ref


@cli.command()
@click.argument("version")
@click.option("--name", default="", help="Model name, when VERSION is not NAME:VERSION.")
@click.option("--reason", default="promoted by hand", show_default=True)
@_registry_option
def promote(version, name, reason, registry):
    """Make VERSION (NAME:VERSION) the champion; the current champion is archived.

    This changes the registry, not what is served: `kfp-automl deploy --champion NAME` then
    rolls the serving Deployment to the champion.
    """
    from kfp_automl.cli.deploy import champion_hint
    from kfp_automl.registry.registry import Registry

    n, v = _split_ref(version, name)
    entry = Registry(registry or None).promote(n, v, reason)
    if entry["previous"] == v:
        click.echo(f"{n}:{v} was the champion already")
    else:
        click.echo(f"{n}:{v} is the champion (before: {entry['previous'] or 'none'})")
    click.echo(champion_hint(n, registry))
    _warn_unverified(f"{n}:{v}", entry)


@cli.command()
@click.option("--name", default="", help="Model name (default: the only registered model).")
@click.option("--reason", default="rolled back by hand", show_default=True)
@_registry_option
def rollback(name, reason, registry):
    """Make the previous champion the champion again.

    This changes the registry, not what is served: `kfp-automl deploy --champion NAME` then
    rolls the serving Deployment to the champion.
    """
    from kfp_automl.cli.deploy import champion_hint
    from kfp_automl.registry.registry import Registry

    reg = Registry(registry or None)
    names = _model_names(reg, name)
    if len(names) != 1:
        raise UserError(f"pass --name: the registry holds {len(names)} models ({', '.join(names)})")
    entry = reg.rollback(names[0], reason)
    click.echo(f"{names[0]}:{entry['version']} is the champion again (was: {entry['previous']})")
    click.echo(champion_hint(names[0], registry))
    _warn_unverified(f"{names[0]}:{entry['version']}", entry)


@cli.command(name="compile")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for the YAML files (default: pipelines/compiled/).",
)
@click.option(
    "--image",
    default=None,
    help="Image for every step, e.g. registry.example.com/team/components:1.2.0 "
    "(default: the project's versioned components image).",
)
def compile_cmd(output_dir, image):
    """Compile the pipelines to KFP IR YAML for a Kubeflow cluster."""
    from kfp_automl.pipelines.compile import COMPILED_DIR, compile_all

    for path in compile_all(output_dir or COMPILED_DIR, image=image):
        click.echo(f"wrote {path}")


from kfp_automl.cli.deploy import deploy_cmd  # noqa: E402 (registered below the built-in commands)

cli.add_command(train.run)
cli.add_command(deploy_cmd)
cli.add_command(cluster_cli.submit)
cli.add_command(cluster_cli.schedule)
cli.add_command(retrain_cli.command)

from kfp_automl.cli.fetch import fetch_bento  # noqa: E402
from kfp_automl.cli.images import images_cmd  # noqa: E402

cli.add_command(fetch_bento)
cli.add_command(export_feedback)
cli.add_command(images_cmd)


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps user errors to `error: ...` and exit code 2."""
    # no usage reports to vendors from a tool that may run offline (set them to opt back in)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        cli.main(args=argv, prog_name="kfp-automl", standalone_mode=False)
    except (UserError, click.UsageError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo("error: " + "; ".join(message.splitlines()), err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except PipelineFailed as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except (click.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
