"""The training pipeline's parameters as flags of `run`, `submit`, `schedule` and `retrain-trigger`.

The pipeline function (pipelines/training.py) is the one definition of every parameter: its
name, type, default and description. `make compile` writes them into
pipelines/compiled/training.yaml (a test keeps that file current), and the flags are made from
it here: a parameter added to the pipeline is a flag of every command, with the pipeline's
help text and default, and no other edit. What this module adds is how a parameter looks on
the command line when it is not simply `--<name-with-dashes>` (FLAGS), and the choices of the
parameters that have a fixed set (CHOICES; tests/cli/test_parameters.py holds them to the code).

`run` shows the pipeline's defaults. The cluster commands send only what the user gave (the
compiled defaults cover the rest), so their flags default to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import click

PIPELINE = Path(str(resources.files("kfp_automl.pipelines"))) / "compiled" / "training.yaml"
ROLE_COLUMNS = ("drop", "categorical", "numeric", "datetime", "text", "boolean")


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter, as the compiled pipeline declares it."""

    name: str
    kind: str  # STRING, NUMBER_INTEGER, NUMBER_DOUBLE or BOOLEAN
    default: Any
    description: str


@dataclass(frozen=True)
class Flag:
    """How a parameter deviates from `--<name-with-dashes>` taking one value of its type."""

    name: str = ""  # the flag, e.g. "--time-budget"
    type: Any = None  # a click type that checks more than the parameter's kind
    many: bool = False  # repeatable, comma-separated names: sent as a JSON list


FLAGS: dict[str, Flag] = {
    "time_budget_s": Flag("--time-budget", click.IntRange(min=10)),
    "max_trials": Flag(type=click.IntRange(min=0)),
    "n_bootstrap": Flag(type=click.IntRange(min=0)),
    "deploy_timeout_s": Flag(type=click.IntRange(min=1)),
    "valid_fraction": Flag(type=click.FloatRange(0, 0.5, min_open=True, max_open=True)),
    "test_fraction": Flag(type=click.FloatRange(0, 0.5, min_open=True, max_open=True)),
    **{f"{role}_columns": Flag(f"--{role}", many=True) for role in ROLE_COLUMNS},
}
CHOICES: dict[str, tuple[str, ...]] = {
    "task": ("auto", "classification", "regression"),
    "search_algorithm": ("tpe", "random", "grid"),
    "validation": ("auto", "cv", "holdout"),
}
_KINDS = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}


def parameters(pipeline: str | Path = PIPELINE) -> dict[str, Parameter]:
    """The compiled pipeline's parameters: data and target first, then by name."""
    import yaml

    with open(pipeline) as fh:
        spec = next(yaml.load_all(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    declared = spec["root"]["inputDefinitions"]["parameters"]
    out = {}
    for name in sorted(declared, key=lambda n: (n not in ("data", "target"), n)):
        d = declared[name]
        kind = d.get("parameterType", "STRING")
        default = d.get("defaultValue")
        if kind == "NUMBER_INTEGER" and default is not None:
            default = int(default)  # the IR keeps numbers as floats
        out[name] = Parameter(name, kind, default, " ".join(d.get("description", "").split()))
    return out


def flag_name(p: Parameter) -> str:
    """The flag that sets `p` (a boolean whose default is true is switched off by --no-<name>)."""
    flag = FLAGS.get(p.name, Flag())
    name = flag.name or "--" + p.name.replace("_", "-")
    if p.kind == "BOOLEAN" and p.default is True:
        return "--no-" + name.removeprefix("--")
    return name


def _option(p: Parameter, show_defaults: bool) -> Callable:
    flag = FLAGS.get(p.name, Flag())
    dest = f"param_{p.name}"
    help_text = p.description
    if p.kind == "BOOLEAN":
        on = p.default is not True
        return click.option(
            flag_name(p),
            dest,
            is_flag=True,
            flag_value=on,
            default=None,
            help=help_text if on else f"{help_text.rstrip('.')}: on unless this flag is given.",
        )
    if flag.many:
        return click.option(
            flag_name(p),
            dest,
            multiple=True,
            help=f"{help_text.split(' (')[0]} (comma-separated; repeatable).",
        )
    kind = flag.type or (click.Choice(CHOICES[p.name]) if p.name in CHOICES else _KINDS[p.kind])
    default = p.default if show_defaults else None
    return click.option(
        flag_name(p),
        dest,
        type=kind,
        default=default,
        show_default=show_defaults and default not in (None, ""),
        help=help_text,
    )


def pipeline_options(*, show_defaults: bool, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one option per pipeline parameter (but `skip`); each arrives as the
    keyword argument `param_<name>` (None: not given)."""

    def decorate(f: Callable) -> Callable:
        for p in reversed(list(parameters().values())):
            if p.name not in skip:
                f = _option(p, show_defaults)(f)
        return f

    return decorate


def given(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the `param_*` options from a command's keyword arguments: the values given, as
    pipeline parameters (role column lists as JSON arrays, so a name may hold a comma)."""
    out: dict[str, Any] = {}
    for key in [k for k in kw if k.startswith("param_")]:
        value = kw.pop(key)
        name = key.removeprefix("param_")
        if FLAGS.get(name, Flag()).many:
            names = [n.strip() for v in value or () for n in v.split(",") if n.strip()]
            if names:
                out[name] = json.dumps(names)
        elif value is not None:
            out[name] = value
    return out
