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
            default=512.0,
            show_default=True,
            help="Everything in --log-dir (log files and the label store) stays within this: "
            "the store's oldest predictions go beyond half of it, then the oldest rotated files. "
            "Keep it and one file per worker below the volume's size (AUTOML_LOG_VOLUME_MB).",
        ),
        click.option(
            "--log-store",
            default="",
            envvar="AUTOML_LOG_STORE",
            show_envvar=True,
            help="The label store every replica shares: a postgresql://USER:PASSWORD@HOST/DB "
            "URL (then predictions, features and labels go to PostgreSQL and nothing to "
            "--log-dir). Default: SQLite in --log-dir, for one host. Give it through the "
            "environment variable: a password in a flag shows in the process list.",
        ),
        click.option(
            "--log-store-max-rows",
            type=click.IntRange(min=1),
            default=10_000_000,
            show_default=True,
            help="With --log-store: the model's predictions in the store stay below this many "
            "(the oldest unlabelled ones go first, counted as dropped).",
        ),
        click.option(
            "--label-ttl-hours",
            type=click.FloatRange(min=0, min_open=True),
            default=168.0,
            show_default=True,
            help="Forget unlabelled predictions after this long (counted as expired).",
        ),
        click.option(
            "--feedback-auth",
            type=click.Choice(["token", "none"]),
            default="token",
            show_default=True,
            help="Who may send labels to POST /feedback: callers with a bearer token from "
            "--feedback-tokens, or none (anyone who can reach the server).",
        ),
        click.option(
            "--feedback-tokens",
            default="",
            help="A directory with one file per caller (the file's name is the caller's, each "
            "line one of its tokens), as a mounted Kubernetes Secret gives; or one such file. "
            "Read again every 10 s, so tokens rotate without a restart.",
        ),
        click.option(
            "--feedback-rate",
            type=click.FloatRange(min=0),
            default=1000.0,
            show_default=True,
            help="Labels a second each caller may send to one worker of POST /feedback (after "
            "a burst of one full request); faster gets 429 with Retry-After. 0: no limit.",
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
        "AUTOML_LOG_STORE": ("log_store", _store_url(log["log_store"])),
        "AUTOML_LOG_STORE_MAX_ROWS": ("log_store_max_rows", str(log["log_store_max_rows"])),
        "AUTOML_QUALITY_WINDOW": ("quality_window", str(log["quality_window"])),
        "AUTOML_FEEDBACK_AUTH": ("feedback_auth", log["feedback_auth"]),
        "AUTOML_FEEDBACK_TOKENS": ("feedback_tokens", _absolute(log["feedback_tokens"])),
        "AUTOML_FEEDBACK_RATE": ("feedback_rate", repr(log["feedback_rate"])),
    }
    # As for serve's other flags: one left at its default does not override a variable already
    # set (a pod's environment).
    ctx = click.get_current_context(silent=True)
    default = click.core.ParameterSource.DEFAULT
    out = {
        key: value
        for key, (flag, value) in settings.items()
        if not (key in os.environ and ctx is not None and ctx.get_parameter_source(flag) is default)
    }
    effective = {**{k: v for k, v in os.environ.items() if k in settings}, **out}
    if effective["AUTOML_LOG_PREDICTIONS"] != "off":
        _check_feedback_auth(effective["AUTOML_FEEDBACK_AUTH"], effective["AUTOML_FEEDBACK_TOKENS"])
    return out


def _store_url(url: str, flag: str = "--log-store") -> str:
    """--log-store checked for its form (whether the database answers is the server's
    business: it serves while the database is away)."""
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise UserError(
            f"{flag} must be a postgresql:// URL (postgresql://USER:PASSWORD@HOST:5432/DB), "
            f"got {url.split('://')[0] + '://...' if '://' in url else 'a value without a scheme'}"
        )
    return url


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def _check_feedback_auth(auth: str, tokens: str) -> None:
    """Refuse to serve labels without a way to check who sends them; say so when unchecked."""
    from kfp_automl.serving.callers import TokenError, read_tokens

    if auth == "none":
        click.echo(
            "warning: --feedback-auth none: anyone who can reach the server can label "
            "predictions on POST /feedback",
            err=True,
        )
        return
    if auth != "token":
        raise UserError(f"AUTOML_FEEDBACK_AUTH {auth!r}: use token or none")
    if not tokens:
        raise UserError(
            "logged predictions take labels only from callers with a token: pass "
            "--feedback-tokens DIR (one file per caller holding its token, e.g. a mounted "
            "Secret), or --feedback-auth none to take labels from anyone"
        )
    try:
        found, problems = read_tokens(tokens)
    except TokenError as exc:
        raise UserError(f"--feedback-tokens: {exc}") from None
    if problems:
        raise UserError(f"--feedback-tokens {tokens}: {problems[0]}")
    if not found:
        raise UserError(
            f"--feedback-tokens {tokens}: no tokens in it (one file per caller, each line a "
            "token of at least 16 characters, e.g. from `openssl rand -hex 32`)"
        )
    names = sorted(set(found.values()))
    click.echo(f"POST /feedback takes labels from {len(names)} caller(s): {', '.join(names)}")


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
    "--store",
    default="",
    envvar="AUTOML_LOG_STORE",
    show_envvar=True,
    help="Read the shared store of `serve --log-store` (a postgresql:// URL) instead of --log-dir.",
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
@click.option(
    "--raw-csv",
    is_flag=True,
    help="Write CSV/TSV cells as they are: by default a cell starting with = + - @ tab or CR "
    "(a spreadsheet formula) gets a leading single quote.",
)
def export_feedback(log_dir, store, since, model, output, append_to, raw_csv):
    """Turn logged predictions and their labels into a training table.

    The table has the model's feature columns and the target column named as in
    training; `kfp-automl run --data OUTPUT --target TARGET` retrains on it.
    """
    from kfp_automl.feedback.export import export

    if store:
        _store_url(store, "--store")
    done = export(
        output,
        store=store,
        log_dir=log_dir,
        since=since,
        model=model,
        append_to_path=append_to,
        raw_csv=raw_csv,
    )
    fresh = done.fresh
    click.echo(
        f"wrote {done.rows} rows to {output}: {fresh.labelled} labelled predictions "
        f"(of {fresh.predictions} logged)" + (f" appended to {append_to}" if append_to else "")
    )
    if fresh.excluded:
        click.echo(f"  columns kept out of the log are empty: {', '.join(fresh.excluded)}")
    if fresh.skipped_lines:
        click.echo(f"  skipped {fresh.skipped_lines} unreadable log lines")
    click.echo(f"  target column {fresh.target!r}; retrain with: kfp-automl run --data {output} "
               f"--target {fresh.target}")  # fmt: skip
