"""The `kfp-automl` command line.

User mistakes (bad path, unknown column, bad flag) end with one line
`error: ...` on stderr and exit code 2, before any Ray or BentoML work.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from kfp_automl import __version__
from kfp_automl.cli import cluster as cluster_cli
from kfp_automl.cli import retrain as retrain_cli
from kfp_automl.cli.feedback import export_feedback, prediction_log_options, prediction_log_settings
from kfp_automl.cli.prepare_options import prepare_options
from kfp_automl.errors import PipelineFailed, UserError

DEFAULT_OUTPUT = "automl-output"


def _prog() -> str:
    """How the user can call this CLI again: `kfp-automl` if on PATH, else the venv's script."""
    if shutil.which("kfp-automl"):
        return "kfp-automl"
    script = Path(sys.executable).with_name("kfp-automl")
    return os.path.relpath(script) if script.exists() else "kfp-automl"


def _fmt_seconds(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kfp-automl")
def cli() -> None:
    """Tabular AutoML on Kubeflow Pipelines, runnable on one machine."""


@cli.command()
@click.option(
    "--data",
    default="",
    help="Table to learn from: CSV, TSV, Parquet or JSON Lines, path or URL. Default: the built-in churn table.",
)
@click.option(
    "--target", default="", help="Column to predict. Default with the built-in table: churn."
)
@click.option(
    "--task",
    type=click.Choice(["auto", "classification", "regression"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--metric",
    default="",
    help="Metric to optimise (default: roc_auc for binary, f1_macro for multiclass, rmse for regression).",
)
@click.option(
    "--families",
    default="",
    help="Comma-separated model families (default: all of linear, random_forest, extra_trees, hist_gb).",
)
@click.option(
    "--time-budget",
    "time_budget",
    type=click.IntRange(min=10),
    default=60,
    show_default=True,
    help="Wall-clock seconds for the tune step (Ray start included).",
)
@click.option(
    "--max-trials",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Stop the search after this many trials (0: time budget only).",
)
@click.option(
    "--output",
    "output",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Directory for summary.json, report, leaderboard and Bento archive.",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--model-name", default="", help="BentoML model/Bento name (default: automl-<target>)."
)
@click.option(
    "--ray-address", default="", help="Join this Ray cluster instead of starting Ray locally."
)
@click.option(
    "--search-algorithm",
    type=click.Choice(["tpe", "random", "grid"]),
    default="tpe",
    show_default=True,
    help="How the tune step picks configurations: Optuna TPE, random, or a grid.",
)
@click.option(
    "--validation",
    type=click.Choice(["auto", "cv", "holdout"]),
    default="auto",
    show_default=True,
    help="Per-trial validation: auto is 5-fold CV up to 10,000 rows, else the holdout.",
)
@click.option(
    "--warm-start",
    default="",
    help="A previous leaderboard.csv (path or URL): its best configurations are tried first.",
)
@click.option("--no-ensemble", is_flag=True, help="Never ship an ensemble of the top trials.")
@click.option("--no-early-stopping", is_flag=True, help="Run every trial to its full budget.")
@click.option("-v", "--verbose", is_flag=True, help="Show every log line, not just progress.")
@prepare_options
def run(
    data,
    target,
    task,
    metric,
    families,
    time_budget,
    max_trials,
    output,
    seed,
    model_name,
    ray_address,
    search_algorithm,
    validation,
    warm_start,
    no_ensemble,
    no_early_stopping,
    verbose,
    **prepare_flags,
):
    """Run the training pipeline locally (kfp.local, no cluster, no Docker)."""
    from kfp_automl.cli.prepare_options import prepare_params
    from kfp_automl.components.prepare.prepare import prepare, validate
    from kfp_automl.components.tune.families import select_families
    from kfp_automl.pipelines.local import run_pipeline
    from kfp_automl.runtime.metrics import resolve_metric
    from kfp_automl.tables.io import DEFAULT_DATASET, DEFAULT_TARGET, read_table

    if not data:
        if target and target != DEFAULT_TARGET:
            raise UserError(
                f"--target {target!r} needs --data; the built-in table's target is {DEFAULT_TARGET!r}"
            )
        data, target = str(DEFAULT_DATASET), DEFAULT_TARGET
    elif not target:
        raise UserError("--target is required with --data")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {output!r} exists and is not a directory")
    # Validate everything up front: a user mistake must not cost a Ray start or leave outputs behind.
    click.echo(f"checking {data}")
    df = read_table(data)
    prep_params, options = prepare_params(prepare_flags)
    prepare(df, target, task, seed, options=options)  # every table/flag mistake, before any work
    rows, resolved, _ = validate(df, target, task)
    n_classes = int(rows[target].nunique()) if resolved == "classification" else 0
    chosen = resolve_metric(metric, resolved, n_classes)
    if chosen.name == "mape" and (rows[target] == 0).any():
        raise UserError(f"--metric mape is not defined: target {target!r} has rows equal to 0")
    select_families(families)
    if warm_start:
        from kfp_automl.components.tune.warm_start import read_leaderboard

        read_leaderboard(warm_start)
        if "://" not in warm_start:
            warm_start = str(Path(warm_start).resolve())
    click.echo(
        f"{resolved} on {target!r}: {len(df)} rows, {df.shape[1] - 1} columns; metric {chosen.name}; "
        f"search budget {time_budget}s"
    )
    if data != str(DEFAULT_DATASET) and "://" not in data:
        data = str(Path(data).resolve())
    params = dict(
        data=data,
        target=target,
        task=task,
        metric=chosen.name,
        families=families,
        time_budget_s=time_budget,
        max_trials=max_trials,
        seed=seed,
        ray_address=ray_address,
        model_name=model_name,
        **prep_params,
        search_algorithm=search_algorithm,
        validation=validation,
        warm_start=warm_start,
        ensemble=not no_ensemble,
        early_stopping=not no_early_stopping,
    )
    s = run_pipeline(params, out, verbose=verbose)
    click.echo("")
    click.echo(
        f"done in {_fmt_seconds(s['elapsed_s'])}: {s['task']} on {s['target']!r}, {s['n_trials']} trials"
    )
    click.echo(
        f"  best model   {s['best_model']}  {s['metric']}: validation {s['cv_score']:.4f}, test {s['test_score']:.4f}"
    )
    click.echo(f"  leaderboard  {s['leaderboard_csv']}")
    click.echo(f"  report       {s['report_html']}")
    click.echo(f"  data report  {s['data_report_html']}")
    click.echo(f"  search       {s['search_report_html']}")
    click.echo(f"  bento        {s['bento_tag']}  ({s['bento_archive']})")
    stage = "champion" if s["deploy"] else "challenger"
    click.echo(f"  gate         {stage}: {s['gate_reason']}")
    click.echo(f"  summary      {out.resolve() / 'summary.json'}")
    click.echo(f"next: {_prog()} serve --model {s['bento_tag']}")


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
def predict(model, data, output):
    """Score a table with a packaged model (batch)."""
    from kfp_automl.bentos.lookup import load_packaged_model
    from kfp_automl.bentos.scoring import score_table
    from kfp_automl.tables.io import read_table, table_format, write_table

    table_format(output)  # a bad output name fails before any work
    df = read_table(data)
    packaged = load_packaged_model(model)
    result = score_table(df, packaged)
    write_table(result, output)
    click.echo(f"wrote {len(result)} predictions to {output} (model {packaged.model_tag})")


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
@prediction_log_options
def serve(
    model,
    port,
    host,
    workers,
    reject_unknown_fields,
    no_monitoring,
    max_body_mb,
    max_latency_ms,
    **log,
):
    """Serve a packaged model over HTTP with BentoML.

    POST /predict with {"records": [...]}; GET /metrics (Prometheus), /livez, /readyz;
    POST /feedback with {"labels": [...]} when predictions are logged.
    """
    from kfp_automl.bentos.lookup import resolve_bento

    bento = resolve_bento(model)
    # read by the service (kfp_automl/serving/service.py, ServiceArgs)
    settings = {
        "AUTOML_WORKERS": str(workers),
        "AUTOML_UNKNOWN_FIELDS": "reject" if reject_unknown_fields else "ignore",
        "AUTOML_MONITORING": str(not no_monitoring).lower(),
        "AUTOML_MAX_BODY_BYTES": str(int(max_body_mb * 1024 * 1024)),
        "AUTOML_MAX_LATENCY_MS": str(max_latency_ms),
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
    }
    for key, flag in flag_of.items():
        if key in os.environ and ctx.get_parameter_source(flag) is default:
            del settings[key]
    bentoml_bin = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml_bin), "serve", str(bento.tag), "--host", host, "--port", str(port)]
    click.echo(f"serving {bento.tag} on http://{host}:{port} (POST /predict); Ctrl-C stops it")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, {**os.environ, **settings})


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
    """Make VERSION (NAME:VERSION) the champion; the current champion is archived."""
    from kfp_automl.registry.registry import Registry

    n, v = _split_ref(version, name)
    entry = Registry(registry or None).promote(n, v, reason)
    click.echo(f"{n}:{v} is the champion (before: {entry['previous'] or 'none'})")


@cli.command()
@click.option("--name", default="", help="Model name (default: the only registered model).")
@click.option("--reason", default="rolled back by hand", show_default=True)
@_registry_option
def rollback(name, reason, registry):
    """Make the previous champion the champion again."""
    from kfp_automl.registry.registry import Registry

    reg = Registry(registry or None)
    names = _model_names(reg, name)
    if len(names) != 1:
        raise UserError(f"pass --name: the registry holds {len(names)} models ({', '.join(names)})")
    entry = reg.rollback(names[0], reason)
    click.echo(f"{names[0]}:{entry['version']} is the champion again (was: {entry['previous']})")


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

cli.add_command(deploy_cmd)
cli.add_command(cluster_cli.submit)
cli.add_command(cluster_cli.schedule)
cli.add_command(retrain_cli.command)

from kfp_automl.cli.fetch import fetch_bento  # noqa: E402

cli.add_command(fetch_bento)
cli.add_command(export_feedback)


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
