"""Distinct values cost a worker bounded memory: the fast path's category memo is bounded in bytes.

A client sending thousands of distinct long category values (each under the per-value limit the
server accepts) gets answers, and the worker keeps none of them: its resident memory stays near
where it was (kfp_automl/runtime/fast_path.py, MEMO_MAX_VALUE_BYTES and MEMO_MAX_BYTES).
"""

from __future__ import annotations

import httpx
import psutil
import pytest

from tests.adversarial.conftest import good_records, served
from tests.adversarial.probes import assert_ready, worker_rss

pytestmark = pytest.mark.slow

VALUE_CHARS = 1000  # long, and still a value the server accepts for a categorical feature
PER_REQUEST = 500
REQUESTS = 18  # 9,000 distinct values in each of the model's two categorical columns
# Measured on 2 cores: about 20 MiB of growth is the allocator's own after this traffic (1 MB
# bodies; the same values sent again grow it as much), the unbounded memo added ~75 MiB more
GROWTH_LIMIT = 40 * 1024 * 1024


def _server_pid(base: str) -> int:
    """The `bentoml serve` process (what `kfp-automl serve` became) listening on base's port."""
    port = base.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and "--port" in cmd and cmd[cmd.index("--port") + 1] == port:
            return proc.pid
    raise AssertionError(f"no server process for port {port}")


def _distinct(start: int, n: int) -> list[dict]:
    template = good_records(1)[0]
    out = []
    for i in range(start, start + n):
        tag = f"{i:08d}"
        out.append(
            {
                **template,
                "colour": (tag + "c" * VALUE_CHARS)[:VALUE_CHARS],
                "city": (tag + "t" * VALUE_CHARS)[:VALUE_CHARS],
            }
        )
    return out


def _post(client: httpx.Client, base: str, records: list[dict]) -> None:
    response = client.post(f"{base}/predict", json={"records": records})
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()) == len(records)


def test_many_distinct_long_values_leave_a_worker_near_its_memory(small_bento, tmp_path):
    with served(small_bento, tmp_path / "home") as base, httpx.Client(timeout=60) as client:
        pid = _server_pid(base)
        for i in range(3):  # the allocator's and the batch path's own first costs
            _post(client, base, _distinct(10_000_000 + i * PER_REQUEST, PER_REQUEST))
        before = worker_rss(pid)
        for i in range(REQUESTS):
            _post(client, base, _distinct(i * PER_REQUEST, PER_REQUEST))
        grown = worker_rss(pid) - before
        assert grown < GROWTH_LIMIT, f"workers grew by {grown / 2**20:.0f} MiB"
        assert_ready(base)
