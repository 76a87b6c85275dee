"""A throwaway PostgreSQL server on 127.0.0.1 for the tests: Debian's `postgresql` package,
a new cluster made with initdb and run with pg_ctl, password authentication over TCP (as
a pod reaches its database), removed when the tests are done.

PostgreSQL refuses to run as root: as root, the cluster belongs to the package's `postgres`
user and its commands run as that user (runuser).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port

USER = "automl"
DATABASE = "automl"


def bin_dir() -> Path | None:
    """The directory of initdb/pg_ctl: Debian keeps them out of PATH, under
    /usr/lib/postgresql/<major>/bin (the newest one installed)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major, reverse=True)
    return Path(versions[0]).parent if versions else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


@dataclass
class Postgres:
    """A running server: `url` is what a serving pod gets from its Secret."""

    data: Path
    port: int
    password: str
    bin: Path
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        log = str(self.data / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as a crash would, without a checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def fresh_database(self) -> str:
        """A new empty database on this server; its URL."""
        import psycopg

        self._databases = getattr(self, "_databases", 0) + 1
        name = f"t{self._databases}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def sql(self, query: str, url: str | None = None) -> list[tuple]:
        """Run `query` as the application user; its rows."""
        import psycopg

        with psycopg.connect(url or self.url, autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []


def start_postgres(durable: bool = False) -> Postgres:
    """initdb a new cluster in a fresh directory and start it on a free port (`durable`:
    with fsync, as a production server runs, for benchmarks)."""
    binaries = bin_dir()
    if binaries is None:
        raise RuntimeError(
            "PostgreSQL's server is not installed (no pg_ctl): `make system-deps` installs "
            "the Debian package postgresql"
        )
    run_as = None
    base = Path(tempfile.mkdtemp(prefix="automl-pg-"))
    if os.geteuid() == 0:
        run_as = "postgres"
        account = pwd.getpwnam(run_as)
        os.chmod(base, 0o755)
        os.chown(base, account.pw_uid, account.pw_gid)
    data = base / "data"
    password = secrets.token_hex(16)
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    if run_as:
        account = pwd.getpwnam(run_as)
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    server = Postgres(data, free_port(), password, binaries, run_as)
    server._run(
        "initdb", "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
        "--encoding=UTF8", "--locale=C.UTF-8",
    )  # fmt: skip
    pwfile.unlink()
    with open(data / "postgresql.conf", "a") as fh:
        # a test server: small, and no fsync (the tests kill it, they do not pull the plug)
        fh.write("shared_buffers = 32MB\nmax_connections = 60\n")
        if not durable:
            fh.write("fsync = off\n")
    server.start()
    import psycopg

    admin = server.url.rsplit("/", 1)[0] + "/postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def remove(server: Postgres) -> None:
    server.stop("immediate")
    shutil.rmtree(server.data.parent, ignore_errors=True)
