"""Prepare benchmark: a 1,000,000 x 50 mixed table with missing values, written to a CSV file.

Two child processes read the same file, one after the other, each reporting
its wall time and peak resident memory (ru_maxrss):

- baseline: `pandas.read_csv` + two `train_test_split`s (train/valid/test, stratified);
- prepare: the prepare step's `run()` (pyarrow read, roles, duplicates, leakage
  guard, split, three Parquet files, schema, reference profile, HTML report).

Reported as ratios prepare / baseline, plus the peak memory of each as a
multiple of the CSV's size and of the table's in-memory size.

    python -m tests.bench.run_bench prepare
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path("bench-output")
ROWS = int(os.environ.get("BENCH_PREPARE_ROWS", "1000000"))
SEED = 0


def make_table(path: Path, rows: int = ROWS) -> None:
    """50 columns: 26 floats, 6 integers, 10 categories (3 to 5,000 values), 4 yes/no, 2 dates,
    1 identifier, the target; 2-20% missing in half of the columns."""
    import pyarrow as pa
    from pyarrow import csv

    r = np.random.default_rng(SEED)
    cols: dict[str, pa.Array] = {}

    def holes(values: np.ndarray, share: float) -> pa.Array:
        return pa.array(values, mask=r.random(rows) < share)

    signal = np.zeros(rows)
    for i in range(26):
        v = r.normal(i, 1 + i % 5, size=rows)
        signal += v * (0.1 if i < 5 else 0.0)
        cols[f"num_{i}"] = holes(v.round(4), 0.02 * (i % 10) if i % 2 else 0.0)
    for i in range(6):
        cols[f"int_{i}"] = holes(r.integers(0, 10 ** (i + 1), size=rows), 0.05 if i % 2 else 0.0)
    for i, card in enumerate([3, 5, 8, 12, 20, 40, 100, 500, 1000, 5000]):
        labels = np.array([f"cat{i}_{k}" for k in range(card)])
        cols[f"cat_{i}"] = holes(labels[r.zipf(1.5, size=rows) % card], 0.1 if i % 3 == 0 else 0.0)
    for i in range(4):
        cols[f"flag_{i}"] = holes(np.where(r.random(rows) < 0.3, "Yes", "No"), 0.05 * i)
    start = np.datetime64("2020-01-01T00:00:00")
    for i in range(2):
        stamps = start + r.integers(0, 3 * 365 * 24 * 3600, size=rows).astype("timedelta64[s]")
        cols[f"date_{i}"] = holes(stamps, 0.03)
    cols["customer_id"] = pa.array(np.char.add("id", np.arange(rows).astype(str)))
    logits = signal - np.mean(signal) + r.normal(size=rows)
    cols["target"] = pa.array(np.where(logits > 0.5, "churn", "stay"))
    csv.write_csv(pa.table(cols), path)


_BASELINE = """
import json, resource, sys, time
t = time.perf_counter()
import pandas as pd
from sklearn.model_selection import train_test_split
df = pd.read_csv(sys.argv[1])
rest, test = train_test_split(df, test_size=0.15, random_state=42, stratify=df["target"])
train, valid = train_test_split(rest, test_size=0.15 / 0.85, random_state=42, stratify=rest["target"])
print(json.dumps({"wall_s": time.perf_counter() - t, "rows": [len(train), len(valid), len(test)],
    "frame_bytes": int(df.memory_usage(deep=True).sum()),
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

_PREPARE = """
import json, resource, sys, time
t = time.perf_counter()
from kfp_automl.components.prepare.prepare import run
out = sys.argv[2]
schema = run(sys.argv[1], "target", *(f"{out}/{k}" for k in ("train", "valid", "test", "schema", "profile")),
    report_path=f"{out}/report.html", summary_path=f"{out}/summary.md")
r = schema["rows"]
print(json.dumps({"wall_s": time.perf_counter() - t, "rows": [r["train"], r["valid"], r["test"]],
    "features": len(schema["features"]), "dropped": [d["name"] for d in schema["dropped"]],
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _child(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"bench child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> str:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kfp-automl-prep-bench-") as tmp:
        data = Path(tmp) / "table.csv"
        print(f"prepare bench: writing a {ROWS} x 50 table to {data}", flush=True)
        t = time.perf_counter()
        make_table(data)
        write_s = time.perf_counter() - t
        size = data.stat().st_size
        print(
            f"prepare bench: {size / 1024**2:.0f} MiB in {write_s:.0f} s; baseline ...", flush=True
        )
        base = _child(_BASELINE, str(data))
        print(f"prepare bench: baseline {base['wall_s']:.1f} s; prepare ...", flush=True)
        (Path(tmp) / "out").mkdir()
        prep = _child(_PREPARE, str(data), str(Path(tmp) / "out"))
    gib = 1024**3
    rows = [
        (
            "wall time, prepare / read_csv + train_test_split",
            f"{prep['wall_s']:.1f} s / {base['wall_s']:.1f} s",
            prep["wall_s"] / base["wall_s"],
        ),
        (
            "peak memory (max RSS), prepare / read_csv + train_test_split",
            f"{prep['peak_rss'] / gib:.2f} GiB / {base['peak_rss'] / gib:.2f} GiB",
            prep["peak_rss"] / base["peak_rss"],
        ),
        (
            "prepare peak memory / CSV file size",
            f"{prep['peak_rss'] / gib:.2f} GiB / {size / gib:.2f} GiB",
            prep["peak_rss"] / size,
        ),
        (
            "prepare peak memory / the table in pandas (deep)",
            f"{prep['peak_rss'] / gib:.2f} GiB / {base['frame_bytes'] / gib:.2f} GiB",
            prep["peak_rss"] / base["frame_bytes"],
        ),
    ]
    lines = [
        f"{ROWS:,} rows x 50 columns, CSV {size / 1024**2:.0f} MiB; "
        f"prepare kept {prep['features']} features, dropped {', '.join(prep['dropped']) or 'none'}",
        "",
        "| measure | values | ratio |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {values} | {ratio:.2f} |" for name, values, ratio in rows]
    table = "\n".join(lines)
    (OUT / "prepare.md").write_text(table + "\n")
    (OUT / "prepare.json").write_text(
        json.dumps({"csv_bytes": size, "baseline": base, "prepare": prep}, indent=2)
    )
    print(table)
    return table


if __name__ == "__main__":
    main()
