"""Copying a .bento archive from the artifact store to a local file (`kfp-automl fetch-bento`).

The serving pod's init container runs it (manifests/serving/base/deployment.yaml), so a
new model version needs no image build: the pod fetches the archive the package step
wrote, then `kfp-automl serve --model <file>` imports it into an empty BentoML store.

Sources (an allow-list): a local path, file://, http(s)://, and s3:// (also KFP's minio://,
endpoint from AWS_ENDPOINT_URL) or gs:// when s3fs / gcsfs are installed (the `storage`
extra; the serving image has them). The archive must have the SHA-256 recorded outside it
(`--sha256`, env BENTO_SHA256: the deploy step sets it from the release, which has it from the
package step's registry entry). The copy goes to a temporary file beside the destination,
capped at `--max-mb`; it is renamed into place only after its digest matched and its members
passed the checks of kfp_automl/registry/archive.py, so the destination is never half-written
and never holds an archive that was refused.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from kfp_automl.errors import UserError
from kfp_automl.registry.archive import (
    ArchiveInfo,
    Limits,
    check_digest,
    check_source,
    copy_capped,
    display_url,
    verify_archive,
)
from kfp_automl.runtime.model_file import parse_sha256

__all__ = ["display_url", "fetch"]

_EXTRAS = {"s3": "s3fs", "gs": "gcsfs"}


def _filesystem(url: str):
    import fsspec

    from kfp_automl.tables.io import fsspec_url

    try:
        return fsspec.core.url_to_fs(fsspec_url(url))
    except ImportError:
        scheme = urlsplit(fsspec_url(url)).scheme
        package = _EXTRAS.get(scheme, f"the fsspec implementation for {scheme}://")
        raise UserError(
            f"cannot read {scheme}:// URLs here: install {package} "
            "(pip install 'kfp-automl[storage]')"
        ) from None
    except ValueError as exc:
        raise UserError(f"--url {display_url(url)!r} is not a supported URL: {exc}") from None


def expected_digest(sha256: str) -> str:
    """The --sha256 / BENTO_SHA256 value, checked."""
    if sha256.startswith("$("):
        raise UserError(
            f"--sha256 {sha256!r} was not expanded: set the environment variable it names "
            "(BENTO_SHA256) on the container"
        )
    if not sha256.strip():
        raise UserError(
            "--sha256 is empty: give the archive's sha256 as recorded in the registry "
            "(BENTO_SHA256; the deploy step sets it from the release)"
        )
    return parse_sha256(sha256)


def fetch(url: str, dest: str | Path, sha256: str, limits: Limits | None = None) -> ArchiveInfo:
    """Copy the Bento archive at `url` to `dest` atomically, only if its digest is `sha256` and
    its members pass the archive checks; return what it holds."""
    from kfp_automl.files import atomic_path

    limits = limits or Limits()
    shown = display_url(url)
    if not url.strip():
        raise UserError("--url is empty: give the .bento archive's path or URL (BENTO_URL)")
    if url.startswith("$("):
        raise UserError(
            f"--url {url!r} was not expanded: set the environment variable it names "
            "on the container"
        )
    check_source(url)
    expected = expected_digest(sha256)
    dest = Path(dest)
    if dest.is_dir():
        raise UserError(f"--dest {dest} is a directory; give the archive's file name")
    fs, path = _filesystem(url)
    with atomic_path(dest) as tmp:
        try:
            with fs.open(path, "rb") as src, open(tmp, "wb") as out:
                size, actual = copy_capped(src, out, limits.max_archive_bytes, shown)
        except UserError:
            raise
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
        check_digest(actual, expected, shown, "--sha256 / BENTO_SHA256")
        return verify_archive(tmp, expected, shown, limits, measured=(size, actual))
