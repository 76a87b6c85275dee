"""A mistake only a step can find reaches the command line as the step's own one-line message."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.support.servers import CLI

pytestmark = pytest.mark.slow


def test_a_table_whose_every_feature_leaks_exits_2_with_the_prepare_steps_message(tmp_path):
    """The CLI's check passes it (the leakage guard is the prepare step's); the step's report,
    not its log, tells the CLI it was the user's mistake."""
    rng = np.random.default_rng(0)
    y = rng.choice(["yes", "no"], size=300)
    table = tmp_path / "leaky.csv"
    # an identifier (dropped) and a copy of the target under other names (a leak)
    copy = np.where(y == "yes", "Y", "N")
    frame = pd.DataFrame({"customer": [f"c{i}" for i in range(len(y))], "outcome_copy": copy})
    frame.assign(label=y).to_csv(table, index=False)
    out = tmp_path / "out"
    done = subprocess.run(
        [*CLI, "run", "--data", str(table), "--target", "label", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no usable feature columns"), err
    assert "outcome_copy: leakage" in err[0]
    # the run got as far as the step, which ran once: a local run retries nothing
    assert done.stdout.count("step prepare failed") == 1, done.stdout[-2000:]
    assert "Traceback" not in done.stderr
