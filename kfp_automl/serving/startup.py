"""What `kfp-automl serve` checks before BentoML starts: failures that would otherwise come later.

Without these, a model file that does not load fails every worker at start, and BentoML's
process manager starts it again and again (a restart loop, nothing answering); a Prometheus
multiprocess directory that is read-only or full kills a worker with SIGBUS once
prometheus_client's memory-mapped files grow into space that is not there. Both become one
line naming the problem (a UserError: exit code 2) before anything listens.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from kfp_automl.errors import UserError

PROMETHEUS_DIR = "prometheus_multiproc_dir"  # BentoML's: $BENTOML_HOME/prometheus_multiproc_dir
# prometheus_client's files of one worker: five of 64 KiB that double as label sets grow (about
# 1.5 MiB for a model of 200 features); a replaced worker's files stay until the next start
PROMETHEUS_MB_PER_WORKER = 8
_PROBE = ".kfp-automl-space-check"


def check_model(bento: Any) -> None:
    """A UserError unless the Bento's model loads (digest checked, then unpickled).

    A model whose recorded package versions differ from the installed ones is not
    unpickled here either: the service starts unready and says why (service.py).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from kfp_automl.contracts.schema import Schema
    from kfp_automl.runtime.model_file import ModelIntegrityError, load_model
    from kfp_automl.runtime.packages import check_model_packages
    from kfp_automl.serving.files import SCHEMA_FILE

    tag = (bento.info.args or {}).get("model_tag")
    if not tag:
        raise UserError(
            f"Bento {bento.tag} names no model_tag argument; it was not built by kfp-automl"
        )
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise UserError(
            f"cannot serve {bento.tag}: its model {tag} is not in the BentoML store"
        ) from None
    meta = stored.info.metadata
    if check_model_packages(meta):
        return
    fix = (
        f"the copy in the BentoML store is damaged or was changed: remove it (`bentoml delete "
        f"{bento.tag}`, `bentoml models delete {stored.tag}`) and serve the .bento archive again"
    )
    try:
        Schema.read(stored.path_of(SCHEMA_FILE))
        load_model(stored.path, str(meta.get("sha256", "")))
    except ModelIntegrityError as exc:
        raise UserError(f"cannot serve {bento.tag}: {exc}; {fix}") from None
    except Exception as exc:  # whatever a damaged file raises while it is read or unpickled
        raise UserError(
            f"cannot serve {bento.tag}: its model {stored.tag} does not load "
            f"({type(exc).__name__}: {exc}); {fix}"
        ) from None


def prepare_prometheus_dir(path: Path, workers: int) -> None:
    """Make `path` an empty, writable directory with room for `workers` workers' metric files.

    BentoML empties the directory at start by deleting and re-creating it, and silently uses
    a temporary directory instead when it cannot (a mount point such as the Deployment's
    emptyDir cannot be deleted); emptying it here keeps the directory that was given. The
    room is proven by writing PROMETHEUS_MB_PER_WORKER MiB per worker (then removed): a full,
    read-only or size-limited directory fails here rather than with SIGBUS in a worker.
    """
    need = workers * PROMETHEUS_MB_PER_WORKER * 1024 * 1024
    what = f"the Prometheus multiprocess directory {path}"
    hint = (
        f"serving needs it writable with {need // 2**20} MiB free ({PROMETHEUS_MB_PER_WORKER} "
        "MiB per worker; on a cluster the prometheus-multiproc emptyDir's sizeLimit)"
    )
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} is not a directory; {hint}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():  # a previous run's files (of workers that are gone)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        _write_probe(path / _PROBE, need)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EFBIG:
            reason = "files there may not grow that large (RLIMIT_FSIZE)"
        free = _free_bytes(path)
        shown = "" if free is None else f" ({free // 2**20} MiB free)"
        raise UserError(f"{what} is not usable{shown}: {reason}; {hint}") from None


def _write_probe(probe: Path, size: int) -> None:
    """Write `size` real bytes (not a sparse file: tmpfs and quotas count written pages)."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    try:
        chunk = b"\0" * (1 << 20)
        with open(probe, "wb") as fh:
            for start in range(0, size, len(chunk)):
                fh.write(chunk[: size - start])
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            probe.unlink()
        raise
    else:
        probe.unlink()
    finally:
        signal.signal(signal.SIGXFSZ, previous)


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
