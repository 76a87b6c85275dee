"""The served Bento as a process: several workers, metrics that add up, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import psutil
import pytest

from tests.support.servers import CLI, free_port, json_records, serve, start, stop, wait_ready

pytestmark = pytest.mark.slow


def _series(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("automl_")
    }


def test_two_workers_share_one_set_of_correct_metrics(pipeline_run, small_churn_csv):
    _, summary, _ = pipeline_run
    rows = json_records(pd.read_csv(small_churn_csv).drop(columns=["churn"]).head(10))
    with serve(summary["bento_tag"], "--workers", "2") as base:
        port = int(base.rsplit(":", 1)[1])
        server = next(
            p
            for p in psutil.process_iter(["cmdline"])
            if str(port) in " ".join(p.info["cmdline"] or [])
        )
        assert len([c for c in server.children() if c.cmdline()]) >= 2  # two worker processes
        before = _series(base)
        with ThreadPoolExecutor(max_workers=8) as pool, httpx.Client(timeout=60) as client:
            codes = list(
                pool.map(
                    lambda _: client.post(f"{base}/predict", json={"records": rows}).status_code,
                    range(40),
                )
            )
        assert codes == [200] * 40
        after = _series(base)
        assert set(after) == set(before)  # no per-process series (no pid label), nothing new
        records = next(k for k in after if k.startswith("automl_records_total"))
        assert after[records] - before[records] == 400  # counted once, across both workers
        info = [k for k in after if k.startswith("automl_model_info")]
        assert len(info) == 1 and after[info[0]] == 1


def test_sigterm_lets_the_request_in_flight_finish(pipeline_run, small_churn_csv):
    _, summary, _ = pipeline_run
    rows = json_records(pd.read_csv(small_churn_csv).drop(columns=["churn"]))
    big = rows * 120  # ~48,000 records: long enough to be in flight when SIGTERM arrives
    port = free_port()
    serve_cmd = [*CLI, "serve", "--model", summary["bento_tag"], "--port", str(port)]
    # a request this large queues for longer than the default 1 s batch latency (503 by design)
    proc = start([*serve_cmd, "--max-body-mb", "64", "--max-latency-ms", "60000"])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/readyz", proc)
        answer: dict = {}
        body = json.dumps({"records": big}).encode()
        sent = threading.Event()

        def chunks():
            for i in range(0, len(body), 1 << 16):
                yield body[i : i + (1 << 16)]
            sent.set()  # the whole body is in the socket: the server is reading the request

        def post():
            try:
                answer["r"] = httpx.post(
                    f"{base}/predict",
                    content=chunks(),
                    headers={"content-type": "application/json", "content-length": str(len(body))},
                    timeout=120,
                )
            except httpx.HTTPError as exc:
                answer["error"] = exc

        t = threading.Thread(target=post)
        t.start()
        assert sent.wait(60), "the request body was not sent"
        time.sleep(0.1)
        assert t.is_alive(), f"the request finished before SIGTERM ({answer}); make it bigger"
        os.kill(proc.pid, signal.SIGTERM)
        t.join(timeout=120)
        assert "error" not in answer, answer.get("error")
        assert answer["r"].status_code == 200 and len(answer["r"].json()) == len(big)
        assert proc.wait(timeout=60) is not None  # and then it does stop
    finally:
        if proc.poll() is None:
            stop(proc)
