"""A real Ray cluster for the tests: `ray start` processes on 127.0.0.1, a head and worker
nodes, Ray's token authentication on, optionally the head's dashboard with its Jobs API.

Every process started here is stopped when the block ends, whatever happened inside it:
each `ray start --block` runs in its own process group, and what Ray started below them
(raylets, workers, a job's driver in its own session) is found by parentage and killed too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.servers import free_port

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Cluster:
    gcs_address: str  # 127.0.0.1:PORT
    jobs_url: str  # http://127.0.0.1:PORT ("" without the dashboard)
    env: dict[str, str]  # what every node runs with (token included)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def descendants(self) -> list[psutil.Process]:
        found = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                found += psutil.Process(proc.pid).children(recursive=True)
        return found


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray head exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not listen on port {port} in {timeout:.0f}s")


_NODES = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
"""


def wait_for_nodes(address: str, env: dict, nodes: int, timeout: float = 90) -> None:
    """Until a driver joining `address` sees `nodes` live nodes."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [sys.executable, "-c", _NODES, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        last = probe.stdout.strip().splitlines()[-1:] or probe.stderr[-300:]
        if probe.returncode == 0 and int(probe.stdout.split()[-1]) >= nodes:
            return
        time.sleep(2)
    raise RuntimeError(f"Ray cluster at {address} not ready in {timeout:.0f}s: {last}")


def _wait_for_jobs_api(url: str, token: str, timeout: float = 60) -> None:
    """Until the dashboard answers the Jobs API's version request with the token."""
    import requests

    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            r = requests.get(
                f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=5
            )
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise RuntimeError(f"the Ray Jobs API at {url} did not answer in {timeout:.0f}s: {last}")


def _stop(cluster: Cluster) -> None:
    """SIGTERM each node's process group and everything below it; SIGKILL what is left."""
    below = cluster.descendants()
    for proc in cluster.procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for p in below:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(below, timeout=10)
    for proc in cluster.procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


@contextlib.contextmanager
def ray_cluster(
    env: dict[str, str], *, workers: int = 1, cpus: int = 1, dashboard: bool = False
) -> Iterator[Cluster]:
    """A head and `workers` worker nodes with `cpus` CPUs each, every node with `env` (which
    must carry RAY_AUTH_MODE=token and RAY_AUTH_TOKEN); the head's Jobs API if `dashboard`."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths are bounded
    common = [f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    common += ["--block", "--object-store-memory=100000000"]
    head = [RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}"]
    # the default ports of a second node (or another test's cluster) on this host would clash
    head += [f"--ray-client-server-port={free_port()}"]
    jobs_url = ""
    if dashboard:
        dash = free_port()
        head += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        head += [f"--dashboard-port={dash}"]
        jobs_url = f"http://127.0.0.1:{dash}"
    else:
        head += ["--include-dashboard=false"]
    cluster = Cluster(f"127.0.0.1:{port}", jobs_url, env)

    def start(cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*cmd, f"--dashboard-agent-listen-port={free_port()}", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        cluster.procs.append(proc)
        return proc

    try:
        _wait_for_port(port, start(head), timeout=90)
        for _ in range(workers):
            start([RAY, "start", f"--address=127.0.0.1:{port}"])
        wait_for_nodes(cluster.gcs_address, env, nodes=1 + workers)
        if dashboard:
            _wait_for_jobs_api(jobs_url, env["RAY_AUTH_TOKEN"])
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(temp, ignore_errors=True)
