"""Run the training pipeline on this machine with kfp.local (no cluster, no Docker).

Each step runs as a subprocess of this one. Everything they print goes to
`DIR/run.log`; the console shows only progress lines and step status.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from kfp_automl.contracts.decision import GateDecision
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import PipelineFailed, UserError
from kfp_automl.files import atomic_path, write_json
from kfp_automl.progress import PREFIX, STEP_ERRORS_ENV, read_reports

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
STEP_NAMES = {
    "fingerprint-inputs": "fingerprint",
    "prepare-data": "prepare",
    "tune-models": "tune",
    "evaluate-model": "evaluate",
    "package-model": "package",
    "gate-model": "gate",
    "promote-model": "promote",
    "deploy-model": "deploy",
    "export-feedback": "export-feedback",
}


class ConsoleFilter(io.TextIOBase):
    """A stdout stand-in: every line to the log, progress lines also to the console."""

    def __init__(self, log: TextIO, console: TextIO, verbose: bool = False):
        self.log, self.console, self.verbose = log, console, verbose
        self._partial = ""
        self._step_started: dict[str, float] = {}
        self.took: dict[str, float] = {}  # step -> seconds, as the console shows them
        self.failed_step: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.log.write(s)
        self._partial += s
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(s)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        if self.verbose:
            self.console.write(raw + "\n")
        if PREFIX in line:
            if not self.verbose:
                self.console.write("  " + line.split(PREFIX, 1)[1] + "\n")
        elif (m := _STARTED.search(line)) is not None:
            step = STEP_NAMES.get(m.group(1), m.group(1))
            self._step_started[step] = time.monotonic()
            if not self.verbose:
                self.console.write(f"step {step} ...\n")
        elif (m := _FINISHED.search(line)) is not None:
            step = STEP_NAMES.get(m.group(1), m.group(1))
            took = time.monotonic() - self._step_started.get(step, time.monotonic())
            self.took[step] = round(self.took.get(step, 0.0) + took, 1)
            status = m.group(2).lower()
            if status != "success":
                self.failed_step = step
            if not self.verbose:
                self.console.write(
                    f"step {step} {'done' if status == 'success' else 'failed'} in {took:.1f}s\n"
                )
        self.console.flush()


def _copy(src: str | Path, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _copy_card(src: str | Path, dest: Path) -> Path:
    """The model card folder (model_card.json, model_card.md), file by file, atomically."""
    for name in ("model_card.json", "model_card.md"):
        _copy(Path(src) / name, dest / name)
    return dest / "model_card.md"


def run_pipeline(
    params: dict[str, Any], output_dir: Path, verbose: bool = False, pipeline: Any = None
) -> dict[str, Any]:
    """Run `training(**params)` (or `pipeline(**params)`, a pipeline with the training
    pipeline's outputs) locally; copy the main outputs to `output_dir`; return the summary.

    A step that fails reports why (kfp_automl.progress.reported) into a folder this run
    names in $KFP_AUTOML_STEP_ERRORS: a user mistake only a step could find becomes a
    UserError with the step's message, anything else PipelineFailed naming the step.
    """
    from kfp import local

    from kfp_automl.pipelines.training import training

    started = time.monotonic()
    output_dir.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output_dir / "pipeline_root"),
        raise_on_error=True,
    )
    log_path = output_dir / "run.log"
    with (
        open(log_path, "w") as log,
        tempfile.TemporaryDirectory(prefix="kfp-automl-errors-") as reports,
        _environ(STEP_ERRORS_ENV, reports),
    ):
        filt = ConsoleFilter(log, sys.stdout, verbose)
        try:
            with contextlib.redirect_stdout(filt), warnings.catch_warnings():
                # kfp.local's notes that resource requests and the image do not apply locally
                warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
                warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
                task = without_retries(pipeline or training)(**params)
        except Exception as exc:
            filt.flush()
            failures = read_reports(reports)
            if failures and failures[0]["user_error"]:
                raise UserError(failures[0]["message"]) from None
            if failures:
                first = failures[0]
                step = STEP_NAMES.get(first["step"], first["step"])
                what = f"{first['type']}: {first['message']}"
            else:  # it failed before or outside a step's own code (kfp.local itself)
                # with raise_on_error kfp raises "Task '...' finished with status FAILURE"
                m = _FINISHED.search(_ANSI.sub("", str(exc)))
                step = filt.failed_step or (
                    STEP_NAMES.get(m.group(1), m.group(1)) if m else "pipeline"
                )
                what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            raise PipelineFailed(f"step {step} failed: {what} (full log: {log_path})") from None
    return _summarise(task.outputs, params, output_dir, time.monotonic() - started, filt.took)


def without_retries(pipeline):
    """A copy of `pipeline` whose steps are not retried.

    kfp.local honours a task's retryPolicy, backoff included. The policies are for a
    cluster's lost pods and a store's transient errors; on one machine they would only run a
    step that failed on a user's mistake twice more, 90 s of backoff later.
    """
    local = copy.deepcopy(pipeline)
    spec = local.pipeline_spec
    dags = [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    return local


@contextlib.contextmanager
def _environ(name: str, value: str):
    """os.environ[name] = value while the block runs (the step subprocesses inherit it)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _summarise(
    outputs: dict[str, Any],
    params: dict[str, Any],
    output_dir: Path,
    elapsed: float,
    step_s: dict[str, float] | None = None,
) -> dict[str, Any]:
    model, metrics, bento = outputs["model"], outputs["metrics"], outputs["bento"]
    schema = Schema.read(outputs["schema"].path)
    decision = GateDecision.read(outputs["decision"].path)
    info = ModelInfo.from_metadata(dict(model.metadata))
    metric = info.metric
    numbers = {k: v for k, v in metrics.metadata.items() if isinstance(v, int | float)}
    test_metrics = {k: v for k, v in numbers.items() if not k.endswith(("_ci_low", "_ci_high"))}
    intervals = {
        k: [numbers[f"{k}_ci_low"], numbers[f"{k}_ci_high"]]
        for k in test_metrics
        if f"{k}_ci_low" in numbers and f"{k}_ci_high" in numbers
    }
    name = bento.metadata["bento_tag"].split(":")[0]
    summary = {
        "task": schema.task,
        "target": schema.target,
        "data": params.get("data", ""),
        "metric": metric,
        "best_model": info.family,
        "best_params": info.params,
        "cv_score": info.valid_score,
        # a binary classifier's tuned decision threshold on P(threshold_class); None: argmax
        "decision_threshold": info.decision_threshold,
        "threshold_class": info.threshold_class,
        "test_score": test_metrics[metric],
        "test_metrics": test_metrics,
        "test_intervals": intervals,
        "n_trials": info.n_trials,
        "bento_tag": bento.metadata["bento_tag"],
        "model_tag": bento.metadata["model_tag"],
        "bento_archive": str(_copy(bento.path, output_dir / f"{name}.bento").resolve()),
        "bento_sha256": bento.metadata["bento_sha256"],  # as the registry records it
        "report_html": str(_copy(outputs["report"].path, output_dir / "report.html").resolve()),
        "leaderboard_csv": str(
            _copy(outputs["leaderboard"].path, output_dir / "leaderboard.csv").resolve()
        ),
        "schema_json": str(_copy(outputs["schema"].path, output_dir / "schema.json").resolve()),
        "data_report_html": str(
            _copy(outputs["data_report"].path, output_dir / "data_report.html").resolve()
        ),
        "search_report_html": str(
            _copy(outputs["search_report"].path, output_dir / "search.html").resolve()
        ),
        "summary_md": str(_copy(outputs["summary"].path, output_dir / "summary.md").resolve()),
        "model_card": str(
            _copy_card(outputs["model_card"].path, output_dir / "model_card").resolve()
        ),
        "deploy": decision.deploy,
        "gate_reason": decision.reason,
        "champion_before": decision.champion_version,
        "pipeline_run_dir": str(Path(model.path).parent.parent.resolve()),
        "elapsed_s": round(elapsed, 1),
        "time_budget_s": params.get("time_budget_s"),  # the whole run's
        "search_s": info.search_s,
        "refit_s": info.refit_s,
        "step_s": dict(step_s or {}),
    }
    write_json(output_dir / "summary.json", summary)
    return summary
