"""`kfp-automl run`: the training pipeline on this machine (kfp.local, no cluster, no Docker).

Every pipeline parameter is a flag (kfp_automl/cli/parameters.py); the table and the flags
are checked before the pipeline starts, so a user mistake costs no Ray start and leaves
nothing behind.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from kfp_automl.cli.parameters import given, pipeline_options
from kfp_automl.cli.prepare_options import prepare_params, schema_file_option
from kfp_automl.errors import UserError

DEFAULT_OUTPUT = "automl-output"


def prog() -> str:
    """How the user can call this CLI again: `kfp-automl` if on PATH, else the venv's script."""
    if shutil.which("kfp-automl"):
        return "kfp-automl"
    script = Path(sys.executable).with_name("kfp-automl")
    return os.path.relpath(script) if script.exists() else "kfp-automl"


def _fmt_seconds(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


@click.command()
@click.option(
    "--output",
    "output",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Directory for summary.json, report, leaderboard and Bento archive.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every log line, not just progress.")
@schema_file_option
@pipeline_options(show_defaults=True)
def run(output, verbose, **kw):
    """Run the training pipeline locally (kfp.local, no cluster, no Docker).

    With no --data it trains on the built-in churn table. Every pipeline parameter is a
    flag; the table and the flags are checked before anything starts.
    """
    from kfp_automl.components.prepare.prepare import check
    from kfp_automl.components.tune.families import select_families
    from kfp_automl.pipelines.local import run_pipeline
    from kfp_automl.runtime.metrics import resolve_metric
    from kfp_automl.tables.io import DEFAULT_DATASET, DEFAULT_TARGET, read_table

    prep_params, options = prepare_params(kw)
    params = {**given(kw), **prep_params}
    data, target = params.get("data", ""), params.get("target", "")
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
    # Check everything up front: a user mistake must not cost a Ray start or leave outputs behind.
    click.echo(f"checking {data}")
    df = read_table(data)
    checked = check(
        df,
        target,
        params["task"],
        params["seed"],
        params["valid_fraction"],
        params["test_fraction"],
        options,
    )
    n_classes = int(checked.y.nunique()) if checked.task == "classification" else 0
    chosen = resolve_metric(params["metric"], checked.task, n_classes)
    if chosen.name == "mape" and (checked.y == 0).any():
        raise UserError(f"--metric mape is not defined: target {target!r} has rows equal to 0")
    select_families(params["families"])
    if params["warm_start"]:
        from kfp_automl.components.tune.warm_start import read_leaderboard

        read_leaderboard(params["warm_start"])
        if "://" not in params["warm_start"]:
            params["warm_start"] = str(Path(params["warm_start"]).resolve())
    if params["registry_root"]:
        from kfp_automl.registry.backends import parse_root

        parse_root(params["registry_root"])
    click.echo(
        f"{checked.task} on {target!r}: {len(df)} rows, {df.shape[1] - 1} columns; "
        f"metric {chosen.name}; time budget {params['time_budget_s']}s for the whole run"
    )
    if data != str(DEFAULT_DATASET) and "://" not in data:
        data = str(Path(data).resolve())
    params.update(data=data, target=target, metric=chosen.name)
    s = run_pipeline(params, out, verbose=verbose)
    click.echo("")
    click.echo(
        f"done in {_fmt_seconds(s['elapsed_s'])} (budget {s['time_budget_s']}s): "
        f"{s['task']} on {s['target']!r}, {s['n_trials']} trials"
    )
    if s.get("step_s"):
        steps = ", ".join(
            f"{step} {seconds:.0f}s"
            + (
                f" (search {s['search_s']:.0f}s, refit {s['refit_s']:.0f}s)"
                if step == "tune"
                else ""
            )
            for step, seconds in s["step_s"].items()
            if seconds >= 0.5
        )
        click.echo(f"  time         {steps}")
    click.echo(
        f"  best model   {s['best_model']}  {s['metric']}: validation {s['cv_score']:.4f}, test {s['test_score']:.4f}"
    )
    if s.get("decision_threshold") is not None:
        click.echo(
            f"  threshold    {s['threshold_class']} at probability >= "
            f"{s['decision_threshold']:.3f} (tuned on out-of-fold predictions; the test score uses it)"
        )
    click.echo(f"  leaderboard  {s['leaderboard_csv']}")
    click.echo(f"  report       {s['report_html']}")
    click.echo(f"  data report  {s['data_report_html']}")
    click.echo(f"  search       {s['search_report_html']}")
    click.echo(f"  bento        {s['bento_tag']}  ({s['bento_archive']})")
    stage = "champion" if s["deploy"] else "challenger"
    click.echo(f"  gate         {stage}: {s['gate_reason']}")
    click.echo(f"  summary      {out.resolve() / 'summary.json'}")
    click.echo(f"next: {prog()} serve --model {s['bento_tag']}")
