"""pipelines/local.py: ConsoleFilter (everything to run.log, only progress to the console), and
the local run without retries."""

from __future__ import annotations

import io
import re

from kfp_automl.pipelines.local import ConsoleFilter
from kfp_automl.progress import PREFIX

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


# kfp.local's log lines (logging_utils: task names in cyan, status in green/red)
def started(task: str) -> str:
    return f"12:00:01.123 - INFO - Executing task {CYAN}'{task}'{RESET}\n"


def finished(task: str, status: str = "SUCCESS") -> str:
    colour = GREEN if status == "SUCCESS" else RED
    return f"12:00:09.456 - INFO - Task {CYAN}'{task}'{RESET} finished with status {colour}{status}{RESET}\n"


def make(verbose: bool = False) -> tuple[ConsoleFilter, io.StringIO, io.StringIO]:
    log, console = io.StringIO(), io.StringIO()
    return ConsoleFilter(log, console, verbose), log, console


def test_kfp_line_format_matches_what_kfp_local_prints():
    # keep the hand-written lines above honest against the installed kfp
    from kfp.local import logging_utils, status

    assert started("prepare-data").endswith(
        f"Executing task {logging_utils.format_task_name('prepare-data')}\n"
    )
    assert finished("prepare-data", "FAILURE").endswith(
        f"Task {logging_utils.format_task_name('prepare-data')} finished with status "
        f"{logging_utils.format_status(status.Status.FAILURE)}\n"
    )


def test_everything_goes_to_log_only_progress_and_steps_to_console():
    filt, log, console = make()
    text = (
        started("prepare-data")
        + "12:00:01.200 - INFO - Streamed logs:\n\n"
        + "    some library chatter\n"
        + f"    {PREFIX}prepare: reading data.csv\n"
        + "    WARNING: a deprecation warning\n"
        + f"    {PREFIX}prepare: 3 features\n"
        + finished("prepare-data")
        + "12:00:09.500 - INFO - Task 'prepare-data' outputs:\n"
        + started("tune-models")
    )
    assert filt.write(text) == len(text)
    assert log.getvalue() == text  # byte for byte, colours included
    lines = console.getvalue().splitlines()
    assert lines[0] == "step prepare ..."
    assert lines[1:3] == ["  prepare: reading data.csv", "  prepare: 3 features"]
    assert re.fullmatch(r"step prepare done in \d+\.\ds", lines[3])
    assert lines[4] == "step tune ..."
    assert len(lines) == 5
    out = console.getvalue()
    assert "chatter" not in out and "WARNING" not in out and "outputs" not in out
    assert "\x1b" not in out
    assert filt.failed_step is None


def test_unknown_task_name_is_shown_as_is():
    filt, _, console = make()
    filt.write(started("custom-step") + finished("custom-step"))
    lines = console.getvalue().splitlines()
    assert lines[0] == "step custom-step ..."
    assert lines[1].startswith("step custom-step done in ")


def test_partial_lines_written_in_pieces():
    filt, log, console = make()
    line = f"    {PREFIX}tune: trial 3 of 10\n"
    pieces = [line[:3], line[3:9], line[9:20], line[20:-1]]
    for piece in pieces:
        filt.write(piece)
        assert console.getvalue() == ""  # nothing shown before the line is complete
    filt.write("\n" + f"{PREFIX}tu")
    assert console.getvalue() == "  tune: trial 3 of 10\n"
    filt.write("ne: done\nnoise\n")
    assert console.getvalue() == "  tune: trial 3 of 10\n  tune: done\n"
    assert log.getvalue() == line + f"{PREFIX}tune: done\nnoise\n"


def test_kfp_line_split_inside_colour_code():
    filt, _, console = make()
    text = started("evaluate-model")
    cut = text.index("\x1b") + 2  # in the middle of the escape sequence
    filt.write(text[:cut])
    filt.write(text[cut:])
    assert console.getvalue() == "step evaluate ...\n"


def test_ansi_codes_are_stripped_for_matching():
    filt, _, console = make()
    filt.write(f"{GREEN}{PREFIX}{RESET}package: built {CYAN}kfp-automl:abc{RESET}\n")
    assert console.getvalue() == "  package: built kfp-automl:abc\n"


def test_failure_status_sets_failed_step():
    filt, _, console = make()
    filt.write(started("prepare-data") + finished("prepare-data"))
    assert filt.failed_step is None
    filt.write(started("tune-models") + finished("tune-models", "FAILURE"))
    assert filt.failed_step == "tune"
    assert re.search(r"^step tune failed in \d+\.\ds$", console.getvalue(), re.M)


def test_tracebacks_stay_in_the_log():
    filt, log, console = make()
    text = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    kfp_automl.errors.UserError: target column 'x' not found\n"
    )
    filt.write(text)
    assert log.getvalue() == text and console.getvalue() == ""


def test_verbose_shows_every_raw_line_once():
    filt, log, console = make(verbose=True)
    text = started("prepare-data") + f"{PREFIX}prepare: hi\n" + "chatter\n"
    filt.write(text)
    assert console.getvalue() == text
    assert log.getvalue() == text


def test_a_local_run_retries_no_step_and_the_pipeline_keeps_its_retries():
    """kfp.local honours retryPolicy (30 s backoff, doubling): a local run drops it, so a step
    that fails on a user's mistake fails once; the cluster's pipeline keeps every policy."""
    from kfp_automl.pipelines.local import without_retries
    from kfp_automl.pipelines.training import RETRIES, training

    def policies(pipeline) -> dict[str, int]:
        spec = pipeline.pipeline_spec
        dags = [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]
        return {
            name: task.retry_policy.max_retry_count
            for dag in dags
            for name, task in dag.tasks.items()
            if task.HasField("retry_policy")
        }

    before = policies(training)
    assert sorted(before.values()) == sorted(RETRIES.values())  # the deploy branch's included
    assert policies(without_retries(training)) == {}
    assert policies(training) == before
