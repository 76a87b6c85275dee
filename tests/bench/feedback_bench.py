"""Prediction logging and /feedback benchmark (`python -m tests.bench.run_bench feedback`).

Three servers of the same Bento run at once: logging off, logging on with the one-host
store (JSON Lines + SQLite), and logging on with the shared PostgreSQL store (a local
server with fsync on, as in production). wrk measures /predict on each in alternating
windows (off, on, pg, pg, on, off, ...), so all see the same machine noise; the cost of
logging is the ratio of their median throughputs. The in-process cost of the request path (ids plus one
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
from tests.support.postgres import remove, start_postgres
from tests.support.servers import json_records

WINDOW_S = int(os.environ.get("BENCH_WINDOW_SECONDS", "5"))
WINDOWS = int(os.environ.get("BENCH_WINDOWS", "4"))
SCENARIOS = {"1 record": (1, 8), "100 records": (100, 4)}
MAX_LOGGING_COST = 0.05  # share of /predict throughput
MAX_SHARED_COST = 0.10  # the same with the shared PostgreSQL store
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
            "window_ratios": {
                n: [a / b for a, b in zip(rates[n], rates["off"], strict=True)]
                for n in bases
                if n != "off"
            },
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


def store_growth(database) -> dict[str, float]:
    """The shared store's size per prediction row (table, TOAST and indexes)."""
    ((rows, size),) = database.sql(
        "SELECT count(*), pg_total_relation_size('automl_predictions') FROM automl_predictions"
    )
    return {"rows": rows, "bytes": size, "bytes_per_row": size / max(rows, 1)}


def render(res: dict[str, Any]) -> str:
    lines = [
        f"Prediction logging on vs off: two servers of one Bento, wrk in {WINDOWS} alternating "
        f"windows of {WINDOW_S} s per server; medians.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
    ]
    goals = {"on": MAX_LOGGING_COST, "pg": MAX_SHARED_COST}
    what = {"on": "on (one host: SQLite)", "pg": "on (shared: PostgreSQL)"}
    for scenario, r in res["predict"].items():
        for name, windows in r["window_ratios"].items():
            ratio = r["median"][name] / r["median"]["off"]
            spread = f"{min(windows):.2f}-{max(windows):.2f}"
            met = "met" if 1 - ratio < goals[name] else "not met"
            lines.append(
                f"| /predict {scenario}, records/s, {what[name]} / off | {ratio:.3f} "
                f"({r['median'][name]:.0f} vs {r['median']['off']:.0f}; windows {spread}) "
                f"| cost < {goals[name]:.0%}: {met} |"
            )
    c = res["in_process"]
    lines += [
        f"| request path per batch (ids + queue), 1 / 100 records | "
        f"{c['request_path_us_1']:.1f} / {c['request_path_us_100']:.1f} µs | |",
        f"| background writer per record (JSON Lines + SQLite) | "
        f"{c['writer_us_per_record_100']:.1f} µs | |",
    ]
    for name in ("on", "pg"):
        f = res["feedback"][name]
        lines += [
            f"| /feedback {what[name]}, {LABEL_BATCH} labels per request, {LABEL_CLIENTS} "
            f"clients | {f['batched_labels_per_s']:.0f} labels/s | |",
            f"| /feedback {what[name]}, 1 label per request, {SINGLE_CLIENTS} clients | "
            f"{f['single_labels_per_s']:.0f} labels/s | |",
        ]
    g = res["store_growth"]
    lines.append(
        f"| shared store size per million predictions (table and indexes, features "
        f"included; {g['rows']:,} rows measured) | {g['bytes_per_row'] * 1e6 / 2**30:.2f} GiB | |"
    )
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
            database = start_postgres(durable=True)
            stack.callback(remove, database)
            off, _ = stack.enter_context(server("logging-off", serve, env))
            on_cmd = [*serve, "--log-predictions", "on", "--log-dir", str(log_dir)]
            on_cmd += ["--feedback-tokens", str(tokens)]
            on, _ = stack.enter_context(server("logging-on", on_cmd, env))
            pg_env = {**env, "AUTOML_LOG_STORE": database.url}
            pg, _ = stack.enter_context(server("logging-postgres", on_cmd, pg_env))
            bases = {"off": off, "on": on, "pg": pg}
            res = {"predict": interleaved(wrk, bases, records)}
            res["feedback"] = {name: feedback_rate(bases[name], records) for name in ("on", "pg")}
            res["store_growth"] = store_growth(database)
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
