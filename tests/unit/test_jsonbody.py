"""The one JSON parser for client bodies: bounded depth, no duplicate keys, no NaN."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfp_automl.runtime.jsonbody import MAX_JSON_DEPTH, JsonBodyError, json_depth, loads


def test_deep_nesting_is_refused_before_decoding_and_fast():
    body = b'{"records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    start = time.perf_counter()
    with pytest.raises(JsonBodyError, match="100001 deep"):
        loads(body)
    assert time.perf_counter() - start < 1.0


def test_brackets_inside_strings_do_not_count():
    value = {"records": [{"a": "[[[[{{{{" * 50, "b": 'x\\"[[[' * 20}]}
    assert json_depth(json.dumps(value).encode()) == 3
    assert loads(json.dumps(value)) == value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
def test_the_limit_is_inclusive(depth):
    body = "[" * depth + "]" * depth
    if depth <= MAX_JSON_DEPTH:
        assert loads(body) is not None
    else:
        with pytest.raises(JsonBodyError, match="at most"):
            loads(body)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b'{"records": [], "records": [{"a": 1}]}', "appears twice"),
        (b'{"records": [{"a": NaN}]}', "NaN is not a JSON value"),
        (b'{"records": [{"a": -Infinity}]}', "-Infinity is not a JSON value"),
        (b'{"records": [\xff]}', "not UTF-8"),
        (b'{"records": [', "not valid JSON"),
        (b'{"a": "' + b"[" * 5000, "deep"),  # an unterminated string over-counts: refused anyway
    ],
)
def test_ambiguous_or_invalid_bodies_name_the_problem(body, problem):
    with pytest.raises(JsonBodyError, match=problem):
        loads(body)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_depth_matches_the_decoded_value(value):
    def depth(v):
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    body = json.dumps(value).encode()
    assert json_depth(body) == depth(value)
    assert loads(body) == value


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_value_or_a_json_body_error(body):
    with contextlib.suppress(JsonBodyError):
        loads(body)
