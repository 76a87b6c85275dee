"""Parsing an untrusted JSON body once, with bounded nesting and no parser ambiguity.

Every HTTP endpoint that takes JSON from a client (/predict, /feedback, the retrain
trigger) parses it here, so they share the limits and the answer to a hostile body:

- nesting deeper than `max_depth` arrays/objects is refused before the body is decoded,
  so a 2 KB body nested a thousand levels deep cannot reach the decoder's recursion;
- an object with the same key twice is refused (parsers disagree about which one wins);
- `NaN`, `Infinity` and `-Infinity` (not JSON, but accepted by Python's decoder) are refused;
- a body that is not UTF-8 is refused.

The depth is measured without recursion and at C speed: JSON strings are removed with one
regular-expression pass, then every byte but brackets is deleted and the running depth is a
cumulative sum. Brackets inside an unterminated string can only over-count, and such a
body is not JSON anyway.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_JSON_DEPTH = 32  # arrays/objects within each other; a /predict body needs 3

# a JSON string: a quote, then runs of plain characters and escapes, then a quote
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = (ord("["), ord("{"))


class JsonBodyError(ValueError):
    """The body is not JSON this service accepts; the message says why, for the client."""


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body` (0 for a scalar)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == _OPEN[0]) | (codes == _OPEN[1]), 1, -1)
    return int(np.cumsum(steps).max())


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonBodyError(f"the key {key[:64]!r} appears twice in one object")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise JsonBodyError(f"{name} is not a JSON value; send null for a missing number")


def loads(body: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of `body`, or a JsonBodyError saying what is wrong with it."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    depth = json_depth(raw)
    if depth > max_depth:
        raise JsonBodyError(f"the body nests arrays/objects {depth} deep; at most {max_depth}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonBodyError(f"the body is not UTF-8: {exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except JsonBodyError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: a nesting json_depth missed
        raise JsonBodyError(f"the body is not valid JSON: {exc}") from None
