"""Starting, waiting for and stopping the real servers the tests talk to (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import psutil
import yaml

CLI = [sys.executable, "-m", "kfp_automl.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll `predicate` until it returns something true (returned), or fail naming `what`."""
    import pytest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def json_records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN becomes null."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(
                f"server exited with {proc.returncode} before {url} was ready:\n{out[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f} s")


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server in its own process group (so stop() reaches its children), output captured."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group; SIGKILL it if it has not gone in 30 s.

    BentoML's workers start sessions of their own, outside the group: they are found before
    the SIGTERM, and any still alive once the server has gone are killed too, so no worker
    outlives its test (holding a port, memory and the Prometheus directory)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def serve(bento_tag: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`kfp-automl serve` on a free port; yields its base URL.

    Servers sharing a BENTOML_HOME share BentoML's Prometheus directory, which a starting
    server empties: a server started beside the session's own gets `env` with a
    BENTOML_HOME of its own.
    """
    port = free_port()
    proc = start([*CLI, "serve", "--model", bento_tag, "--port", str(port), *extra], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc)
        yield base
    finally:
        stop(proc)


@contextlib.contextmanager
def prometheus(workdir: Path, target: str, rules_text: str, interval: str = "1s") -> Iterator[str]:
    """A real Prometheus server scraping `target` (host:port) and evaluating `rules_text`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError(
            "prometheus is not installed: run `make system-deps` (Debian package prometheus)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "rules.yaml").write_text(rules_text)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(workdir / "rules.yaml")],
        "scrape_configs": [{"job_name": "automl", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = start(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/-/ready", proc, timeout_s=60)
        yield base
    finally:
        stop(proc)
