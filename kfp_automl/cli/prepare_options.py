"""The `kfp-automl run` flags about data preparation: column roles, schema file, split."""

from __future__ import annotations

import json
from typing import Any

import click

ROLE_FLAGS = ("drop", "categorical", "numeric", "datetime", "text")


def prepare_options(f):
    """Add the preparation flags to a click command (they arrive as keyword arguments)."""
    specs = [
        click.option(
            "--schema-file",
            default="",
            type=click.Path(dir_okay=False),
            help="YAML/JSON file of column roles: {columns: {name: role}, drop: [names]}; "
            "roles: numeric, categorical, boolean, datetime, text, drop. Flags win over it.",
        ),
        click.option(
            "--group-column",
            default="",
            help="Split so that one value of this column never spans train, valid and test.",
        ),
        click.option(
            "--time-column",
            default="",
            help="Time-ordered split on this column: the latest rows are the test rows.",
        ),
    ]
    for role in reversed(ROLE_FLAGS):
        what = "Drop these columns" if role == "drop" else f"Treat these columns as {role}"
        specs.append(
            click.option(
                f"--{role}",
                f"{role}_columns",
                multiple=True,
                help=f"{what} (comma-separated; repeatable).",
            )
        )
    for spec in specs:
        f = spec(f)
    return f


def _names(values: tuple[str, ...]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def prepare_params(flags: dict[str, Any]):
    """(training pipeline parameters, prepare Options) from the flags; the schema file is folded in.

    Column lists go to the pipeline as JSON arrays, so a column name may hold a comma.
    """
    from kfp_automl.components.prepare.prepare import Options

    options = Options(
        **{role: _names(flags.get(f"{role}_columns", ())) for role in ROLE_FLAGS},
        schema_file=flags.get("schema_file", ""),
        time_column=flags.get("time_column", ""),
        group_column=flags.get("group_column", ""),
    )
    roles = options.overrides().roles  # reads and checks the schema file
    lists: dict[str, list[str]] = {}
    for name, role in roles.items():
        lists.setdefault(role, []).append(name)
    params = {
        f"{role}_columns": json.dumps(lists[role])
        for role in (*ROLE_FLAGS, "boolean")
        if lists.get(role)
    }
    params.update(
        {
            k: v
            for k, v in (
                ("time_column", options.time_column),
                ("group_column", options.group_column),
            )
            if v
        }
    )
    return params, options
