"""Copying a .bento archive from the artifact store to a local file (`kfp-automl fetch-bento`).

The serving pod's init container runs it (manifests/serving/base/deployment.yaml), so a
new model version needs no image build: the pod fetches the archive the package step
wrote, then `kfp-automl serve --model <file>` imports it into an empty BentoML store.

Sources are fsspec URLs: a local path, file://, http(s)://, and s3:// (also KFP's
minio://, endpoint from AWS_ENDPOINT_URL) or gs:// when s3fs / gcsfs are installed (the
`storage` extra; the serving image has them). The copy goes to a temporary file beside the
destination and is renamed into place only after it proved to be a Bento archive, so the
destination is never half-written.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kfp_automl.errors import UserError

CHUNK_BYTES = 1 << 20


_EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def display_url(url: str) -> str:
    """`url` without credentials or a query string (a presigned URL's signature)."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _filesystem(url: str):
    import fsspec

    from kfp_automl.tables.io import fsspec_url

    try:
        return fsspec.core.url_to_fs(fsspec_url(url))
    except ImportError:
        scheme = urlsplit(url).scheme
        package = _EXTRAS.get(scheme, f"the fsspec implementation for {scheme}://")
        raise UserError(
            f"cannot read {scheme}:// URLs here: install {package} "
            "(pip install 'kfp-automl[storage]')"
        ) from None
    except ValueError as exc:
        raise UserError(f"--url {display_url(url)!r} is not a supported URL: {exc}") from None


def fetch(url: str, dest: str | Path) -> tuple[str, int]:
    """Copy the Bento archive at `url` to `dest` atomically; return (bento tag, bytes)."""
    from kfp_automl.bentos.lookup import _archive_tag
    from kfp_automl.files import atomic_path

    shown = display_url(url)
    if not url.strip():
        raise UserError("--url is empty: give the .bento archive's path or URL (BENTO_URL)")
    if url.startswith("$("):
        raise UserError(
            f"--url {url!r} was not expanded: set the environment variable it names "
            "on the container"
        )
    dest = Path(dest)
    if dest.is_dir():
        raise UserError(f"--dest {dest} is a directory; give the archive's file name")
    fs, path = _filesystem(url)
    size = 0
    with atomic_path(dest) as tmp:
        try:
            with fs.open(path, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
            remote = "" if "file" in protocols else " (or no answer from the server)"
            raise UserError(f"no Bento archive at {shown}{remote}") from None
        except PermissionError:
            raise UserError(f"not allowed to read {shown} (check the credentials)") from None
        except IsADirectoryError:
            raise UserError(f"{shown} is a directory, not a .bento archive") from None
        except Exception as exc:  # network and object-store errors of any fsspec backend
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"cannot fetch {shown}: {detail}") from None
        try:
            tag = _archive_tag(tmp)
        except UserError as exc:
            raise UserError(str(exc).replace(str(tmp), shown)) from None
    return tag, size
