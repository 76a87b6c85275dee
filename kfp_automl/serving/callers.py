"""Who may send labels to POST /feedback: named callers and their bearer tokens.

Shipped inside every Bento next to service.py (standard library only). The tokens come from
a path that a Kubernetes Secret provides (AUTOML_FEEDBACK_TOKENS, `kfp-automl serve
--feedback-tokens`):

- a directory: one file per caller, named after the caller (a Secret mounted as a volume
  has one file per key; names starting with "." are the volume's own bookkeeping);
- or a single file: one caller, named after the file.

Every non-empty line of a caller's file that does not start with "#" is one of its tokens,
so a token rotates without a pause: add the new line, move the clients, remove the old one.
The files are read again at most every RELOAD_S seconds, so a changed Secret (or a revoked
token) takes effect without a restart.

A request presents `Authorization: Bearer <token>`. The token's SHA-256 digest is compared
with hmac.compare_digest against the digest of every known token, all of them every time,
so how long a check takes does not depend on how much of a token was right.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("kfp_automl.callers")
RELOAD_S = 10.0
CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
MAX_FILE_BYTES = 64 * 1024
_TOKEN = re.compile(rb"[\x21-\x7e]+")  # printable ASCII without spaces: what a header can carry


class TokenError(ValueError):
    """The token path cannot be read at all."""


def _token_problem(caller: str, token: bytes) -> str | None:
    if not _TOKEN.fullmatch(token):
        return f"caller {caller!r}: a token is not printable ASCII without spaces; skipped"
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        return (
            f"caller {caller!r}: a token of {len(token)} characters; tokens have "
            f"{MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} (e.g. `openssl rand -hex 32`); skipped"
        )
    return None


def _files(path: Path) -> Iterable[tuple[str, Path]]:
    if path.is_file():
        yield path.name, path
        return
    if not path.is_dir():
        raise TokenError(f"{path} is neither a directory of token files nor a token file")
    for entry in sorted(path.iterdir()):
        if not entry.name.startswith(".") and entry.is_file():
            yield entry.name, entry


def read_tokens(path: str | Path) -> tuple[dict[bytes, str], list[str]]:
    """(SHA-256 digest of each token -> its caller, the problems of entries that were skipped).

    Raises TokenError when `path` cannot be read at all.
    """
    owners: dict[bytes, set[str]] = {}
    problems: list[str] = []
    try:
        for name, file in _files(Path(path)):
            if not CALLER_NAME.fullmatch(name):
                problems.append(
                    f"{file}: a caller name is 1 to 64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit; skipped"
                )
                continue
            with open(file, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                problems.append(f"{file}: over {MAX_FILE_BYTES} bytes; skipped")
                continue
            for line in data.splitlines():
                token = line.strip()
                if not token or token.startswith(b"#"):
                    continue
                problem = _token_problem(name, token)
                if problem:
                    problems.append(problem)
                    continue
                owners.setdefault(hashlib.sha256(token).digest(), set()).add(name)
    except OSError as exc:
        raise TokenError(f"cannot read the feedback tokens in {path}: {exc}") from None
    found: dict[bytes, str] = {}
    for digest, names in owners.items():
        if len(names) == 1:
            found[digest] = names.pop()
        else:
            shared = " and ".join(sorted(names))
            problems.append(f"callers {shared} share a token; it is accepted for neither")
    return found, problems


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, str]:
    """The token of a request's `Authorization: Bearer <token>` header, or (None, the problem)."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if not values:
        return None, "send a feedback token: Authorization: Bearer <token>"
    if len(values) > 1:
        return None, "send exactly one Authorization header"
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or not _TOKEN.fullmatch(token):
        return None, "the Authorization header is not 'Bearer <token>' in printable ASCII"
    return token, ""


class Callers:
    """The named callers whose tokens are in `path`, read again every `reload_s` seconds."""

    def __init__(
        self,
        path: str | Path,
        reload_s: float = RELOAD_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path, self.reload_s, self._clock = str(path), reload_s, clock
        self._lock = threading.Lock()
        self._digests: list[tuple[bytes, str]] = []
        self._loaded_at = -float("inf")
        self._reported: tuple[str, ...] = ()
        self._reload()

    @property
    def names(self) -> list[str]:
        return sorted({name for _, name in self._digests})

    def _reload(self) -> None:
        try:
            if not self.path:
                raise TokenError("no token path is set (AUTOML_FEEDBACK_TOKENS, --feedback-tokens)")
            found, problems = read_tokens(self.path)
        except TokenError as exc:
            found, problems = {}, [str(exc)]
        if not found:
            problems.append("no valid feedback token: every label is refused (401)")
        self._digests = list(found.items())
        self._loaded_at = self._clock()
        if tuple(problems) != self._reported:  # each new set of problems is logged once
            self._reported = tuple(problems)
            for problem in problems:
                log.warning("feedback tokens: %s", problem)

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str]:
        """(the caller whose token the request carries, "") or (None, why it is refused)."""
        if self._clock() - self._loaded_at >= self.reload_s:
            with self._lock:
                if self._clock() - self._loaded_at >= self.reload_s:
                    self._reload()
        token, problem = bearer_token(headers)
        if token is None:
            return None, problem
        digest = hashlib.sha256(token).digest()
        caller = None
        for known, name in self._digests:  # every digest, whether or not one matched already
            if hmac.compare_digest(known, digest):
                caller = name
        if caller is None:
            return None, "the token is not a feedback token of this server"
        return caller, ""


class LabelRate:
    """Labels each caller may send to /feedback in one worker: a token bucket per caller,
    refilled at `per_s` labels a second up to `burst` (at least one full request).

    Callers are the named ones of the token files (or one anonymous caller), so the buckets
    are few. `take(caller, n)` spends n labels, or returns the seconds until it could.
    """

    def __init__(self, per_s: float, burst: int):
        if per_s <= 0 or burst < 1:
            raise ValueError("a label rate needs per_s > 0 and burst >= 1")
        self.per_s, self.burst = float(per_s), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (labels left, when)
        self._lock = threading.Lock()

    def take(self, caller: str, n: int, now: float | None = None) -> float:
        """0.0 when `caller` may send `n` labels now (they are spent), else the wait in s."""
        now = time.monotonic() if now is None else now
        with self._lock:
            left, when = self._buckets.get(caller, (self.burst, now))
            left = min(self.burst, left + (now - when) * self.per_s)
            cost = min(float(n), self.burst)  # a request over the burst needs a full bucket
            if cost <= left:
                self._buckets[caller] = (left - cost, now)
                return 0.0
            self._buckets[caller] = (left, now)
            return (cost - left) / self.per_s
