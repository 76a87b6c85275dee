"""One definition of the run parameters: the pipeline function. Everything else is derived.

The flags of `run`, `submit`, `schedule` and `retrain-trigger` come from the compiled pipeline
(kfp_automl/cli/parameters.py), the reference page from the same file (docs/generate.py), and
each component's defaults must agree with the pipeline's for the parameters it is fed.
"""

from __future__ import annotations

import inspect
import json

import pytest

from kfp_automl.cli import parameters as cli_parameters
from kfp_automl.cli.main import cli
from kfp_automl.cli.parameters import CHOICES, flag_name, given, parameters

COMMANDS = ("run", "submit", "schedule", "retrain-trigger")


def _flags(command: str) -> dict[str, str]:
    """flag -> help text of a command's options."""
    out = {}
    for param in cli.commands[command].params:
        for opt in getattr(param, "opts", []):
            out[opt] = param.help or ""
    return out


def _pipeline_signature() -> dict[str, inspect.Parameter]:
    from kfp_automl.pipelines.training import training

    return dict(inspect.signature(training.pipeline_func).parameters)


def test_the_compiled_parameters_are_the_pipeline_functions():
    declared = parameters()
    signature = _pipeline_signature()
    assert set(declared) == set(signature)
    for name, p in signature.items():
        assert declared[name].default == p.default, name
        assert declared[name].description, f"{name} has no description in the docstring"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_pipeline_parameter_is_a_flag_with_the_pipelines_help(command):
    flags = _flags(command)
    for p in parameters().values():
        name = flag_name(p)
        assert name in flags, f"`{command}` has no {name} for the parameter {p.name}"
        assert p.description.split(" (")[0].rstrip(".") in flags[name], (name, flags[name])


def test_choices_are_the_codes_own():
    from kfp_automl.components.prepare.prepare import TASKS
    from kfp_automl.components.tune.search import ALGORITHMS
    from kfp_automl.components.tune.validation import KINDS

    assert CHOICES == {"task": TASKS, "search_algorithm": ALGORITHMS, "validation": KINDS}


def test_the_families_help_names_every_family():
    from kfp_automl.components.tune.families import FAMILIES

    help_text = parameters()["families"].description
    named = help_text.split("(")[1].split(")")[0]
    assert [n.strip() for n in named.split(",")] == list(FAMILIES)


def _tasks() -> dict:
    import yaml

    spec = next(yaml.safe_load_all(cli_parameters.PIPELINE.read_text()))
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():  # tasks inside the dsl.If branches
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_every_component_default_is_the_pipelines_where_the_pipeline_feeds_it():
    """A component parameter fed by a pipeline parameter has the pipeline's default, so calling
    a component on its own (its python_func, a test) behaves as the pipeline does."""
    from kfp_automl.pipelines import training as module

    pipeline = _pipeline_signature()
    components = {
        c.name: c
        for c in (
            module.fingerprint_inputs,
            module.prepare_data,
            module.tune_models,
            module.evaluate_model,
            module.package_model,
            module.gate_model,
            module.promote_model,
            module.deploy_model,
        )
    }
    checked = 0
    for task in _tasks().values():
        name = task.get("componentRef", {}).get("name", "").removeprefix("comp-")
        if name not in components:
            continue
        signature = inspect.signature(components[name].python_func).parameters
        for arg, source in task.get("inputs", {}).get("parameters", {}).items():
            fed_by = source.get("componentInputParameter")
            if arg.startswith("pipelinechannel--"):  # what KFP adds for set_cpu_limit(<param>)
                continue
            if fed_by in pipeline and signature[arg].default is not inspect.Parameter.empty:
                assert signature[arg].default == pipeline[fed_by].default, (name, arg)
                checked += 1
    assert checked >= 20


def test_fractions_reach_the_prepare_step():
    """valid_fraction and test_fraction were component parameters no run could set."""
    wired = _tasks()["prepare-data"]["inputs"]["parameters"]
    for name in ("valid_fraction", "test_fraction"):
        assert wired[name]["componentInputParameter"] == name


def test_flags_become_pipeline_arguments():
    from click.testing import CliRunner

    seen = {}

    import click

    @click.command()
    @cli_parameters.pipeline_options(show_defaults=False)
    def probe(**kw):
        seen.update(given(kw))

    result = CliRunner().invoke(
        probe,
        ["--no-ensemble", "--drop", "a,b", "--drop", "c", "--time-budget", "30", "--seed", "7"],
    )
    assert result.exit_code == 0, result.output
    assert seen == {
        "ensemble": False,
        "drop_columns": json.dumps(["a", "b", "c"]),
        "time_budget_s": 30,
        "seed": 7,
    }


def test_run_shows_the_pipelines_defaults_and_the_cluster_commands_send_only_what_is_given():
    run = {p.name: p for p in cli.commands["run"].params}
    submit = {p.name: p for p in cli.commands["submit"].params}
    assert run["param_time_budget_s"].default == 120 and run["param_task"].default == "auto"
    assert submit["param_time_budget_s"].default is None and submit["param_task"].default is None
