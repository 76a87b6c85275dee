"""The RayCluster's token authentication, run for real: a Ray head on 127.0.0.1 started
with exactly the Ray environment variables manifests/tuning/raycluster.yaml sets (the
Secret's value replaced by a fresh token) refuses a driver with a wrong token and
accepts one with the right token."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.manifests.render import one, pod_specs, render
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

JOIN = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("answer", ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


def _head_env(token: str) -> dict[str, str]:
    cluster = one(render("tuning"), "RayCluster")
    (_, head, _), *_ = pod_specs(cluster)
    env = {}
    for e in head["containers"][0]["env"]:
        if e["name"].startswith("RAY_"):
            env[e["name"]] = token if "valueFrom" in e else e["value"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == token
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the head's process group, SIGKILL what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # children of the group die with it or right after
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _join(address: str, env: dict[str, str], home) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", JOIN, address],
        env={**os.environ, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_ray_head_with_the_manifest_env_requires_the_token(tmp_path):
    token = secrets.token_hex(32)
    port = free_port()
    # short: Ray's unix socket paths under it must stay within 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="kfpray-", dir="/tmp"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    head_env = {**base_env, "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--include-dashboard=false",
            "--num-cpus=1",
            f"--temp-dir={temp_dir}",
        ],
        env={**head_env, **_head_env(token)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, ended by _kill_group
    )
    try:
        # `ray start --block` prints this line once the head is up
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "will now block forever" in line:
                break
        else:
            output = "".join(seen)[-3000:]
            pytest.fail(f"ray start exited with {proc.wait()} before the head was up:\n{output}")
        address = f"127.0.0.1:{port}"
        ok = _join(address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, tmp_path)
        assert "answer 42" in ok.stdout, ok.stdout + ok.stderr[-3000:]
        # a refused driver retries once a second, 20 times by default; 2 are enough here
        refused = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}
        wrong = _join(address, {**refused, "RAY_gcs_server_port_wait_time_s": "2"}, tmp_path)
        assert wrong.returncode != 0
        assert "InvalidAuthToken" in wrong.stderr
    finally:
        _kill_group(proc)
    time.sleep(1)
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(temp_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert left == [], f"Ray processes left running: {left}"
    shutil.rmtree(temp_dir, ignore_errors=True)
