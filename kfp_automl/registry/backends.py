"""Where the registry keeps its files: a local folder, or an object store.

Every backend stores one JSON document per model name and changes it by read-modify-write
(`update`), so that two changes racing each other never lose one:

- `LocalBackend` (a folder, also a shared volume): an exclusive `fcntl` lock on
  `<name>.lock` around the read and the write, the write a temporary file renamed into place.
- `S3Backend` (`s3://bucket/prefix`, and `minio://bucket/prefix`, KFP's name for the same
  API) and `GCSBackend` (`gs://bucket/prefix`): object stores have no locks, so the write is
  conditional on the version that was read (S3: `If-Match` on the ETag, or `If-None-Match: *`
  for a new object; GCS: `ifGenerationMatch`). When another writer got there first the store
  refuses the write (412, or 409 for S3 writes that overlap); the change is then made again on
  the fresh document, after a jittered backoff, up to `attempts` times. A PUT replaces the
  whole object or nothing, so readers never see a half-written document.

Credentials and endpoints come from the usual environment, never from the URL: for S3 the
AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`) or config
files; for GCS the application default credentials (`STORAGE_EMULATOR_HOST` for an emulator).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kfp_automl.errors import UserError
from kfp_automl.files import write_json

T = TypeVar("T")
Change = Callable[[dict[str, Any]], T]

OBJECT_SCHEMES = ("s3", "minio", "gs")
ATTEMPTS = 25  # conditional writes per change before giving up
BACKOFF_S = 0.02  # first backoff; doubles per attempt (full jitter), capped at BACKOFF_CAP_S
BACKOFF_CAP_S = 1.0
CHECK_OBJECT = ".kfp-automl-write-check"  # S3: written once per process to test the store


def empty_state(name: str) -> dict[str, Any]:
    return {"name": name, "champion": None, "versions": {}, "events": []}


class Conflict(Exception):
    """Another writer changed the document between our read and our conditional write."""


def parse_root(root: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of an object-store root, ("", "", path) of a folder; a root
    that cannot work is a UserError (no connection is made)."""
    text = os.fspath(root)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme in ("", "file"):
        return "", "", text.removeprefix("file://")
    if scheme not in OBJECT_SCHEMES:
        raise UserError(
            f"registry root {text!r}: use a folder or an s3://, minio:// or gs:// URL "
            f"({scheme}:// is not supported)"
        )
    parts = urlsplit(text)
    if parts.password is not None or parts.username is not None:
        raise UserError(
            f"registry root {scheme}://... holds credentials: pass them through the environment "
            "(or a Kubernetes Secret), never in the URL"
        )
    if not parts.netloc:
        raise UserError(f"registry root {text!r} names no bucket ({scheme}://BUCKET/PREFIX)")
    return scheme, parts.netloc, parts.path.strip("/")


def open_backend(root: str | os.PathLike[str], attempts: int = ATTEMPTS):
    """The backend for `root`: a folder, `file://` folder, or `s3://`, `minio://`, `gs://` URL."""
    scheme, bucket, prefix = parse_root(root)
    if not scheme:
        return LocalBackend(Path(prefix))
    if scheme == "gs":
        return GCSBackend(bucket, prefix, attempts)
    return S3Backend(bucket, prefix, attempts, scheme=scheme)


class LocalBackend:
    """A folder: `<root>/<name>.json`, changed under an exclusive lock on `<root>/<name>.lock`."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def read(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(name).read_text())
        except FileNotFoundError:
            return empty_state(name)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def update(self, name: str, change: Change[T]) -> T:
        with self._locked(name):
            state = self.read(name)
            result = change(state)  # a UserError here leaves the file as it was
            write_json(self._path(name), state)
            return result

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class _ObjectBackend:
    """Optimistic read-modify-write over `_get` (document, version token) and `_put_if`."""

    scheme = ""

    def __init__(self, bucket: str, prefix: str, attempts: int):
        self.bucket, self.prefix, self.attempts = bucket, prefix, max(1, attempts)
        self.root = f"{self.scheme}://{bucket}/{prefix}".rstrip("/")
        self.conflicts = 0  # refused conditional writes, for the tests and the curious

    def _object(self, filename: str) -> str:
        return f"{self.prefix}/{filename}" if self.prefix else filename

    def _key(self, name: str) -> str:
        return self._object(f"{name}.json")

    def _get(self, name: str) -> tuple[dict[str, Any] | None, Any]:
        raise NotImplementedError

    def _put_if(self, name: str, body: bytes, token: Any) -> None:
        """Write `body` only if the object is still at `token` (None: only if it is absent)."""
        raise NotImplementedError

    def _list(self) -> Iterator[str]:
        raise NotImplementedError

    def read(self, name: str) -> dict[str, Any]:
        state, _ = self._get(name)
        return state if state is not None else empty_state(name)

    def names(self) -> list[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        return sorted(
            key[start:-5]
            for key in self._list()
            if key.endswith(".json") and "/" not in key[start:]
        )

    def update(self, name: str, change: Change[T]) -> T:
        for attempt in range(self.attempts):
            state, token = self._get(name)
            state = state if state is not None else empty_state(name)
            result = change(state)  # a UserError here writes nothing
            body = (json.dumps(state, indent=2) + "\n").encode()
            try:
                self._put_if(name, body, token)
                return result
            except Conflict:
                self.conflicts += 1
                if attempt + 1 < self.attempts:
                    time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_S * 2**attempt)))
        raise UserError(
            f"registry {self.root}: model {name!r} was changed by others {self.attempts} times "
            "in a row while this change was being written; nothing was written, try again"
        )


class S3Backend(_ObjectBackend):
    """S3 and S3-compatible stores (MinIO, ...) through botocore's conditional PutObject."""

    def __init__(self, bucket: str, prefix: str, attempts: int = ATTEMPTS, scheme: str = "s3"):
        self.scheme = scheme
        super().__init__(bucket, prefix, attempts)
        self._client = _s3_client(scheme, self.root)
        self._conditions_checked = False

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """botocore's failures as one line that names the registry and what to do."""
        from botocore import exceptions as bx

        where = f"registry {self.root}"
        try:
            yield
        except (bx.NoCredentialsError, bx.PartialCredentialsError):
            raise UserError(
                f"{where}: no object-store credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (on a cluster: the Secret kfp-automl-storage)"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
            raise UserError(f"{where}: cannot reach the object store ({exc})") from None
        except bx.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code == "NoSuchBucket":
                raise UserError(f"{where}: bucket {self.bucket!r} does not exist") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise UserError(
                    f"{where}: access denied ({code}); check the AWS_* credentials"
                ) from None
            message = err.get("Message") or exc
            raise UserError(f"{where}: the object store refused the request: {message}") from None

    def _get(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        from botocore.exceptions import ClientError

        with self._errors():
            try:
                obj = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                    return None, None
                raise  # NoSuchBucket says so
            body = obj["Body"].read()
        return _parse(body, f"{self.root}/{name}.json"), obj["ETag"]

    def _put(self, key: str, body: bytes, **condition: str) -> bool:
        """PUT `key`; False when the store refused it on `condition` (412, or 409)."""
        from botocore.exceptions import ClientError

        with self._errors():
            try:
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    **condition,
                )
                return True
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = exc.response.get("Error", {}).get("Code")
                # 412: the ETag moved on (or the object exists); 409: a concurrent conditional
                # write to the same key; NoSuchKey: the object we read was deleted meanwhile
                if condition and (status in (409, 412) or code == "NoSuchKey"):
                    return False
                raise

    def _check_conditional_writes(self) -> None:
        """Refuse a store that ignores If-Match / If-None-Match (older MinIO releases do, and
        would lose promotions silently): both must refuse a write to an existing object."""
        if self._conditions_checked:
            return
        key = self._object(CHECK_OBJECT)
        self._put(key, b"{}\n")
        if self._put(key, b"{}\n", IfNoneMatch="*") or self._put(
            key, b"{}\n", IfMatch='"00000000000000000000000000000000"'
        ):
            raise UserError(
                f"registry {self.root}: the object store ignores conditional writes (If-Match / "
                "If-None-Match on PutObject), so racing promotions could be lost; use a store "
                "that supports them (AWS S3, a current MinIO) or a shared folder"
            )
        self._conditions_checked = True

    def _put_if(self, name: str, body: bytes, token: str | None) -> None:
        self._check_conditional_writes()
        cond = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        if not self._put(self._key(name), body, **cond):
            raise Conflict

    def _list(self) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
        )
        with self._errors():
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"]


def _s3_client(scheme: str, root: str):
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise UserError(
            f"registry {root}: install botocore for s3:// (pip install 'kfp-automl[s3]')"
        ) from None
    session = botocore.session.get_session()
    region = os.environ.get("AWS_REGION") or session.get_config_variable("region") or "us-east-1"
    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        # checksums only where S3 requires them: S3-compatible stores (MinIO, Ceph, ...) that
        # predate botocore 1.36's default CRC trailers refuse them
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = session.create_client("s3", region_name=region, config=config)
    if scheme == "minio" and client.meta.endpoint_url.endswith(".amazonaws.com"):
        raise UserError(
            f"registry {root}: a minio:// registry needs the MinIO endpoint in AWS_ENDPOINT_URL "
            "(e.g. http://minio-service.kubeflow:9000)"
        )
    return client


class GCSBackend(_ObjectBackend):
    """Google Cloud Storage through google-cloud-storage's generation preconditions."""

    scheme = "gs"

    def __init__(self, bucket: str, prefix: str, attempts: int = ATTEMPTS):
        super().__init__(bucket, prefix, attempts)
        from google.cloud import storage

        with self._errors():
            self._bucket = storage.Client().bucket(bucket)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from google.api_core import exceptions as gx
        from google.auth.exceptions import DefaultCredentialsError

        where = f"registry {self.root}"
        try:
            yield
        except DefaultCredentialsError:
            raise UserError(
                f"{where}: no Google credentials; set GOOGLE_APPLICATION_CREDENTIALS or run "
                "where application default credentials exist"
            ) from None
        except gx.RetryError as exc:  # transient errors until the retry gave up
            raise UserError(f"{where}: cannot reach the object store ({exc.cause})") from None
        except gx.Forbidden as exc:
            raise UserError(f"{where}: access denied ({exc.message})") from None
        except gx.NotFound:
            raise UserError(f"{where}: bucket {self.bucket!r} does not exist") from None
        except gx.GoogleAPIError as exc:
            raise UserError(f"{where}: the object store refused the request: {exc}") from None
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise UserError(f"{where}: cannot reach the object store ({exc})") from None

    def _get(self, name: str) -> tuple[dict[str, Any] | None, int | None]:
        from google.api_core.exceptions import NotFound

        blob = self._bucket.blob(self._key(name))
        with self._errors():
            try:
                body = blob.download_as_bytes(timeout=_GCS_TIMEOUT, retry=_gcs_retry())
            except NotFound:
                self._bucket.reload(timeout=_GCS_TIMEOUT, retry=_gcs_retry())  # no bucket?
                return None, None
        return _parse(body, f"{self.root}/{name}.json"), blob.generation

    def _put_if(self, name: str, body: bytes, token: int | None) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(self._key(name))
        with self._errors():
            try:
                blob.upload_from_string(
                    body,
                    content_type="application/json",
                    if_generation_match=token or 0,  # 0: only if there is no such object yet
                    timeout=_GCS_TIMEOUT,
                    retry=_gcs_retry(),  # safe: the precondition makes a repeat a no-op
                )
            except PreconditionFailed:
                raise Conflict from None

    def _list(self) -> Iterator[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        with self._errors():
            for blob in self._bucket.list_blobs(
                prefix=prefix, timeout=_GCS_TIMEOUT, retry=_gcs_retry()
            ):
                yield blob.name


_GCS_TIMEOUT = (5, 30)  # connect, read (s)
GCS_RETRY_S = 20.0  # how long transient GCS errors are retried (the library's default: 120 s)


def _gcs_retry():
    """google-cloud-storage's retry on transient errors, given up after GCS_RETRY_S."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(GCS_RETRY_S)


def _parse(body: bytes, where: str) -> dict[str, Any]:
    try:
        state = json.loads(body)
    except ValueError:
        raise UserError(f"{where} is not a registry document (not JSON)") from None
    if not isinstance(state, dict) or not {"champion", "versions", "events"} <= state.keys():
        raise UserError(f"{where} is not a registry document (no champion/versions/events)")
    return state
