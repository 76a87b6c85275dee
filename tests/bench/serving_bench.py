"""Serving bench: the project's Bento against a hand-written BentoML service, one fitted model.

Everything runs side by side in one run on the same model and is reported as
ratios (this machine is shared and noisy, so absolute numbers drift):

- p50/p99 latency and throughput of 1-record requests (8 clients) and
  100-record requests (4 clients), measured with wrk, for
  a. our service, `kfp-automl serve --model TAG` (monitoring on, the default),
  b. the same Bento with monitoring off (`kfp-automl serve --no-monitoring`; whether
     `bentoml serve TAG --arg monitoring=false` takes effect is checked and recorded),
  c. a plain BentoML service over the same model file (tests/bench/plain_service),
  d. the model called in-process, the floor (as our service calls it, and through
     sklearn as the plain service does);
- peak RSS of our server's whole process tree under that load;
- a bounded load test of our service (mixed requests, some invalid): no 5xx, and
  the number of `automl_*` series on /metrics is the same before and after.

Servers start one at a time on free 127.0.0.1 ports, in a fresh BentoML store
(BENTOML_HOME in a temp dir), and are always stopped. Writes
bench-output/serving.md (the table) and bench-output/serving.json (raw numbers).

    .venv/bin/python -m tests.bench.serving_bench
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.support.servers import CLI, free_port, json_records, stop, wait_ready

OUT = Path("bench-output")
RUN_DIR = OUT / "serving-run"
LOG_DIR = OUT / "serving-logs"
PLAIN_DIR = Path(__file__).resolve().parent / "plain_service"
BENTOML_BIN = str(Path(sys.executable).with_name("bentoml"))

TRAIN_BUDGET_S = 30
WARMUP_S = 3
MEASURE_S = int(os.environ.get("BENCH_MEASURE_SECONDS", "15"))
WINDOWS = 5  # the measurement is cut into windows to show its noise
SERVE_SECONDS = 60  # the load test; BENCH_SERVE_SECONDS may shorten it
LOAD_CLIENTS = 16
FLOOR_S = 3  # in-process timing per request size
# name -> (records per request, concurrent clients)
SCENARIOS = {"1 record": (1, 8), "100 records": (100, 4)}
# Keep every byte of traffic local: no usage reports from BentoML or Ray.
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "True", "RAY_USAGE_STATS_ENABLED": "0"}

# Goals of the serving issue.
MAX_MONITORING_COST = 0.05  # share of throughput
MAX_MONITORING_P50_MS = 1.0
MIN_OURS_OVER_PLAIN = 2.0


def load_seconds() -> int:
    return min(SERVE_SECONDS, int(os.environ.get("BENCH_SERVE_SECONDS", SERVE_SECONDS)))


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit(
            "the serving bench needs the HTTP load generator wrk: "
            "`sudo apt-get install wrk` (Debian/Ubuntu package wrk)"
        )
    return wrk


# ---- the model -------------------------------------------------------------------------------


def train(env: dict[str, str]) -> dict[str, Any]:
    """`kfp-automl run --time-budget 30` into bench-output/serving-run; its summary.

    BENCH_SERVING_RUN_ARGS adds arguments to that run, e.g. `--families random_forest
    --no-ensemble` to choose the served model's kind; by default the search picks it.
    """
    extra = shlex.split(os.environ.get("BENCH_SERVING_RUN_ARGS", ""))
    print(
        f"serving bench: training ({TRAIN_BUDGET_S} s search"
        + (f", {' '.join(extra)}" if extra else "")
        + f") into {RUN_DIR}",
        flush=True,
    )
    cmd = [*CLI, "run", "--time-budget", str(TRAIN_BUDGET_S), "--output", str(RUN_DIR), *extra]
    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, timeout=900).returncode
    if rc != 0:
        raise SystemExit(f"kfp-automl run failed with exit code {rc}; see {RUN_DIR / 'run.log'}")
    return json.loads((RUN_DIR / "summary.json").read_text())


def stored_dir(home: str, kind: str, tag: str) -> Path:
    name, version = tag.split(":")
    return Path(home) / kind / name / version


def payload_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Test-split rows without missing values (the plain service cannot take nulls)."""
    import pandas as pd

    prep = next(Path(summary["pipeline_run_dir"]).glob("prepare-data"))
    test = pd.read_parquet(prep / "test").drop(columns=summary["target"]).dropna()
    return json_records(test.head(200))


def body(records: list[dict[str, Any]]) -> str:
    return json.dumps({"records": records})


# ---- wrk -------------------------------------------------------------------------------------

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {
%(bodies)s
}
wrk.body = bodies[1]
local threads = {}
function setup(thread) table.insert(threads, thread) end
n4xx, n5xx, i = 0, 0, 0
%(request)s
function response(status, headers, body)
  if status >= 500 then n5xx = n5xx + 1 elseif status >= 400 then n4xx = n4xx + 1 end
end
function done(summary, latency, requests)
  local s4, s5 = 0, 0
  for _, t in ipairs(threads) do s4 = s4 + t:get("n4xx"); s5 = s5 + t:get("n5xx") end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "non_2xx": %%d, "n4xx": %%d, "n5xx": %%d, ' ..
    '"socket_errors": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, s4, s5,
    e.connect + e.read + e.write + e.timeout))
end
"""
CYCLE = """
function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def lua_script(path: Path, bodies: list[str]) -> Path:
    """A wrk script POSTing `bodies` as JSON (one body: wrk.body; several: in turn)."""
    quoted = []
    for b in bodies:
        assert "]==]" not in b
        quoted.append(f"[==[{b}]==]")
    text = LUA % {"bodies": ",\n".join(quoted), "request": CYCLE if len(bodies) > 1 else ""}
    path.write_text(text)
    return path


def wrk_run(wrk: str, url: str, script: Path, clients: int, seconds: int) -> dict[str, Any]:
    """One bounded wrk run against `url`: requests/s, latency percentiles, error counts."""
    cmd = [wrk, "-t", "1", "-c", str(clients), "-d", f"{seconds}s", "--latency"]
    cmd += ["--timeout", "10s", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON "))
    r = json.loads(line.removeprefix("BENCH_JSON "))
    printed = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["wrk_requests_per_sec"] = float(printed.group(1)) if printed else None
    return r


# ---- servers ---------------------------------------------------------------------------------


class TreeRSS(threading.Thread):
    """Samples the summed RSS of a process and all its descendants; `peak` since `reset()`."""

    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.every_s, self.peak, self.done = (
            psutil.Process(pid),
            every_s,
            0,
            threading.Event(),
        )

    def sample(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            for p in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return total

    def reset(self) -> None:
        self.peak = self.sample()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.sample())
            self.done.wait(self.every_s)


@contextlib.contextmanager
def server(name: str, cmd: list[str], env: dict[str, str]) -> Iterator[tuple[str, TreeRSS]]:
    """Start one server on a free 127.0.0.1 port; yield its base URL and RSS sampler; stop it."""
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    rss = TreeRSS(proc.pid)
    try:
        try:
            wait_ready(f"{base}/readyz", proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}\n{log_path.read_text()[-3000:]}") from None
        rss.start()
        yield base, rss
    finally:
        rss.done.set()
        stop(proc)


def automl_series(base: str) -> tuple[int, dict[str, float]]:
    """How many `automl_*` series /metrics shows, and the total of each counter."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    samples = [ln for ln in text.splitlines() if ln.startswith("automl_")]
    totals: dict[str, float] = {}
    for ln in samples:
        name = ln.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith("_total"):
            totals[name] = totals.get(name, 0.0) + float(ln.rsplit(" ", 1)[1])
    return len(samples), totals


def monitoring_is_on(base: str) -> bool:
    """Drift bins are registered only when the service monitors."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return any(ln.startswith("automl_feature_bin_total") for ln in text.splitlines())


def probabilities(base: str, records: list[dict[str, Any]]) -> list[dict[str, float]]:
    r = httpx.post(f"{base}/predict", json={"records": records}, timeout=60)
    r.raise_for_status()
    out = r.json()
    assert len(out) == len(records), f"{len(out)} results for {len(records)} records"
    return [o["probabilities"] for o in out]


def measure(wrk: str, base: str, scripts: dict[str, Path], rss: TreeRSS) -> dict[str, Any]:
    """Each scenario: a warm-up run (discarded), then MEASURE_S in WINDOWS back-to-back runs.

    Throughput counts every request of the windows; p50/p99 are the medians of the
    windows' percentiles; the windows' spread shows how noisy the figure is.
    """
    import numpy as np

    results = {}
    for name, (n, clients) in SCENARIOS.items():
        url = f"{base}/predict"
        wrk_run(wrk, url, scripts[name], clients, WARMUP_S)
        rss.reset()
        windows = [
            wrk_run(wrk, url, scripts[name], clients, max(1, MEASURE_S // WINDOWS))
            for _ in range(WINDOWS)
        ]
        requests = sum(w["requests"] for w in windows)
        rps = requests / (sum(w["duration_us"] for w in windows) / 1e6)
        window_rps = [w["rps"] for w in windows]
        r = {
            "records_per_request": n,
            "clients": clients,
            "requests": requests,
            "rps": rps,
            "records_per_s": rps * n,
            "rps_min": min(window_rps),
            "rps_max": max(window_rps),
            "p50_us": float(np.median([w["p50_us"] for w in windows])),
            "p50_min_us": min(w["p50_us"] for w in windows),
            "p50_max_us": max(w["p50_us"] for w in windows),
            "p99_us": float(np.median([w["p99_us"] for w in windows])),
            "max_us": max(w["max_us"] for w in windows),
            **{k: sum(w[k] for w in windows) for k in ("non_2xx", "n4xx", "n5xx")},
            "socket_errors": sum(w["socket_errors"] for w in windows),
            "peak_rss_bytes": rss.peak,
            "windows": windows,
        }
        results[name] = r
        print(
            f"  {name:<12} {rps:8.1f} req/s (windows {r['rps_min']:.0f}-{r['rps_max']:.0f})  "
            f"p50 {r['p50_us'] / 1000:7.2f} ms  p99 {r['p99_us'] / 1000:7.2f} ms  "
            f"non-2xx {r['non_2xx']}",
            flush=True,
        )
    return results


def load_test(wrk: str, base: str, script: Path, rss: TreeRSS, n_bodies: int) -> dict[str, Any]:
    seconds = load_seconds()
    before, totals_before = automl_series(base)
    rss.reset()
    r = wrk_run(wrk, f"{base}/predict", script, LOAD_CLIENTS, seconds)
    after, totals_after = automl_series(base)
    delta = {k: v - totals_before.get(k, 0.0) for k, v in totals_after.items()}
    r.update(
        seconds=seconds,
        clients=LOAD_CLIENTS,
        series_before=before,
        series_after=after,
        peak_rss_bytes=rss.peak,
        expected_4xx_share=1 / n_bodies,
        records_counted=delta.get("automl_records_total", 0.0),
        rejections_counted=delta.get("automl_requests_rejected_total", 0.0),
        unseen_counted=delta.get("automl_feature_unseen_category_total", 0.0),
        out_of_range_counted=delta.get("automl_feature_out_of_range_total", 0.0),
    )
    print(
        f"  load test    {r['rps']:8.1f} req/s for {seconds} s, {LOAD_CLIENTS} clients: "
        f"5xx {r['n5xx']}, 4xx {r['n4xx']} (service counted {r['rejections_counted']:.0f} "
        f"rejections), automl_* series {before} -> {after}",
        flush=True,
    )
    return r


def load_bodies(records: list[dict[str, Any]]) -> list[str]:
    """Mixed traffic for the load test: sizes 1/10/100, unseen values, nulls, one invalid."""
    odd = {**records[3], "contract": "Decade-long", "monthly_charges": 1e6, "note": "extra"}
    nulls = {**records[4], "total_charges": None, "internet_service": None}
    bad = {**records[5], "tenure": "ten"}  # text in a numeric field: 400, never a 5xx
    return [
        body(records[:1]),
        body(records[10:20]),
        body(records[100:200]),
        body([odd]),
        body([nulls, *records[20:25]]),
        body([bad]),
    ]


# ---- the in-process floor ----------------------------------------------------------------------


def _timed_loop(fn, seconds: float) -> list[float]:
    for _ in range(5):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def floor(home: str, model_tag: str, payloads: dict[str, list]) -> dict[str, Any]:
    """`predict_frame(model, records_to_frame(records, schema))` in a loop, one thread.

    `model` is what the service scores with (`serving_model`: the fitted model behind
    its faster path); the same loop with the fitted model called through sklearn, as
    the plain service calls it, is timed too (`sklearn_*`). Also times what monitoring
    adds to each scored batch in the service (`Monitor.timed` + `Monitor.observe`, on
    a private Prometheus registry).
    """
    import numpy as np
    import pandas as pd
    from prometheus_client import CollectorRegistry

    from kfp_automl.runtime.fast_path import ServingModel, serving_model
    from kfp_automl.runtime.model_file import load_model
    from kfp_automl.runtime.records import predict_frame, records_to_columns, records_to_frame
    from kfp_automl.serving.monitoring import Monitor

    mdir = stored_dir(home, "models", model_tag)
    sha256 = yaml.safe_load((mdir / "model.yaml").read_text())["metadata"]["sha256"]
    fitted = load_model(mdir, sha256)
    schema = json.loads((mdir / "schema.json").read_text())
    model = serving_model(fitted, schema)
    profile = json.loads((mdir / "profile.json").read_text())
    monitor = Monitor(profile, *model_tag.split(":"), registry=CollectorRegistry())
    results: dict[str, Any] = {"serving_model": isinstance(model, ServingModel)}
    for name, (n, _) in SCENARIOS.items():
        records = payloads[name]
        t = np.array(
            _timed_loop(
                lambda r=records: predict_frame(model, records_to_frame(r, schema)), FLOOR_S
            )
        )
        sk = np.array(
            _timed_loop(
                lambda r=records: predict_frame(fitted, records_to_frame(r, schema)), FLOOR_S
            )
        )
        columns = records_to_columns(records, schema)
        preds = predict_frame(model, pd.DataFrame(columns))["prediction"].to_numpy()

        def monitored(columns=columns, preds=preds):  # as the service calls it
            with monitor.timed(len(preds)):
                pass
            monitor.observe(columns, preds)

        m = np.array(_timed_loop(monitored, 1.0))
        results[name] = {
            "calls": len(t),
            "rps": len(t) / t.sum(),
            "records_per_s": n * len(t) / t.sum(),
            "p50_us": float(np.percentile(t, 50) * 1e6),
            "p99_us": float(np.percentile(t, 99) * 1e6),
            "monitor_p50_us": float(np.percentile(m, 50) * 1e6),
            "sklearn_rps": len(sk) / sk.sum(),
            "sklearn_records_per_s": n * len(sk) / sk.sum(),
            "sklearn_p50_us": float(np.percentile(sk, 50) * 1e6),
        }
        r = results[name]
        print(
            f"  in-process   {name:<12} {r['rps']:8.1f} calls/s  p50 {r['p50_us'] / 1000:.2f} ms "
            f"(through sklearn {r['sklearn_rps']:.1f} calls/s, p50 "
            f"{r['sklearn_p50_us'] / 1000:.2f} ms); monitoring adds "
            f"{r['monitor_p50_us'] / 1000:.3f} ms per batch",
            flush=True,
        )
    return results


# ---- the bench -------------------------------------------------------------------------------


def run_servers(wrk: str, env: dict[str, str], home: str, summary: dict[str, Any]) -> dict:
    bento_tag = summary["bento_tag"]
    bdir = stored_dir(home, "bentos", bento_tag)
    bento_model_tag = yaml.safe_load((bdir / "bento.yaml").read_text())["args"]["model_tag"]
    records = payload_records(summary)
    payloads = {name: records[:n] for name, (n, _) in SCENARIOS.items()}
    scripts = {
        name: lua_script(OUT / f"serving-{n}.lua", [body(payloads[name])])
        for name, (n, _) in SCENARIOS.items()
    }
    mixed = load_bodies(records)
    load_script = lua_script(OUT / "serving-load.lua", mixed)
    res: dict[str, Any] = {"bento_tag": bento_tag, "model_tag": bento_model_tag}

    res["floor"] = floor(home, bento_model_tag, payloads)
    probe = records[:100]
    answers = {}

    print(f"ours: kfp-automl serve --model {bento_tag}", flush=True)
    with server("ours", [*CLI, "serve", "--model", bento_tag], env) as (base, rss):
        res["ours_idle_rss_bytes"] = rss.sample()
        series_start = automl_series(base)[0]
        answers["ours"] = probabilities(base, probe)
        res["ours"] = measure(wrk, base, scripts, rss)
        res["load"] = load_test(wrk, base, load_script, rss, len(mixed))
        res["load"]["series_at_start"] = series_start

    # Monitoring off, the same Bento. `bentoml serve TAG --arg monitoring=false` is what
    # BentoML documents; it is checked (and recorded) but a built Bento's arguments win
    # over --arg in BentoML 1.4, so the service reads AUTOML_MONITORING, set by --no-monitoring.
    arg_cmd = [BENTOML_BIN, "serve", bento_tag, "--arg", "monitoring=false"]
    with server("monitoring-off-arg", arg_cmd, env) as (base, _):
        res["off_arg_honoured"] = not monitoring_is_on(base)
    print(
        f"bentoml serve {bento_tag} --arg monitoring=false: "
        + ("monitoring off" if res["off_arg_honoured"] else "ignored, the Bento still monitors"),
        flush=True,
    )
    off_cmd = [*CLI, "serve", "--model", bento_tag, "--no-monitoring"]
    res["off_command"] = ["kfp-automl", *off_cmd[len(CLI) :]]
    print(f"monitoring off: {' '.join(res['off_command'])}", flush=True)
    with server("monitoring-off", off_cmd, env) as (base, rss):
        if monitoring_is_on(base):
            raise RuntimeError(f"{' '.join(res['off_command'])} still registers drift metrics")
        answers["off"] = probabilities(base, probe)
        res["off"] = measure(wrk, base, scripts, rss)

    plain_cmd = [BENTOML_BIN, "serve", "service:PlainService", "--working-dir", str(PLAIN_DIR)]
    plain_cmd += ["--arg", f"model_tag={bento_model_tag}"]
    print("plain: bentoml serve service:PlainService (tests/bench/plain_service)", flush=True)
    with server("plain", plain_cmd, env) as (base, rss):
        res["plain_idle_rss_bytes"] = rss.sample()
        answers["plain"] = probabilities(base, probe)
        res["plain"] = measure(wrk, base, scripts, rss)

    res["max_abs_proba_diff"] = max(
        abs(a[k] - b[k])
        for other in ("off", "plain")
        for a, b in zip(answers["ours"], answers[other], strict=True)
        for k in a
    )
    return res


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> str:
    """A note when two servers' window ranges of req/s overlap: the difference is within noise."""
    if a["rps_min"] <= b["rps_max"] and b["rps_min"] <= a["rps_max"]:
        return "windows overlap"
    return ""


def ratios(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of measure, value, goal, met (None where the issue sets no goal) and a note."""
    ours, off, plain, fl = res["ours"], res["off"], res["plain"], res["floor"]
    rows: list[dict[str, Any]] = []

    def row(measure: str, value: str, goal: str = "", met: bool | None = None, note: str = ""):
        rows.append({"measure": measure, "value": value, "goal": goal, "met": met, "note": note})

    cost_goal, p50_goal = 1 - MAX_MONITORING_COST, MAX_MONITORING_P50_MS
    for s in SCENARIOS:
        r = ours[s]["rps"] / off[s]["rps"]
        note = _overlap(ours[s], off[s])
        row(
            f"monitoring on / off throughput, {s}",
            f"{r:.2f}",
            f">= {cost_goal:.2f}",
            r >= cost_goal,
            note,
        )
    for s in SCENARIOS:
        d = (ours[s]["p50_us"] - off[s]["p50_us"]) / 1000
        note = "windows' p50 (ms): on {}-{}, off {}-{}".format(
            *(ms(x[s][k]) for x in (ours, off) for k in ("p50_min_us", "p50_max_us"))
        )
        row(f"p50 on - off (ms), {s}", f"{d:.2f}", f"< {p50_goal:g}", d < p50_goal, note)
    for s in SCENARIOS:
        cost_ms = fl[s]["monitor_p50_us"] / 1000
        share = fl[s]["monitor_p50_us"] / fl[s]["p50_us"]
        row(
            f"in-process: monitoring per scored batch (ms), {s}",
            f"{cost_ms:.3f}",
            f"< {p50_goal:g}",
            cost_ms < p50_goal,
        )
        row(
            f"in-process: monitoring / model time, {s}",
            f"{share:.3f}",
            f"< {MAX_MONITORING_COST:g}",
            share < MAX_MONITORING_COST,
        )
    one, hundred = SCENARIOS
    for s, what, key in ((one, "req/s", "rps"), (hundred, "records/s", "records_per_s")):
        r = ours[s][key] / plain[s][key]
        floor_r = ours[s]["rps_min"] / plain[s]["rps_max"]
        note = f"worst window / best plain window {floor_r:.2f}"
        goal = MIN_OURS_OVER_PLAIN
        row(f"ours / plain, {s}, {what}", f"{r:.2f}", f">= {goal:g}", r >= goal, note)
    for s in SCENARIOS:
        for q in ("p50", "p99"):
            row(f"ours / plain, {s}, {q}", f"{ours[s][f'{q}_us'] / plain[s][f'{q}_us']:.2f}")
    for s in SCENARIOS:
        row(f"ours / in-process floor, {s}, throughput", f"{ours[s]['rps'] / fl[s]['rps']:.2f}")
        row(f"ours / in-process floor, {s}, p50", f"{ours[s]['p50_us'] / fl[s]['p50_us']:.2f}")
    for s in SCENARIOS:
        row(
            f"in-process: serving model / through sklearn, {s}, throughput",
            f"{fl[s]['rps'] / fl[s]['sklearn_rps']:.2f}",
        )
        row(
            f"plain / in-process through sklearn, {s}, throughput",
            f"{plain[s]['rps'] / fl[s]['sklearn_rps']:.2f}",
        )
    peak = max(ours[s]["peak_rss_bytes"] for s in SCENARIOS)
    plain_peak = max(plain[s]["peak_rss_bytes"] for s in SCENARIOS)
    row("peak RSS under load, ours / plain", f"{peak / plain_peak:.2f}")
    load = res["load"]
    failed = load["n5xx"] + load["socket_errors"]
    row("load test: 5xx + socket errors", str(failed), "0", failed == 0)
    counts = (load["series_at_start"], load["series_before"], load["series_after"])
    row(
        "load test: automl_* series at start / before / after",
        " / ".join(map(str, counts)),
        "equal",
        len(set(counts)) == 1,
    )
    return rows


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def render(res: dict[str, Any], summary: dict[str, Any]) -> str:
    params = summary.get("best_params", {})
    size = f", {params['n_estimators']} trees" if "n_estimators" in params else ""
    lines = [
        f"Model: {summary['best_model']}{size} (test {summary['metric']} "
        f"{summary['test_score']:.4f}), Bento {res['bento_tag']}; "
        f"wrk, {MEASURE_S} s per measurement after a {WARMUP_S} s warm-up, cut into "
        f"{WINDOWS} windows (req/s over all of them, with the range of the windows; "
        f"p50/p99: median of the windows'); 1 record: 8 clients, 100 records: 4 clients. "
        f"In-process: one thread, no HTTP.",
        "",
        "| measure | ours (monitoring on) | monitoring off | plain BentoML | in-process floor |",
        "|---|---|---|---|---|",
    ]
    for s in SCENARIOS:
        cells = [res[k][s] for k in ("ours", "off", "plain", "floor")]
        rps = [f"{c['rps']:.1f} ({c['rps_min']:.0f}-{c['rps_max']:.0f})" for c in cells[:3]]
        lines.append(
            f"| {s}: req/s (window range) | " + " | ".join(rps) + f" | {cells[3]['rps']:.1f} |"
        )
        if s != "1 record":
            lines.append(
                f"| {s}: records/s | "
                + " | ".join(f"{c['records_per_s']:.0f}" for c in cells)
                + " |"
            )
        lines.append(f"| {s}: p50 (ms) | " + " | ".join(ms(c["p50_us"]) for c in cells) + " |")
        lines.append(f"| {s}: p99 (ms) | " + " | ".join(ms(c["p99_us"]) for c in cells) + " |")
        lines.append(
            f"| {s}: non-2xx | " + " | ".join(str(c["non_2xx"]) for c in cells[:3]) + " | - |"
        )
    mib = 1024**2
    peaks = [max(res[k][s]["peak_rss_bytes"] for s in SCENARIOS) for k in ("ours", "off", "plain")]
    lines.append(
        "| peak RSS under load, process tree (MiB) | "
        + " | ".join(f"{p / mib:.0f}" for p in peaks)
        + " | - |"
    )
    load = res["load"]
    lines.append(
        f"| load test ({load['seconds']} s, {load['clients']} clients, mixed sizes, 1 in "
        f"{round(1 / load['expected_4xx_share'])} requests invalid) | "
        f"{load['requests']} requests, {load['rps']:.1f} req/s, 5xx {load['n5xx']}, "
        f"4xx {load['n4xx']} (rejections counted {load['rejections_counted']:.0f}), "
        f"socket errors {load['socket_errors']}, "
        f"peak RSS {load['peak_rss_bytes'] / mib:.0f} MiB, automl_* series "
        f"{load['series_at_start']} at start, {load['series_before']} -> "
        f"{load['series_after']} | - | - | - |"
    )
    lines += ["", "| ratio | value | goal | met | note |", "|---|---|---|---|---|"]
    for r in ratios(res):
        flag = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"| {r['measure']} | {r['value']} | {r['goal']} | {flag} | {r['note']} |")
    arg = "honoured" if res["off_arg_honoured"] else "ignored by the built Bento"
    lines += [
        "",
        f"Monitoring off: `{' '.join(res['off_command'])}` (`bentoml serve TAG --arg "
        f"monitoring=false`: {arg}). Largest probability difference between the three "
        f"servers on 100 records: {res['max_abs_proba_diff']:.1e}. Our service scores with "
        + (
            "the serving model (the fitted model behind its faster path, checked at start)."
            if res["floor"]["serving_model"]
            else "the fitted model through sklearn (no faster path for this model)."
        ),
    ]
    return "\n".join(lines)


def main() -> str:
    wrk = require_wrk()
    OUT.mkdir(exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kfp-automl-serving-bench-") as home:
        # the servers' settings are their defaults, whatever AUTOML_* this shell exports
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_")}
        env.update(QUIET_ENV, BENTOML_HOME=home)
        summary = train(env)
        res = run_servers(wrk, env, home, summary)
    res["model_family"] = summary["best_model"]
    res["best_params"] = summary.get("best_params")
    res["elapsed_s"] = time.monotonic() - started
    res["ratios"] = ratios(res)
    table = render(res, summary)
    (OUT / "serving.md").write_text(table + "\n")
    (OUT / "serving.json").write_text(json.dumps(res, indent=2, default=str))
    print(table)
    print(f"serving bench done in {res['elapsed_s']:.0f} s", flush=True)
    return table


if __name__ == "__main__":
    main()
