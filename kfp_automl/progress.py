"""What a step tells the user: progress lines, and a report of why it failed.

The CLI shows the progress lines while the rest of a component's log goes to run.log. When a
step fails, `reported` writes what went wrong as a small JSON file in the folder named by
$KFP_AUTOML_STEP_ERRORS (the local runner sets it; on a cluster it is unset and the step's
log says it all), so the runner learns whether it was the user's mistake, and its message,
without reading the log.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kfp_automl.errors import UserError

PREFIX = "[kfp-automl] "
STEP_ERRORS_ENV = "KFP_AUTOML_STEP_ERRORS"


def say(step: str, message: str) -> None:
    """Print one progress line for `step`, flushed so it appears while the step runs."""
    print(f"{PREFIX}{step}: {message}", file=sys.stdout, flush=True)


@contextmanager
def reported(step: str) -> Iterator[None]:
    """Run a step's work; if it raises, report why (see the module docstring) and re-raise."""
    try:
        yield
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        directory = os.environ.get(STEP_ERRORS_ENV)
        if directory:
            report = {
                "step": step,
                "user_error": isinstance(exc, UserError),
                "type": type(exc).__name__,
                "message": message,
            }
            path = Path(directory) / f"{step}.json"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(report) + "\n")
            os.replace(tmp, path)
        raise


def read_reports(directory: str | os.PathLike[str]) -> list[dict]:
    """The failure reports steps wrote into `directory`, oldest first."""
    paths = sorted(Path(directory).glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in paths]
