"""`kfp-automl export-feedback`, and the prediction-logging flags of `kfp-automl serve`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from kfp_automl.errors import UserError

DEFAULT_LOG_DIR = "prediction-logs"


def prediction_log_options(f):
    """The `serve` flags that turn prediction logging and /feedback on."""
    options = [
        click.option(
            "--log-predictions",
            type=click.Choice(["off", "sampled", "on"]),
            default="off",
            show_default=True,
            help="Log predictions (all, or a sample) so POST /feedback can join labels to them.",
        ),
        click.option(
            "--log-sample-rate",
            type=click.FloatRange(0, 1, min_open=True),
            default=0.1,
            show_default=True,
            help="Share of records logged with --log-predictions sampled.",
        ),
        click.option(
            "--log-dir",
            default=DEFAULT_LOG_DIR,
            show_default=True,
            help="Directory for the prediction log and the label store (shared by the workers).",
        ),
        click.option(
            "--log-exclude",
            default="",
            help="Comma-separated feature columns never written to the log (PII).",
        ),
        click.option(
            "--log-max-file-mb",
            type=click.FloatRange(min=0.01),
            default=64.0,
            show_default=True,
            help="Rotate a log file at this size.",
        ),
        click.option(
            "--log-max-total-mb",
            type=click.FloatRange(min=0.01),
            default=1024.0,
            show_default=True,
            help="Delete the oldest rotated log files beyond this total.",
        ),
        click.option(
            "--label-ttl-hours",
            type=click.FloatRange(min=0, min_open=True),
            default=168.0,
            show_default=True,
            help="Forget unlabelled predictions after this long (counted as expired).",
        ),
        click.option(
            "--quality-window",
            type=click.IntRange(min=1),
            default=500,
            show_default=True,
            help="Live quality metrics cover this many newest labelled predictions.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def prediction_log_settings(bento: Any, **log: Any) -> dict[str, str]:
    """The AUTOML_* environment variables for the service, checked against the model."""
    exclude = [c.strip() for c in log["log_exclude"].split(",") if c.strip()]
    if exclude:
        features = _model_features(bento)
        unknown = [c for c in exclude if c not in features]
        if unknown:
            raise UserError(
                f"--log-exclude {unknown[0]!r} is not a column of the model "
                f"(its columns: {', '.join(features)})"
            )
    settings = {
        "AUTOML_LOG_PREDICTIONS": ("log_predictions", log["log_predictions"]),
        "AUTOML_LOG_SAMPLE_RATE": ("log_sample_rate", repr(log["log_sample_rate"])),
        "AUTOML_LOG_DIR": ("log_dir", str(Path(log["log_dir"]).expanduser().resolve())),
        "AUTOML_LOG_EXCLUDE": ("log_exclude", ",".join(exclude)),
        "AUTOML_LOG_MAX_FILE_MB": ("log_max_file_mb", repr(log["log_max_file_mb"])),
        "AUTOML_LOG_MAX_TOTAL_MB": ("log_max_total_mb", repr(log["log_max_total_mb"])),
        "AUTOML_LABEL_TTL_S": ("label_ttl_hours", repr(log["label_ttl_hours"] * 3600)),
        "AUTOML_QUALITY_WINDOW": ("quality_window", str(log["quality_window"])),
    }
    # As for serve's other flags: one left at its default does not override a variable already
    # set (a pod's environment).
    ctx = click.get_current_context(silent=True)
    default = click.core.ParameterSource.DEFAULT
    return {
        key: value
        for key, (flag, value) in settings.items()
        if not (key in os.environ and ctx is not None and ctx.get_parameter_source(flag) is default)
    }


def _model_features(bento: Any) -> list[str]:
    import bentoml

    from kfp_automl.contracts.schema import Schema
    from kfp_automl.serving.files import SCHEMA_FILE

    model = bentoml.models.get((bento.info.args or {})["model_tag"])
    return Schema.read(model.path_of(SCHEMA_FILE)).names


@click.command(name="export-feedback")
@click.option(
    "--log-dir",
    default=DEFAULT_LOG_DIR,
    show_default=True,
    help="The prediction log directory of `kfp-automl serve --log-predictions`.",
)
@click.option(
    "--since",
    default="",
    help="Only predictions made since then: an ISO date/time (UTC) or an age (12h, 7d).",
)
@click.option("--model", "model", default="", help="Only this model's predictions (by name).")
@click.option("--output", required=True, help="The table to write (.parquet, .csv, .jsonl, ...).")
@click.option(
    "--append-to",
    "append_to",
    default="",
    help="The original training table: write it with the feedback rows appended.",
)
def export_feedback(log_dir, since, model, output, append_to):
    """Turn logged predictions and their labels into a training table.

    The table has the model's feature columns and the target column named as in
    training; `kfp-automl run --data OUTPUT --target TARGET` retrains on it.
    """
    from kfp_automl.feedback import export as ft
    from kfp_automl.tables.io import table_format, write_table

    table_format(output)  # a bad output name fails before any work
    since_ts = ft.parse_since(since)
    fresh = ft.feedback_table(log_dir, since_ts, model)
    if fresh.labelled == 0:
        raise UserError(
            f"no labelled predictions in {log_dir}"
            + (f" since {since}" if since else "")
            + f" ({fresh.predictions} predictions without labels); send labels to POST /feedback"
        )
    table = ft.append_to(append_to, fresh) if append_to else fresh.table
    write_table(table, output)
    click.echo(
        f"wrote {len(table)} rows to {output}: {fresh.labelled} labelled predictions "
        f"(of {fresh.predictions} logged)" + (f" appended to {append_to}" if append_to else "")
    )
    if fresh.excluded:
        click.echo(f"  columns kept out of the log are empty: {', '.join(fresh.excluded)}")
    if fresh.skipped_lines:
        click.echo(f"  skipped {fresh.skipped_lines} unreadable log lines")
    click.echo(f"  target column {fresh.target!r}; retrain with: kfp-automl run --data {output} "
               f"--target {fresh.target}")  # fmt: skip
