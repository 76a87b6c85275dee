"""Trusting a .bento archive: its digest against one recorded outside it, then its members.

Every place that takes a .bento archive (`fetch-bento` in the serving pod, `serve` and
`predict --model X.bento`, the gate importing the registry's champion, `deploy` reading a local
archive) goes through `verify_archive` before BentoML sees the file:

1. the SHA-256 of the whole file is compared with the digest recorded outside it (the
   registry's `bento_sha256`, the release, a flag); a mismatch is refused before the archive
   is opened, so nothing of an archive that is not ours is unpacked, imported or unpickled;
2. the tar stream is read once, member by member, without extracting anything: only regular
   files and folders, relative paths without `..`, each name once, at most `max_members`, and
   the declared sizes may add up to at most `Limits.unpacked_limit(archive size)`. The
   decompressed bytes read are counted too, so a decompression bomb stops at the limit;
3. `bento.yaml` (at most 1 MiB) names the Bento (name:version).

Sources come through an allow-list of schemes (`check_source`), and a download is capped
(`copy_capped`). Standard library only, plus PyYAML for bento.yaml; messages are one line.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from kfp_automl.errors import UserError

MB = 1_000_000
MAX_ARCHIVE_MB = 2048.0  # the serving pod's /bento emptyDir holds 2 GiB
MAX_UNPACKED_MB = 4096.0  # its BentoML home holds 4 GiB
MAX_RATIO = 100.0  # unpacked/archive: xz packs a model 2-10x; a bomb packs zeros 1000x+
RATIO_FLOOR_MB = 64.0  # a small archive may always unpack to this much
MAX_MEMBERS = 10_000  # a Bento of this project holds about 60
MAX_BENTO_YAML = 1 << 20
CHUNK = 1 << 20

# local paths, and the stores a pipeline root or a web server can be
SCHEMES = ("", "file", "s3", "minio", "gs", "http", "https")
SCHEMES_TEXT = "a path, file://, s3://, minio://, gs://, http:// or https://"

_MAGIC = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
)
_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
}


class ArchiveRefused(UserError):
    """The archive is not one this project accepts; the message is one line saying why."""


@dataclass(frozen=True)
class Limits:
    """What an archive may weigh, in MB (10**6 bytes)."""

    max_archive_mb: float = MAX_ARCHIVE_MB
    max_unpacked_mb: float = MAX_UNPACKED_MB
    max_ratio: float = MAX_RATIO
    max_members: int = MAX_MEMBERS

    @property
    def max_archive_bytes(self) -> int:
        return int(self.max_archive_mb * MB)

    def unpacked_limit(self, archive_bytes: int) -> int:
        """The most an archive of `archive_bytes` may unpack to."""
        by_ratio = max(RATIO_FLOOR_MB * MB, self.max_ratio * archive_bytes)
        return int(min(self.max_unpacked_mb * MB, by_ratio))


@dataclass(frozen=True)
class ArchiveInfo:
    """What `verify_archive` found: the Bento's tag, the file's digest, what it unpacks to."""

    tag: str
    sha256: str
    size: int
    members: int
    unpacked: int
    compression: str  # BentoML's input_format for it: "xz", "gz", "bz2" or "tar"


def check_source(url: str, what: str = "--url") -> None:
    """Refuse any source but a local path or one of SCHEMES (no chained `a::b` URLs)."""
    shown = display_url(url)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if len(scheme) == 1:  # a Windows drive letter is a path
        scheme = ""
    if "::" in url or scheme not in SCHEMES or (not scheme and ":" in url.split("/", 1)[0]):
        raise UserError(f"{what} {shown!r} is not a supported URL: use {SCHEMES_TEXT}")


def display_url(url: str) -> str:
    """`url` without credentials or a query string (a presigned URL's signature)."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return url
    netloc = parts.hostname or ""
    try:
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:  # not a host:port (a chained fsspec URL)
        netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def copy_capped(src: IO[bytes], out: IO[bytes], max_bytes: int, shown: str) -> tuple[int, str]:
    """Copy `src` to `out`, at most `max_bytes`; return (bytes, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ArchiveRefused(
                f"{shown} is larger than the {max_bytes / MB:g} MB limit (--max-mb); "
                "nothing was written"
            )
        digest.update(chunk)
        out.write(chunk)
    return size, digest.hexdigest()


def sha256_of(path: str | Path) -> tuple[int, str]:
    """(size, sha256 hex) of the file at `path`."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def check_digest(actual: str, expected: str, shown: str, recorded: str = "") -> None:
    """A one-line refusal naming both digests unless they are equal."""
    if actual != expected:
        where = f" ({recorded})" if recorded else ""
        raise ArchiveRefused(
            f"{shown} has sha256 {actual}, but {expected} is recorded for it{where}; "
            "refusing it (the archive is not the one that was registered)"
        )


def verify_archive(
    path: str | Path,
    expected_sha256: str | None,
    shown: str = "",
    limits: Limits | None = None,
    recorded: str = "",
    measured: tuple[int, str] | None = None,
) -> ArchiveInfo:
    """Check the archive at `path` (see the module docstring) and return what it holds.

    `expected_sha256` None checks no digest (the caller decided it has none to check);
    `recorded` says where the expected digest comes from, for the message; `measured` is the
    file's (size, sha256) when the caller computed them while writing it.
    """
    limits = limits or Limits()
    shown = shown or str(path)
    size, actual = measured or sha256_of(path)
    if expected_sha256 is not None:
        check_digest(actual, expected_sha256, shown, recorded)
    if size > limits.max_archive_bytes:
        raise ArchiveRefused(
            f"{shown} is larger than the {limits.max_archive_mb:g} MB limit (--max-mb)"
        )
    with open(path, "rb") as raw:
        compression = _compression(raw.read(6))
        raw.seek(0)
        tag, members, unpacked = _scan(raw, compression, size, limits, shown)
    return ArchiveInfo(tag, actual, size, members, unpacked, compression)


def _compression(magic: bytes) -> str:
    return next((name for prefix, name in _MAGIC if magic.startswith(prefix)), "tar")


class _Bounded:
    """A read-only stream that refuses to give more than `limit` bytes."""

    def __init__(self, stream: Any, limit: int, on_limit: Any):
        self.stream, self.limit, self.read_bytes, self.on_limit = stream, limit, 0, on_limit

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n if n is not None and n >= 0 else CHUNK)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            self.on_limit()
        return data


def _decompressed(raw: IO[bytes], compression: str) -> Any:
    if compression == "xz":
        return lzma.LZMAFile(raw)
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw)
    if compression == "bz2":
        return bz2.BZ2File(raw)
    return raw


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why `member` may not be in a Bento archive, or None."""
    if member.type in _TYPES:
        return _TYPES[member.type]
    if not (member.isfile() or member.isdir()):
        return f"a tar member of type {member.type!r}"
    name = member.name
    if not name or "\0" in name or "\\" in name:
        return "an unusable name"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a path with '..'"
    return None


def _normal(name: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    return "/".join(parts)


def _scan(
    raw: IO[bytes], compression: str, size: int, limits: Limits, shown: str
) -> tuple[str, int, int]:
    """Read the tar stream once: (tag, members, declared unpacked bytes)."""
    import yaml

    limit = limits.unpacked_limit(size)

    def too_large() -> None:
        raise ArchiveRefused(
            f"{shown} is refused: its members unpack to more than {limit / MB:g} MB "
            f"(a {size / MB:.2g} MB archive may unpack to at most {limits.max_ratio:g}x its size "
            f"or {RATIO_FLOOR_MB:g} MB, and {limits.max_unpacked_mb:g} MB in all: "
            "--max-ratio, --max-unpacked-mb)"
        )

    # headers and padding add a little to the members' own bytes
    stream = _Bounded(_decompressed(raw, compression), limit + 1024 * limits.max_members, too_large)
    seen: set[str] = set()
    total = count = 0
    info: Any = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                count += 1
                if count > limits.max_members:
                    raise ArchiveRefused(
                        f"{shown} is refused: it holds more than {limits.max_members} members"
                    )
                problem = _member_problem(member)
                if problem:
                    raise ArchiveRefused(
                        f"{shown} is refused: member {member.name[:200]!r} is {problem} "
                        "(a Bento archive holds regular files and folders under relative paths)"
                    )
                name = _normal(member.name)
                if name in seen and not member.isdir():
                    raise ArchiveRefused(
                        f"{shown} is refused: member {member.name[:200]!r} appears twice"
                    )
                seen.add(name)
                total += member.size
                if total > limit:
                    too_large()
                if name == "bento.yaml" and member.isfile():
                    if member.size > MAX_BENTO_YAML:
                        raise ArchiveRefused(f"{shown} is refused: its bento.yaml is over 1 MiB")
                    data = tar.extractfile(member)
                    info = yaml.safe_load(data.read()) if data is not None else None
    except ArchiveRefused:
        raise
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error, ValueError):
        raise ArchiveRefused(f"{shown} is not a Bento archive (not a readable tar file)") from None
    except yaml.YAMLError:
        raise ArchiveRefused(
            f"{shown} is not a Bento archive (no valid bento.yaml inside)"
        ) from None
    if count == 0:
        raise ArchiveRefused(f"{shown} is not a Bento archive (not a readable tar file)")
    try:
        tag = f"{info['name']}:{info['version']}"
    except (TypeError, KeyError):
        raise ArchiveRefused(
            f"{shown} is not a Bento archive (no valid bento.yaml inside)"
        ) from None
    return tag, count, total
