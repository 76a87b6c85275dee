"""`make bench`: the default run's wall clock and peak memory, and AutoML vs a fixed baseline.

Everything is measured side by side in one run and reported as ratios
(this machine is shared and noisy, so absolute seconds drift):
- wall clock of `kfp-automl run` / its search budget (pipeline + Ray overhead),
- peak memory of the whole process tree (sum of PSS, so shared pages count once) / 4 GiB target,
- the tuned model's test score / a default HistGradientBoosting fitted on the same split.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

OUT = Path("bench-output")
MEMORY_TARGET = 4 * 1024**3


class PeakMemory(threading.Thread):
    """Samples the summed PSS of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every_s, self.peak, self.stop = (
            psutil.Process(pid),
            every_s,
            0,
            threading.Event(),
        )

    def run(self):
        while not self.stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_full_info().pss
            self.peak = max(self.peak, total)
            self.stop.wait(self.every_s)


def run_default(budget: int) -> dict:
    out = OUT / "run"
    env = {**os.environ, "BENTOML_HOME": tempfile.mkdtemp(prefix="kfp-automl-bench-")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--time-budget",
            str(budget),
            "--output",
            str(out),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    sampler = PeakMemory(proc.pid)
    sampler.start()
    rc = proc.wait()
    wall = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"kfp-automl run failed with exit code {rc}; see {out / 'run.log'}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "peak_pss_bytes": sampler.peak, "summary": summary}


def baseline_score(summary: dict) -> float:
    """Default HistGradientBoosting on the same train+valid/test split, same preprocessing."""
    import pandas as pd

    from components.common.io import read_json
    from components.common.metrics import METRICS, score
    from components.tune.families import build_model, initial_configs, select_families

    run_dir = Path(summary["pipeline_run_dir"])
    schema = read_json(summary["schema_json"])
    prep = next(run_dir.glob("prepare-data"))
    train = pd.concat([pd.read_parquet(prep / "train"), pd.read_parquet(prep / "valid")])
    test = pd.read_parquet(prep / "test")
    config = initial_configs(select_families("hist_gb"), len(train), schema["task"])[0]
    model = build_model(schema, config).fit(
        train.drop(columns=schema["target"]), train[schema["target"]]
    )
    return score(
        METRICS[summary["metric"]],
        model,
        test.drop(columns=schema["target"]),
        test[schema["target"]],
    )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    budget = int(os.environ.get("BENCH_BUDGET", "60"))
    r = run_default(budget)
    s = r["summary"]
    base = baseline_score(s)
    rows = [
        (
            "default run wall clock / search budget",
            f"{r['wall_s']:.0f} s / {budget} s",
            r["wall_s"] / budget,
        ),
        (
            "peak memory (PSS, process tree) / 4 GiB target",
            f"{r['peak_pss_bytes'] / 1024**3:.2f} GiB",
            r["peak_pss_bytes"] / MEMORY_TARGET,
        ),
        (
            f"tuned test {s['metric']} / default hist_gb test {s['metric']}",
            f"{s['test_score']:.4f} / {base:.4f}",
            s["test_score"] / base,
        ),
        ("trials finished per search second", f"{s['n_trials']} trials", s["n_trials"] / budget),
    ]
    lines = ["| measure | values | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {values} | {ratio:.2f} |" for name, values, ratio in rows]
    table = "\n".join(lines)
    (OUT / "results.md").write_text(table + "\n")
    (OUT / "results.json").write_text(
        json.dumps({"budget_s": budget, "baseline": base, **r}, indent=2, default=str)
    )
    print(table)


if __name__ == "__main__":
    main()
