"""The serving pod's start, on one machine: `fetch-bento` copies the pipeline's real .bento
archive (from a path and from a local HTTP server), then `kfp-automl serve` runs it from
an EMPTY BentoML store, as the init container and the main container do in the pod.
The served /metrics carry every series the dashboard and the autoscalers read."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.manifests.promql import BENTOML_SERIES, dashboard_queries, metric_names
from tests.support.servers import CLI, free_port, json_records, serve, stop, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture
def http_store(pipeline_run):
    """A local HTTP server (the standard library's) serving the run's output folder."""
    archive = Path(pipeline_run[1]["bento_archive"])
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            requests.append(self.requestline)

    handler = functools.partial(Handler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", archive, requests
    finally:
        server.shutdown()
        server.server_close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(url: str, dest: Path, sha256: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "fetch-bento", "--url", url, "--dest", str(dest), "--sha256", sha256],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fetch_from_a_path(pipeline_run, tmp_path):
    archive = Path(pipeline_run[1]["bento_archive"])
    dest = tmp_path / "bento" / "model.bento"
    done = _fetch(str(archive), dest, _sha256(archive))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == archive.read_bytes()
    assert f"fetched Bento {pipeline_run[1]['bento_tag']}" in done.stdout


def test_fetch_from_kfp_minio_url(pipeline_run, tmp_path):
    """KFP's default pipeline root names its MinIO store `minio://`: fetch-bento reads it as
    S3 at AWS_ENDPOINT_URL (a real S3 server on 127.0.0.1 here)."""
    import os

    import botocore.session

    from tests.support.s3_server import s3_env, s3_server

    archive = Path(pipeline_run[1]["bento_archive"])
    with s3_server() as endpoint:
        env = {**os.environ, **s3_env(endpoint)}
        client = botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="mlpipeline")
        key = "v2/artifacts/training/run-1/package/bento_archive"
        client.put_object(Bucket="mlpipeline", Key=key, Body=archive.read_bytes())
        dest = tmp_path / "model.bento"
        cmd = [*CLI, "fetch-bento", "--dest", str(dest), "--sha256", _sha256(archive), "--url"]
        done = subprocess.run(
            [*cmd, f"minio://mlpipeline/{key}"], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert dest.read_bytes() == archive.read_bytes()
        missing = subprocess.run(
            [*cmd, "minio://mlpipeline/nope.bento"], capture_output=True, text=True, env=env
        )
        assert missing.returncode == 2
        assert "no Bento archive at minio://mlpipeline/nope.bento" in missing.stderr
        assert "Traceback" not in missing.stderr


def test_fetch_over_http_then_serve_from_an_empty_store(http_store, tmp_path, monkeypatch):
    base, archive, requests = http_store
    missing = _fetch(f"{base}/no-such.bento", tmp_path / "x.bento", _sha256(archive))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: no Bento archive at {base}/no-such.bento")
    assert not (tmp_path / "x.bento").exists()

    dest = tmp_path / "bento" / "model.bento"
    done = _fetch(f"{base}/{archive.name}", dest, _sha256(archive))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == archive.read_bytes()
    assert any(r.startswith(f"GET /{archive.name} ") for r in requests), requests

    home = tmp_path / "bentoml-home"  # the pod's emptyDir: nothing imported yet
    home.mkdir()
    monkeypatch.setenv("BENTOML_HOME", str(home))
    rows = json_records(_rows())
    with serve(str(dest)) as url:
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        answer = httpx.post(f"{url}/predict", json={"records": rows}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()) == len(rows)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert list((home / "bentos").iterdir())  # the archive was imported into the empty store

    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", metrics, flags=re.M))
    # the HPA's and KEDA's metric, for POST /predict
    assert re.search(r'bentoml_service_request_in_progress\{[^}]*endpoint="/predict"', metrics)
    assert exported >= BENTOML_SERIES
    # every raw series the dashboard reads (automl:* are recording rules)
    read = set().union(*(metric_names(q) for q in dashboard_queries()))
    assert {n for n in read if ":" not in n} - exported == set()


# Run inside a private mount namespace (unshare): a tmpfs on /mnt holds the pod's emptyDirs
# (/mnt/bento with the archive, /mnt/bentoml as BENTOML_HOME, /mnt/tmp bound over /tmp);
# every other mount is made read-only, then the server runs with no capabilities and
# no_new_privs, as the container's securityContext asks.
_POD = r"""
set -eu
mount -t tmpfs -o size=1g tmpfs /mnt
mkdir -p /mnt/bento /mnt/bentoml /mnt/tmp
cp "$ARCHIVE" /mnt/bento/model.bento
awk '{print $2}' /proc/self/mounts | grep -v -E '^/(proc|sys|dev|mnt)(/|$)' | sort -u |
  while read -r mp; do mount -o remount,bind,ro "$mp" 2>/dev/null || true; done
# the code under test may itself live under /tmp (a fresh clone): keep it visible, read-only
for keep in "$REPO" "$PREFIX"; do
  case "$keep" in
    "$REPO"/*|"$REPO") [ "$keep" = "$REPO" ] || continue ;;
  esac
  case "$keep" in
    /tmp/*) mkdir -p "/mnt/tmp${keep#/tmp}"
            mount --bind "$keep" "/mnt/tmp${keep#/tmp}"
            mount -o remount,bind,ro "/mnt/tmp${keep#/tmp}" ;;
  esac
done
mount --rbind /mnt/tmp /tmp
for probe in /probe "$REPO/probe" "$VENV/probe"; do
  if touch "$probe" 2>/dev/null; then rm -f "$probe"; echo "$probe is writable"; exit 3; fi
done
exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all \
  env HOME=/tmp BENTOML_HOME=/mnt/bentoml PYTHONDONTWRITEBYTECODE=1 \
  "$PYTHON" -m kfp_automl.cli.main serve --model /mnt/bento/model.bento --host 127.0.0.1 --port "$PORT"
"""


def test_serve_with_a_read_only_root_filesystem_and_no_capabilities(pipeline_run, tmp_path):
    """What the pod's securityContext allows is enough: only the emptyDirs are writable."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to emulate a read-only root filesystem"
    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = {
        "ARCHIVE": pipeline_run[1]["bento_archive"],
        "REPO": str(root),
        "VENV": str(Path(sys.executable).parent),
        "PREFIX": sys.prefix,
        "PYTHON": sys.executable,
        "PORT": str(port),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "BENTOML_DO_NOT_TRACK": "true",
        # a serve-time setting from the pod's env (the dev overlay sets this one)
        "AUTOML_UNKNOWN_FIELDS": "reject",
    }
    proc = subprocess.Popen(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", _POD],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc)
        rows = json_records(_rows())
        answer = httpx.post(f"{base}/predict", json={"records": rows}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()) == len(rows)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert "automl_records_total" in metrics
        extra = [{**rows[0], "not_a_feature": 1}]
        refused = httpx.post(f"{base}/predict", json={"records": extra}, timeout=60)
        assert refused.status_code == 400
        assert refused.json()["error"]["field"] == "not_a_feature"
    finally:
        stop(proc)


@functools.cache
def _rows() -> pd.DataFrame:
    from kfp_automl.tables.io import DEFAULT_DATASET, read_table

    return read_table(DEFAULT_DATASET).drop(columns=["churn"]).head(5)
