"""Progress lines that the CLI shows while the rest of a component's log goes to run.log."""

import sys

PREFIX = "[kfp-automl] "


def say(step: str, message: str) -> None:
    """Print one progress line for `step`, flushed so it appears while the step runs."""
    print(f"{PREFIX}{step}: {message}", file=sys.stdout, flush=True)
