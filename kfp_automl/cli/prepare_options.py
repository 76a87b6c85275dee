"""The column-role flags of `run`, `submit` and `schedule` and the schema file, as parameters.

The role flags (`--drop`, `--categorical`, `--numeric`, `--datetime`, `--text`, `--boolean`)
are pipeline parameters (kfp_automl/cli/parameters.py makes them); `--schema-file` is a
command-line convenience: the file's roles are read here and folded into the same
parameters, with the flags winning over the file.
"""

from __future__ import annotations

import json
from typing import Any

import click

from kfp_automl.cli.parameters import ROLE_COLUMNS


def schema_file_option(f):
    """Add --schema-file to a click command (it arrives as `schema_file`)."""
    return click.option(
        "--schema-file",
        default="",
        type=click.Path(dir_okay=False),
        help="YAML/JSON file of column roles: {columns: {name: role}, drop: [names]}; "
        "roles: numeric, categorical, boolean, datetime, text, drop. Flags win over it.",
    )(f)


def _names(values: tuple[str, ...] | None) -> list[str]:
    return [n.strip() for v in values or () for n in v.split(",") if n.strip()]


def prepare_params(flags: dict[str, Any]):
    """(role and split parameters, prepare Options) from the `param_*` role flags, the split
    columns and the schema file (popped from `flags`; the file is read and checked here).

    Column lists go to the pipeline as JSON arrays, so a column name may hold a comma.
    """
    from kfp_automl.components.prepare.prepare import Options

    roles = {role: _names(flags.pop(f"param_{role}_columns", ())) for role in ROLE_COLUMNS}
    options = Options(
        **roles,
        schema_file=flags.pop("schema_file", "") or "",
        time_column=flags.get("param_time_column") or "",
        group_column=flags.get("param_group_column") or "",
        drop_duplicates=bool(flags.get("param_drop_duplicates")),
    )
    merged = options.overrides().roles  # reads and checks the schema file
    lists: dict[str, list[str]] = {}
    for name, role in merged.items():
        lists.setdefault(role, []).append(name)
    params = {
        f"{role}_columns": json.dumps(lists[role]) for role in ROLE_COLUMNS if lists.get(role)
    }
    return params, options
