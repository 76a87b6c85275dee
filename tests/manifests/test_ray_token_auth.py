"""The RayCluster's token authentication, run for real: a Ray head on 127.0.0.1 started with
exactly the Ray environment variables manifests/tuning/raycluster.yaml sets (the Secret's
value replaced by a fresh token), its dashboard on, as KubeRay starts it.

- A driver (GCS and raylet RPCs) with a wrong token is refused; with the right one it runs.
- The dashboard port (8265), where the tune step submits its Ray job and the only Ray port
  the NetworkPolicy opens to pipeline pods: the Jobs API answers 401 without a token and 403
  with a wrong one (in `Authorization`, `X-Ray-Authorization` or the cookie), creates no job
  for either, and runs the job submitted with the right token. A path that climbs out of a
  public prefix does not get around it. Only the health endpoints the manifest's probes use
  (and the static UI) answer without a token, as Ray 2.60's dashboard lists them
  (ray/dashboard/http_server_head.py: public_exact_paths).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest
import requests

from tests.manifests.render import one, pod_specs, render
from tests.support.ray_cluster import ray_cluster

pytestmark = pytest.mark.slow

JOIN = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("answer", ray.get(ray.remote(lambda: 6 * 7).remote()))
"""
TOKEN = secrets.token_hex(32)
WRONG = secrets.token_hex(32)


def _head_env(token: str) -> dict[str, str]:
    """The head container's RAY_* variables, the Secret's value replaced by `token`."""
    cluster = one(render("tuning"), "RayCluster")
    (_, head, _), *_ = pod_specs(cluster)
    env = {}
    for e in head["containers"][0]["env"]:
        if e["name"].startswith("RAY_"):
            env[e["name"]] = token if "valueFrom" in e else e["value"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == token
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    home = tmp_path_factory.mktemp("ray-home")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env = {**base, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **_head_env(TOKEN)}
    with ray_cluster(env, workers=0, cpus=1, dashboard=True) as cluster:
        yield cluster, home


def _join(address: str, env: dict[str, str], home) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run(
        [sys.executable, "-c", JOIN, address],
        env={**base, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_a_driver_needs_the_token(head):
    cluster, home = head
    ok = _join(cluster.gcs_address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}, home)
    assert "answer 42" in ok.stdout, ok.stdout + ok.stderr[-3000:]
    # a refused driver retries once a second, 20 times by default; 2 are enough here
    refused = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": WRONG}
    wrong = _join(cluster.gcs_address, {**refused, "RAY_gcs_server_port_wait_time_s": "2"}, home)
    assert wrong.returncode != 0
    assert "InvalidAuthToken" in wrong.stderr


def _jobs(url: str, **headers: str) -> requests.Response:
    return requests.get(f"{url}/api/jobs/", headers=headers, timeout=10)


def _submit(url: str, **headers: str) -> requests.Response:
    job = {"entrypoint": "echo submitted-with-the-token", "runtime_env": {}}
    return requests.post(f"{url}/api/jobs/", json=job, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": f"Bearer {WRONG}"}, 403),
        ({"Authorization": WRONG}, 403),  # no scheme
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 403),  # one character short
        ({"X-Ray-Authorization": f"Bearer {WRONG}"}, 403),
        ({"Cookie": f"ray-authentication-token={WRONG}"}, 403),
    ],
    ids=["none", "wrong", "no-scheme", "truncated", "x-ray-header", "cookie"],
)
def test_the_jobs_api_refuses_a_missing_or_wrong_token_and_creates_nothing(head, headers, status):
    cluster, _ = head
    assert _submit(cluster.jobs_url, **headers).status_code == status
    assert _jobs(cluster.jobs_url, **headers).status_code == status
    listed = _jobs(cluster.jobs_url, Authorization=f"Bearer {TOKEN}")
    assert listed.status_code == 200
    assert not [j for j in listed.json() if "submitted-with-the-token" in j["entrypoint"]]


@pytest.mark.parametrize(
    "path",
    ["/static/../api/jobs/", "/static/%2e%2e/api/jobs/", "/api/healthz/../jobs/", "//api/jobs/"],
)
def test_a_path_out_of_a_public_prefix_is_not_let_through(head, path):
    cluster, _ = head
    r = requests.get(f"{cluster.jobs_url}{path}", timeout=10)
    assert r.status_code in (401, 403, 404), (path, r.status_code, r.text[:200])


def test_the_probes_endpoints_are_public_and_nothing_else_is(head):
    cluster, _ = head
    # the head's readiness probe (raycluster.yaml) asks without a token
    assert requests.get(f"{cluster.jobs_url}/api/gcs_healthz", timeout=10).status_code == 200
    for path in ("/api/version", "/api/jobs/", "/nodes?view=summary", "/api/cluster_status"):
        assert requests.get(f"{cluster.jobs_url}{path}", timeout=10).status_code == 401, path


def test_the_jobs_api_runs_the_job_submitted_with_the_token(head):
    cluster, _ = head
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = _submit(cluster.jobs_url, **auth)
    assert r.status_code == 200, r.text
    job_id = r.json()["submission_id"]
    deadline, status = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        status = requests.get(f"{cluster.jobs_url}/api/jobs/{job_id}", headers=auth, timeout=10)
        status = status.json()["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.5)
    assert status == "SUCCEEDED"
    logs = requests.get(f"{cluster.jobs_url}/api/jobs/{job_id}/logs", headers=auth, timeout=10)
    assert "submitted-with-the-token" in logs.json()["logs"]
