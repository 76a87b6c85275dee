"""A real S3 HTTP endpoint on 127.0.0.1 for the tests: moto's server, one request at a time.

moto checks `If-Match` / `If-None-Match` on PutObject and answers 412 like S3, but it checks and
then stores in two steps; its threaded server could interleave two writers between them, which
S3 and MinIO never do. Served by a single-threaded WSGI server each request runs to the end
before the next one starts, so a conditional write is atomic as it is on the real stores.

`python -m tests.support.s3_server` prints the port it listens on, then serves until killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def main() -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start the server in its own process; yield its endpoint URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.s3_server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        port = proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the S3 test server did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@contextlib.contextmanager
def conditionless_proxy(endpoint: str) -> Iterator[str]:
    """A store that ignores conditional writes, as older S3-compatible servers do: a proxy to
    `endpoint` that drops If-Match / If-None-Match. Yields its URL."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    upstream = urlsplit(endpoint)

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("if-match", "if-none-match")
            }
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def s3_env(endpoint: str) -> dict[str, str]:
    """The AWS environment a step on a cluster would get from the Secret, for `endpoint`."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        # never ask the instance metadata service (a non-loopback address) for credentials
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def fresh_bucket(endpoint: str, monkeypatch, prefix: str, test_name: str):
    """A new bucket named after the test, the AWS environment of `endpoint` set for the test
    (no AWS_ENDPOINT_URL_S3, no $KFP_AUTOML_REGISTRY): (bucket name, botocore client)."""
    import botocore.session

    for key, value in s3_env(endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("KFP_AUTOML_REGISTRY", raising=False)
    client = botocore.session.get_session().create_client("s3", region_name="us-east-1")
    name = prefix + test_name.replace("_", "-")[:40].lower()
    client.create_bucket(Bucket=name)
    return name, client


if __name__ == "__main__":
    main()
