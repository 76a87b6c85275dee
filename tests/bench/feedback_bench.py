"""Prediction logging and /feedback benchmark (`python -m tests.bench.run_bench feedback`).

Two servers of the same Bento run at once: logging off and logging on. wrk
measures /predict on each in alternating windows (off, on, on, off, ...), so
both see the same machine noise; the cost of logging is the ratio of their
median throughputs. The in-process cost of the request path (ids plus one
queue append) and of the background writer per record are timed too. Then
labels are sent to /feedback for fresh predictions: labels per second with 100
labels per request (4 clients) and with one label per request (8 clients).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from tests.bench.serving_bench import (
    CLI,
    OUT,
    QUIET_ENV,
    body,
    lua_script,
    require_wrk,
    server,
    train,
    wrk_run,
)
from tests.support.servers import json_records

WINDOW_S = int(os.environ.get("BENCH_WINDOW_SECONDS", "5"))
WINDOWS = int(os.environ.get("BENCH_WINDOWS", "4"))
SCENARIOS = {"1 record": (1, 8), "100 records": (100, 4)}
MAX_LOGGING_COST = 0.05  # share of /predict throughput
LABEL_BATCH, LABEL_CLIENTS, N_BATCHED = 100, 4, 5000
SINGLE_CLIENTS, N_SINGLE = 8, 1000
TOKEN = "bench-" + "4" * 40  # the feedback token of the caller "bench"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def payload() -> list[dict[str, Any]]:
    """Rows of the built-in table without missing values (what the model was trained on)."""
    from kfp_automl.tables.io import DEFAULT_DATASET, DEFAULT_TARGET, read_table

    rows = read_table(DEFAULT_DATASET).drop(columns=[DEFAULT_TARGET]).dropna()
    return json_records(rows.sample(200, random_state=0))


def interleaved(wrk: str, bases: dict[str, str], records: list[dict]) -> dict[str, Any]:
    """Throughput per scenario and server, measured in alternating windows."""
    out: dict[str, Any] = {}
    for scenario, (size, clients) in SCENARIOS.items():
        script = lua_script(OUT / f"feedback-{size}.lua", [body(records[:size])])
        for base in bases.values():  # warm up
            wrk_run(wrk, f"{base}/predict", script, clients, 2)
        rates: dict[str, list[float]] = {name: [] for name in bases}
        for w in range(WINDOWS):
            order = list(bases) if w % 2 == 0 else list(reversed(bases))
            for name in order:
                r = wrk_run(wrk, f"{bases[name]}/predict", script, clients, WINDOW_S)
                assert r["non_2xx"] == 0 and r["socket_errors"] == 0, r
                rates[name].append(r["rps"] * size)
            print(f"  {scenario} window {w + 1}/{WINDOWS}: " + ", ".join(
                f"{n} {rates[n][-1]:.0f} rec/s" for n in bases), flush=True)  # fmt: skip
        out[scenario] = {
            "records_per_s": rates,
            "median": {n: statistics.median(v) for n, v in rates.items()},
            "window_ratios": [a / b for a, b in zip(rates["on"], rates["off"], strict=True)],
        }
    return out


def in_process_cost(records: list[dict]) -> dict[str, float]:
    """µs per request batch for ids + queue append, and per record for the background writer."""
    from prometheus_client import CollectorRegistry

    from kfp_automl.contracts.schema import Schema
    from kfp_automl.serving.prediction_log import LogSettings, PredictionLog, new_id
    from kfp_automl.serving.quality import QualityMetrics

    schema = {
        "target": "churn",
        "task": "classification",
        "classes": ["No", "Yes"],
        "features": [{"name": k, "kind": "numeric"} for k in records[0]],
    }
    answers = [{"prediction": "No", "probabilities": {"No": 0.7, "Yes": 0.3}}] * len(records)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = QualityMetrics("m", "v", "classification", "roc_auc", None, CollectorRegistry())
        settings = LogSettings(mode="on", directory=tmp, flush_interval_s=3600, max_buffered=10**9)
        plog = PredictionLog(settings, "m", "v", Schema.from_dict(schema), metrics)
        for size in (1, 100):
            recs, ans = records[:size], answers[:size]
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.0:
                ids = [new_id() for _ in recs]  # as the service makes ids
                plog.submit(ids, recs, ans)
                _ = [{"id": i, **a} for i, a in zip(ids, ans, strict=True)]
                n += 1
            out[f"request_path_us_{size}"] = (time.perf_counter() - start) / n * 1e6
            start = time.perf_counter()
            written = plog.flush()
            out[f"writer_us_per_record_{size}"] = (time.perf_counter() - start) / written * 1e6
        plog.close()
    return out


def feedback_rate(base: str, records: list[dict]) -> dict[str, float]:
    """Labels per second to /feedback, for predictions made just before."""
    ids: list[str] = []
    with httpx.Client(timeout=60) as client:
        while len(ids) < N_BATCHED + N_SINGLE:
            r = client.post(f"{base}/predict", json={"records": records[:100]})
            ids += [a["id"] for a in r.json()]
    time.sleep(1)  # longer than the writer's flush interval
    batched = [ids[i : i + LABEL_BATCH] for i in range(0, N_BATCHED, LABEL_BATCH)]
    single = [[i] for i in ids[N_BATCHED : N_BATCHED + N_SINGLE]]
    out = {}
    for name, batches, clients in (
        ("batched", batched, LABEL_CLIENTS),
        ("single", single, SINGLE_CLIENTS),
    ):
        with (
            httpx.Client(timeout=60, headers=AUTH) as client,
            ThreadPoolExecutor(clients) as pool,
        ):

            def send(batch, client=client):
                labels = [{"id": i, "label": "No"} for i in batch]
                r = client.post(f"{base}/feedback", json={"labels": labels})
                return r.json()["matched"]

            start = time.perf_counter()
            matched = sum(pool.map(send, batches))
            elapsed = time.perf_counter() - start
        assert matched == sum(len(b) for b in batches), (name, matched)
        out[f"{name}_labels_per_s"] = matched / elapsed
    return out


def render(res: dict[str, Any]) -> str:
    lines = [
        f"Prediction logging on vs off: two servers of one Bento, wrk in {WINDOWS} alternating "
        f"windows of {WINDOW_S} s per server; medians.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
    ]
    for scenario, r in res["predict"].items():
        ratio = r["median"]["on"] / r["median"]["off"]
        cost = 1 - ratio
        spread = f"{min(r['window_ratios']):.2f}-{max(r['window_ratios']):.2f}"
        met = "met" if cost < MAX_LOGGING_COST else "not met"
        lines.append(
            f"| /predict {scenario}, records/s, on / off | {ratio:.3f} "
            f"({r['median']['on']:.0f} vs {r['median']['off']:.0f}; windows {spread}) "
            f"| cost < {MAX_LOGGING_COST:.0%}: {met} |"
        )
    c = res["in_process"]
    lines += [
        f"| request path per batch (ids + queue), 1 / 100 records | "
        f"{c['request_path_us_1']:.1f} / {c['request_path_us_100']:.1f} µs | |",
        f"| background writer per record (JSON Lines + SQLite) | "
        f"{c['writer_us_per_record_100']:.1f} µs | |",
        f"| /feedback, {LABEL_BATCH} labels per request, {LABEL_CLIENTS} clients | "
        f"{res['feedback']['batched_labels_per_s']:.0f} labels/s | |",
        f"| /feedback, 1 label per request, {SINGLE_CLIENTS} clients | "
        f"{res['feedback']['single_labels_per_s']:.0f} labels/s | |",
    ]
    return "\n".join(lines)


def main() -> str:
    wrk = require_wrk()
    OUT.mkdir(exist_ok=True)
    started = time.monotonic()
    records = payload()
    with tempfile.TemporaryDirectory(prefix="kfp-automl-feedback-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_")}
        env.update(QUIET_ENV, BENTOML_HOME=home)
        archive = os.environ.get("BENCH_BENTO_ARCHIVE", "")
        model = archive or train(env)["bento_tag"]
        serve = [*CLI, "serve", "--model", model]
        log_dir = Path(home) / "prediction-logs"
        tokens = Path(home) / "feedback-tokens"
        tokens.mkdir()
        (tokens / "bench").write_text(TOKEN + "\n")
        with ExitStack() as stack:
            off, _ = stack.enter_context(server("logging-off", serve, env))
            on_cmd = [*serve, "--log-predictions", "on", "--log-dir", str(log_dir)]
            on_cmd += ["--feedback-tokens", str(tokens)]
            on, _ = stack.enter_context(server("logging-on", on_cmd, env))
            res = {"predict": interleaved(wrk, {"off": off, "on": on}, records)}
            res["feedback"] = feedback_rate(on, records)
    res["in_process"] = in_process_cost(records)
    res["elapsed_s"] = time.monotonic() - started
    table = render(res)
    (OUT / "feedback.md").write_text(table + "\n")
    (OUT / "feedback.json").write_text(json.dumps(res, indent=2))
    print(table)
    print(f"feedback bench done in {res['elapsed_s']:.0f} s", flush=True)
    return table


if __name__ == "__main__":
    main()
