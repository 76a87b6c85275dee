"""Start-up failures of `kfp-automl serve` end at once: one line naming the problem, exit 2.

A model file damaged in the BentoML store or in the archive, and a Prometheus multiprocess
directory that is not a directory, read-only, full or size-limited (RLIMIT_FSIZE) would
otherwise give a worker restart loop with nothing answering, or a worker killed by SIGBUS
mid-traffic. The read-only and full directories are real tmpfs mounts, made in a user and
mount namespace of the server's own (`unshare`, no privileges needed); a directory without
write permission would not stop a root test run. A mount point holding a previous run's
files (an emptyDir after a container restart) is emptied and used, not swapped silently for
a temporary directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.support.servers import CLI, free_port, start, stop, wait_ready

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 60
PROMETHEUS = "prometheus_multiproc_dir"
MOUNT = 'mount -t tmpfs -o "$1" tmpfs "$2" && if [ -n "$3" ]; then : > "$2/$3"; fi && shift 3'


def _import(archive: Path, home: Path) -> Path:
    """Import `archive` into the BentoML store at `home`; return the model's directory there."""
    code = f"import bentoml; bentoml.import_bento({str(archive)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (model_dir,) = [p.parent for p in (home / "models").glob("*/*/model.joblib")]
    return model_dir


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:400] = b"\x00" * 300
    path.write_bytes(bytes(data))


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], timeout=10
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _in_tmpfs(directory: Path, options: str, stale_file: str = "") -> list[str]:
    """A prefix running the command with a tmpfs (`options`) mounted at `directory`."""
    if not _unshare_works():
        pytest.skip("user namespaces are not available here (`unshare --user` fails)")
    directory.mkdir(parents=True, exist_ok=True)
    script = MOUNT + ' && exec "$@"'
    return [
        *("unshare", "--user", "--map-root-user", "--mount"),
        *("sh", "-c", script, "sh", options, str(directory), stale_file),
    ]


def _serve_exits(
    archive: Path, home: Path, *flags: str, prefix: list[str] | None = None, preexec=None
) -> tuple[int, str, str]:
    """Run `kfp-automl serve` to its end: (exit code, stdout, stderr); fail if it keeps running."""
    port = free_port()
    cmd = [*(prefix or []), *CLI, "serve", "--model", str(archive), "--port", str(port), *flags]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BENTOML_HOME": str(home)},
        start_new_session=True,
        preexec_fn=preexec,
    )
    start_s = time.monotonic()
    try:
        out, err = proc.communicate(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        _end(proc)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"still running after {EXIT_WITHIN_S} s:\n{(out + err)[-3000:]}")
    assert time.monotonic() - start_s < EXIT_WITHIN_S
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing listens
    return proc.returncode, out, err


def _end(proc: subprocess.Popen) -> None:
    """Stop a server that did not exit, workers included (BentoML starts them in sessions of
    their own, out of reach of the process group)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs([psutil.Process(proc.pid), *tree], timeout=30)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


def _one_line_error(code: int, out: str, err: str, *phrases: str) -> str:
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, (out + err)[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def test_a_model_file_damaged_in_the_store_stops_serve_with_one_line(small_bento, home):
    model_dir = _import(small_bento, home)
    _damage(model_dir / "model.joblib")
    line = _one_line_error(*_serve_exits(small_bento, home), "model.joblib", "sha256")
    assert "bentoml models delete" in line  # how to get out of it


def test_a_model_that_matches_its_digest_but_does_not_load_stops_serve(small_bento, home):
    """Damaged before its digest was recorded: the digest check passes, unpickling fails."""
    model_dir = _import(small_bento, home)
    _damage(model_dir / "model.joblib")
    info = yaml.safe_load((model_dir / "model.yaml").read_text())
    info["metadata"]["sha256"] = hashlib.sha256(
        (model_dir / "model.joblib").read_bytes()
    ).hexdigest()
    (model_dir / "model.yaml").write_text(yaml.safe_dump(info))
    _one_line_error(*_serve_exits(small_bento, home), "does not load")


def test_a_model_file_damaged_in_the_archive_stops_serve_with_one_line(small_bento, home, tmp_path):
    damaged = tmp_path / "damaged.bento"
    with tarfile.open(small_bento) as src, tarfile.open(damaged, "w:xz", preset=0) as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name.endswith("/model.joblib"):
                data = data[:100] + b"\x00" * 300 + data[400:]  # type: ignore[index]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    digest = hashlib.sha256(damaged.read_bytes()).hexdigest()
    code, out, err = _serve_exits(damaged, home, "--sha256", digest)
    _one_line_error(code, out, err, "model.joblib", "sha256")


def test_a_file_where_the_prometheus_directory_belongs_stops_serve(small_bento, home):
    home.mkdir(parents=True)
    (home / PROMETHEUS).write_text("not a directory")
    _one_line_error(*_serve_exits(small_bento, home), PROMETHEUS, "not a directory", "MiB")


def test_a_read_only_prometheus_directory_stops_serve(small_bento, home):
    prefix = _in_tmpfs(home / PROMETHEUS, "ro,size=16m")
    _one_line_error(*_serve_exits(small_bento, home, prefix=prefix), PROMETHEUS, "Read-only")


def test_a_full_prometheus_directory_stops_serve_before_serving(small_bento, home):
    prefix = _in_tmpfs(home / PROMETHEUS, "size=1m")
    code, out, err = _serve_exits(small_bento, home, prefix=prefix)
    _one_line_error(code, out, err, PROMETHEUS, "No space left", "8 MiB")


def test_room_for_every_worker_is_checked(small_bento, home):
    prefix = _in_tmpfs(home / PROMETHEUS, "size=20m")
    code, out, err = _serve_exits(small_bento, home, "--workers", "3", prefix=prefix)
    _one_line_error(code, out, err, PROMETHEUS, "24 MiB")


def test_a_file_size_limit_below_what_metrics_need_stops_serve(small_bento, home):
    """RLIMIT_FSIZE (set for the server's processes) stands in for a size-limited volume."""
    limit = 4 * 1024 * 1024  # over the Bento's own files, under the metrics' 8 MiB

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, out, err = _serve_exits(small_bento, home, preexec=preexec)
    _one_line_error(code, out, err, PROMETHEUS, "RLIMIT_FSIZE")


@contextlib.contextmanager
def _server(cmd: list[str], home: Path, port: int) -> Iterator[subprocess.Popen]:
    proc = start(cmd, env={"BENTOML_HOME": str(home)})
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        yield proc
    finally:
        stop(proc)


def test_a_mounted_prometheus_directory_with_old_files_is_emptied_and_used(small_bento, home):
    """A container restart finds its emptyDir full of the last run's files: it is kept."""
    directory = home / PROMETHEUS
    prefix = _in_tmpfs(directory, "size=16m", stale_file="counter_1.db")
    port = free_port()
    cmd = [*prefix, *CLI, "serve", "--model", str(small_bento), "--port", str(port)]
    with _server(cmd, home, port) as proc:
        workers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "_bentoml_impl.worker.service" in " ".join(p.cmdline())
        ]
        assert workers
        for worker in workers:
            assert worker.environ()["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert metrics.status_code == 200 and "automl_" in metrics.text
    shutil.rmtree(home, ignore_errors=True)
