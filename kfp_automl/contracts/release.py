"""A release: the objects one model version was rolled out with, and what a deploy did.

- `Release` is recorded on the live Deployment (the annotation `kfp-automl.io/release`:
  gzip'd JSON, base64), so a later deploy can re-apply it on rollback. It also carries the
  release a failure of it rolls back to (`previous`, one level deep), so a deploy rerun after
  an attempt that applied the new version and then died still knows what was live before,
  and the SHA-256 of the version's .bento archive (`bento_sha256`, from the registry), which
  the serving pod's init container checks. Written and read by components/deploy;
  `kfp-automl deploy` and the pipeline's deploy step both go through it. Anyone who can edit
  the annotation can write anything into it: `decode` bounds what it reads (encoded and
  decoded size, object count, field types) and components/deploy/render.py `check_release`
  validates a decoded release like a new one before anything of it is applied.
- `DeployOutcome` is the deploy step's `release` artifact (JSON): deployed or not, why, the
  objects applied, the archive's digest, the version it replaced and the rollout's last state.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kfp_automl.contracts.errors import ContractError, expect
from kfp_automl.errors import UserError
from kfp_automl.files import write_json

RELEASE_ANNOTATION = "kfp-automl.io/release"
MAX_RELEASE_BYTES = 200 * 1024  # annotations of one object may total 256 KiB
MAX_DECODED_BYTES = 4 * 1024 * 1024  # the JSON a record may decompress to (no gzip bomb)
MAX_OBJECTS = 64  # objects in one release (the serving manifests hold about 10)
RELEASE_VERSION = 1


@dataclass(frozen=True)
class Release:
    """One version's rendered objects, in apply order."""

    version: str
    bento_url: str
    namespace: str
    name: str
    objects: list[dict[str, Any]]
    # what a failure of this release rolls back to (recorded without its own `previous`)
    previous: Release | None = None
    # the .bento archive's SHA-256 ("" in a record written before digests were recorded)
    bento_sha256: str = ""

    @property
    def deployment(self) -> dict[str, Any]:
        return next(
            o
            for o in self.objects
            if o.get("kind") == "Deployment" and o["metadata"].get("name") == self.name
        )

    def encode(self) -> str:
        """The release as one annotation value: gzip'd JSON, base64 (no namespace: the
        object it is recorded on has one)."""
        raw = json.dumps(self._record(), sort_keys=True, separators=(",", ":")).encode()
        value = base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")
        if len(value) > MAX_RELEASE_BYTES:
            raise UserError(
                f"manifests: the release record is {len(value) // 1024} KiB compressed, over the "
                f"{MAX_RELEASE_BYTES // 1024} KiB that fit in the {RELEASE_ANNOTATION} annotation"
            )
        return value

    def _record(self, nested: bool = True) -> dict[str, Any]:
        record: dict[str, Any] = {
            "format": RELEASE_VERSION,
            "version": self.version,
            "bento_url": self.bento_url,
            "name": self.name,
            "objects": self.objects,
        }
        if self.bento_sha256:
            record["bento_sha256"] = self.bento_sha256
        if nested and self.previous is not None:
            record["previous"] = self.previous._record(nested=False)
        return record

    @classmethod
    def _from_record(cls, record: Any, namespace: str, nested: bool = True) -> Release:
        expect(isinstance(record, dict), "not a JSON object")
        expect(record.get("format", 1) == RELEASE_VERSION, "a newer release format")
        for field in ("version", "bento_url", "name"):
            expect(isinstance(record.get(field), str), f"{field!r} is not a string")
        expect(isinstance(record.get("bento_sha256", ""), str), "'bento_sha256' is not a string")
        objects = record["objects"]
        expect(isinstance(objects, list), "'objects' is not a list")
        expect(
            len(objects) <= MAX_OBJECTS,
            f"{len(objects)} objects, more than the {MAX_OBJECTS} a release may hold",
        )
        expect(all(isinstance(o, dict) for o in objects), "an object is not a JSON object")
        previous = record.get("previous") if nested else None
        return cls(
            record["version"],
            record["bento_url"],
            namespace,
            record["name"],
            objects,
            cls._from_record(previous, namespace, nested=False) if previous is not None else None,
            record.get("bento_sha256", ""),
        )

    @classmethod
    def decode(
        cls, value: str, namespace: str, loads: Callable[[bytes], Any] = json.loads
    ) -> Release:
        """The release recorded in an annotation (ContractError when it is not one).

        At most MAX_RELEASE_BYTES are decoded, decompressing to at most MAX_DECODED_BYTES;
        `loads` parses the JSON (components/deploy passes the bounded parser of
        kfp_automl.runtime.jsonbody)."""
        where = f"not a {RELEASE_ANNOTATION} record"
        if not isinstance(value, str) or len(value) > MAX_RELEASE_BYTES:
            raise ContractError(
                f"{where}: over the {MAX_RELEASE_BYTES // 1024} KiB an annotation record holds"
            )
        try:
            raw = _gunzip(base64.b64decode(value, validate=True), MAX_DECODED_BYTES)
            return cls._from_record(loads(raw), namespace)
        except ContractError as exc:
            raise ContractError(f"{where}: {exc}") from None
        except (ValueError, KeyError, TypeError, OSError, AttributeError, zlib.error) as exc:
            raise ContractError(f"{where}: {exc}") from None


def _gunzip(data: bytes, limit: int) -> bytes:
    """The gzip stream `data` decompressed, refusing more than `limit` bytes (a bomb) before
    producing them."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = inflate.decompress(data, limit + 1)
    if len(out) > limit:
        raise ContractError(f"it decompresses to more than {limit // (1024 * 1024)} MiB")
    if not inflate.eof:
        raise ContractError("not a complete gzip stream")
    return out


@dataclass(frozen=True)
class DeployOutcome:
    """What the deploy step did (its `release` artifact)."""

    deployed: bool
    reason: str = ""  # why nothing was deployed
    version: str = ""
    namespace: str = ""
    name: str = ""
    applied: tuple[str, ...] = ()  # kind/name, in apply order
    previous_version: str | None = None
    rollout: str = ""
    elapsed_s: float = 0.0
    bento_sha256: str = ""  # the archive the serving pods check (BENTO_SHA256)

    def to_dict(self) -> dict[str, Any]:
        if not self.deployed:
            return {"format": RELEASE_VERSION, "deployed": False, "reason": self.reason}
        out = asdict(self)
        del out["reason"]
        out["applied"] = list(self.applied)
        return {"format": RELEASE_VERSION, **out}

    @classmethod
    def from_dict(cls, d: Any) -> DeployOutcome:
        expect(
            isinstance(d, dict) and isinstance(d.get("deployed"), bool),
            "release: not a deploy outcome",
        )
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["applied"] = tuple(fields.get("applied") or ())
        return cls(**fields)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DeployOutcome:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ContractError(f"cannot read the release {path}: {exc}") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())
