"""Hostile /predict requests against a real `bentoml serve` of the small Bento: each table row is
what is sent and what comes back.

Every refusal is a 4xx in the error format within two seconds, counted once under its reason
in automl_requests_rejected_total, with /readyz still 200 (probes.assert_counted_refusal);
values that are odd but valid are scored. At the end the server's memory is back near where
it started. Framing that no HTTP client would send goes over a plain socket (probes.raw_post).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from kfp_automl.runtime.jsonbody import MAX_JSON_DEPTH
from kfp_automl.runtime.records import MAX_RECORDS, MAX_TEXT_CHARS, MAX_VALUE_CHARS
from tests.adversarial.conftest import good_records, served
from tests.adversarial.probes import (
    QUIET,
    assert_counted_refusal,
    assert_ready,
    raw_post,
    server_pid,
    timed_post,
    worker_rss,
)

pytestmark = pytest.mark.slow

MAX_BODY_MB = 2  # the module's server: a small body limit keeps the over-limit probes cheap
GROWTH_LIMIT = 50 * 1024 * 1024  # allocator noise, not a leak
GOOD = good_records(3)
BODY = json.dumps({"records": GOOD}).encode()
JSON = b"Content-Type: application/json"
FORM = b"Content-Type: application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def server(small_bento, tmp_path_factory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("requests-home")
    with (
        # --max-latency-ms: a request of thousands of records waits for its batches
        served(
            small_bento,
            home,
            "--max-body-mb",
            str(MAX_BODY_MB),
            "--max-latency-ms",
            "30000",
            env=QUIET,
        ) as base,
        httpx.Client(timeout=30) as client,
    ):
        for _ in range(5):  # the first requests' own costs (imports, the allocator)
            assert client.post(f"{base}/predict", json={"records": GOOD}).status_code == 200
        pid = server_pid(base)
        yield {"base": base, "client": client, "pid": pid, "rss": worker_rss(pid)}


def _length(body: bytes) -> bytes:
    return b"Content-Length: %d" % len(body)


def _chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _post(server: dict, body: bytes, content_type: str | None = "application/json", **headers):
    if content_type is not None:
        headers["content-type"] = content_type
    return lambda: timed_post(
        server["client"], f"{server['base']}/predict", content=body, headers=headers
    )


def _with(**fields) -> bytes:
    """A good body whose second record has these fields (values as JSON text)."""
    record = json.dumps(GOOD[1])[:-1]
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return b'{"records": [%s, %s}, %s]}' % (
        json.dumps(GOOD[0]).encode(),
        (record + extra).encode(),
        json.dumps(GOOD[2]).encode(),
    )


# a valid JSON body that, read as a form, carries other records: a guard and a server that
# read different content-type headers would check one and score the other
POISON = BODY[:-1] + b', "z": "&records=[{%22x1%22:%22text%22}]&w="}'
# just over the limit, so the server has read nearly all of it when it answers
OVER = json.dumps({"records": GOOD, "pad": "p" * (MAX_BODY_MB * 1024 * 1024)}).encode()

FRAMING = [
    ("content-type twice", [JSON, JSON, _length(BODY)], BODY, 400, "bad_framing"),
    ("form, then json", [FORM, JSON, _length(POISON)], POISON, 400, "bad_framing"),
    ("json, then form", [JSON, FORM, _length(POISON)], POISON, 400, "bad_framing"),
    (
        "content-length with chunked",
        [JSON, _length(BODY), b"Transfer-Encoding: chunked"],
        _chunked(BODY),
        400,
        "bad_framing",
    ),
    ("declared over the limit", [JSON, _length(OVER)], b"", 413, "too_large"),
    (
        "chunked over the limit",
        [JSON, b"Transfer-Encoding: chunked"],
        _chunked(OVER),
        413,
        "too_large",
    ),
    ("no content-type", [_length(BODY)], BODY, 415, "unsupported_media_type"),
    ("empty body", [JSON, b"Content-Length: 0"], b"", 400, "bad_json"),
    (
        "gzip content-encoding",
        [JSON, b"Content-Encoding: gzip", _length(gzip.compress(BODY))],
        gzip.compress(BODY),
        415,
        "unsupported_media_type",
    ),
    (
        "two content-encodings",
        [JSON, b"Content-Encoding: identity", b"Content-Encoding: br", _length(BODY)],
        BODY,
        415,
        "unsupported_media_type",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [row[1:] for row in FRAMING],
    ids=[row[0] for row in FRAMING],
)
def test_body_framing_and_size(server, headers, body, status, reason):
    base = server["base"]
    assert_counted_refusal(base, lambda: raw_post(base, headers, body), status, reason)


@pytest.mark.parametrize(
    "headers",
    [
        [JSON, _length(BODY), b"Content-Length: 5"],
        [JSON, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [JSON, b"Transfer-Encoding: gzip, chunked"],
        [JSON, b"Content-Length: -1"],
    ],
    ids=[
        "conflicting content-lengths",
        "chunked twice",
        "gzip transfer-encoding",
        "negative length",
    ],
)
def test_framing_the_http_server_refuses_before_the_service(server, headers):
    """uvicorn's HTTP parser (h11) refuses these itself, in text/plain: they never reach the
    service, so they are neither scored nor counted."""
    response, elapsed = raw_post(server["base"], headers, _chunked(BODY))
    assert response.status_code == 400 and elapsed < 2, response.text
    assert_ready(server["base"])


@pytest.mark.parametrize(
    "headers",
    [
        [JSON, b"Transfer-Encoding: chunked"],
        [JSON, _length(BODY), _length(BODY)],  # the same length twice: h11 keeps one
        [b"Content-Type: application/json; charset=utf-8", _length(BODY)],
        [b'Content-Type: Application/JSON; charset="UTF-8"', _length(BODY)],
        [JSON, b"Content-Encoding: identity", _length(BODY)],
    ],
    ids=["chunked", "same length twice", "charset utf-8", "quoted charset", "identity"],
)
def test_unambiguous_framing_is_scored(server, headers):
    body = _chunked(BODY) if b"Transfer-Encoding: chunked" in headers else BODY
    response, _ = raw_post(server["base"], headers, body)
    assert response.status_code == 200, response.text
    assert [a["prediction"] for a in response.json()] == _expected(server)


def _expected(server: dict) -> list:
    answer = server["client"].post(f"{server['base']}/predict", json={"records": GOOD})
    return [a["prediction"] for a in answer.json()]


def _number(n: int) -> str:
    return "1" + "0" * (n - 1)


JSON_SYNTAX = [
    ("records twice", b'{"records": %s, "records": []}' % json.dumps(GOOD).encode(), "bad_json"),
    ("a field twice", _with(x1='"text"'), "bad_json"),  # GOOD[1] has x1 already
    ("NaN", BODY.replace(b"64.0", b"NaN"), "bad_json"),
    ("Infinity", BODY.replace(b"64.0", b"Infinity"), "bad_json"),
    ("-Infinity", BODY.replace(b"64.0", b"-Infinity"), "bad_json"),
    ("a byte-order mark", b"\xef\xbb\xbf" + BODY, "bad_json"),
    ("UTF-16", BODY.decode().encode("utf-16"), "bad_json"),
    ("invalid UTF-8", BODY.replace(b"great", b"gr\xffat"), "bad_json"),
    ("a lone surrogate", BODY.replace(b"great", b"\\ud800"), "bad_json"),
    ("a float too large", BODY.replace(b"64.0", b"1e400"), "non_finite"),
    (
        "an integer too large for a float",
        BODY.replace(b"64.0", _number(400).encode()),
        "non_finite",
    ),
    ("an integer of 5000 digits", BODY.replace(b"64.0", _number(5000).encode()), "bad_json"),
    ("a number as a string", BODY.replace(b"64.0", b'"64.0"'), "wrong_type"),
    ("trailing text", BODY + b" {}", "bad_json"),
    ("single quotes", BODY.replace(b'"', b"'"), "bad_json"),
    ("a comment", b"/* hi */" + BODY, "bad_json"),
    ("1,100 levels deep", b'{"records": ' + b"[" * 1100 + b"]" * 1100 + b"}", "bad_json"),
    (
        "an unknown field one level too deep",
        _with(extra="[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)),
        "bad_json",
    ),
    ("a bare list", json.dumps(GOOD).encode(), "bad_json"),
    ("a bare string", b'"records"', "bad_json"),
]


@pytest.mark.parametrize(
    ("body", "reason"), [row[1:] for row in JSON_SYNTAX], ids=[row[0] for row in JSON_SYNTAX]
)
def test_json_syntax_and_parser_differences(server, body, reason):
    assert_counted_refusal(server["base"], _post(server, body), 400, reason)


TYPES = [
    ("a boolean number", {"x1": True}, "x1", "wrong_type"),
    ("a list number", {"x1": [1]}, "x1", "wrong_type"),
    ("an object number", {"x1": {"v": 1}}, "x1", "wrong_type"),
    ("a list category", {"colour": ["red"]}, "colour", "wrong_type"),
    ("an object category", {"colour": {"red": 1}}, "colour", "wrong_type"),
    ("a long category", {"colour": "r" * (MAX_VALUE_CHARS + 1)}, "colour", "too_long"),
    ("a long date", {"signup": "2" * (MAX_VALUE_CHARS + 1)}, "signup", "too_long"),
    ("a long text", {"note": "n" * (MAX_TEXT_CHARS + 1)}, "note", "too_long"),
    ("a huge integer category", {"city": 10**1000}, "city", "too_long"),
]


@pytest.mark.parametrize(
    ("fields", "field", "reason"), [row[1:] for row in TYPES], ids=[row[0] for row in TYPES]
)
def test_types_and_values(server, fields, field, reason):
    body = json.dumps({"records": [GOOD[0], {**GOOD[1], **fields}]}).encode()
    error = assert_counted_refusal(server["base"], _post(server, body), 400, reason)
    assert (error["record"], error["field"]) == (1, field)


SCORED = [
    ("every field null", {k: None for k in GOOD[0]}),
    ("a boolean feature null", {"member": None}),
    ("a date before year 1", {"signup": "-1"}),
    ("a date after year 9999", {"signup": "99999-01-01"}),
    ("a date in 1066", {"signup": "1066-10-14"}),
    ("a date that is a number", {"signup": 20240101}),
    ("no date at all", {"signup": "yesterday"}),
    ("a boolean feature as true", {"member": True}),
    ("a category as a number", {"colour": 3, "city": 2.5}),
    ("a NUL in the text", {"note": "a\u0000b"}),
    ("the longest text", {"note": "word " * (MAX_TEXT_CHARS // 5)}),
    ("the longest category", {"colour": "é" * MAX_VALUE_CHARS}),
    ("the largest float", {"x1": 1.7976931348623157e308, "x2": -0.0}),
    ("a 300-digit integer", {"x1": 10**300}),
]


@pytest.mark.parametrize("fields", [row[1] for row in SCORED], ids=[row[0] for row in SCORED])
def test_odd_but_valid_values_are_scored(server, fields):
    """null is accepted for any field and imputed; text that is no date is a missing date."""
    for records in ([{**GOOD[0], **fields}], [GOOD[0], {**GOOD[1], **fields}]):
        response = server["client"].post(f"{server['base']}/predict", json={"records": records})
        assert response.status_code == 200, response.text[:500]
        assert len(response.json()) == len(records) and "prediction" in response.json()[0]


RECORDS = [
    ("records an object", {"records": GOOD[0]}, None, "bad_json"),
    ("records a string", {"records": "x"}, None, "bad_json"),
    ("records null", {"records": None}, None, "bad_json"),
    ("no records", {"rows": GOOD}, None, "bad_json"),
    ("zero records", {"records": []}, None, "empty"),
    ("a record that is a list", {"records": [GOOD[0], list(GOOD[1].values())]}, 1, "wrong_type"),
    ("a record that is null", {"records": [None]}, 0, "wrong_type"),
    ("a record that is a string", {"records": ["x1=1"]}, 0, "wrong_type"),
    (
        "a missing field",
        {"records": [{k: v for k, v in GOOD[0].items() if k != "x2"}]},
        0,
        "missing_field",
    ),
    ("one record too many", {"records": [{}] * (MAX_RECORDS + 1)}, None, "too_large"),
]


@pytest.mark.parametrize(
    ("payload", "record", "reason"), [row[1:] for row in RECORDS], ids=[row[0] for row in RECORDS]
)
def test_record_shape_and_count(server, payload, record, reason):
    status = 413 if reason == "too_large" else 400
    body = json.dumps(payload).encode()
    error = assert_counted_refusal(server["base"], _post(server, body), status, reason)
    assert error["record"] == record


def test_many_records_in_one_request_are_all_scored(server):
    records = good_records(50) * 100  # 5,000 records, under the module's body limit
    response, elapsed = timed_post(
        server["client"], f"{server['base']}/predict", json={"records": records}
    )
    assert response.status_code == 200, response.text[:500]
    answers = response.json()
    assert len(answers) == 5000 and len({a["id"] for a in answers}) == 5000
    assert [a["prediction"] for a in answers[:50]] == [a["prediction"] for a in answers[50:100]]


IDS = [
    ("a float", 1.5),
    ("a boolean", True),
    ("a list", ["a"]),
    ("an object", {"a": 1}),
    ("empty", ""),
    ("129 characters", "i" * 129),
    ("a newline", "a\nb"),
    ("a huge integer", 10**200),
    ("a lone surrogate", "\ud800"),
]


@pytest.mark.parametrize("value", [row[1] for row in IDS], ids=[row[0] for row in IDS])
def test_bad_prediction_ids(server, value):
    body = json.dumps({"records": [GOOD[0], {**GOOD[1], "id": value}]}).encode()
    error = assert_counted_refusal(server["base"], _post(server, body), 400, "bad_id")
    assert (error["record"], error["field"]) == (1, "id")


def test_duplicate_prediction_ids_in_one_request(server):
    body = json.dumps({"records": [{**r, "id": "same"} for r in GOOD]}).encode()
    error = assert_counted_refusal(server["base"], _post(server, body), 400, "bad_id")
    assert error["record"] == 1 and "twice" in error["problem"]


def test_good_prediction_ids_come_back(server):
    ids = ["order-1", 42, "i" * 128]
    records = [{**r, "id": i} for r, i in zip(GOOD, ids, strict=True)]
    answers = server["client"].post(f"{server['base']}/predict", json={"records": records}).json()
    assert [a["id"] for a in answers] == ["order-1", "42", "i" * 128]


CONTENT_TYPES = [
    "text/plain",
    "application/vnd.bentoml+pickle",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json, text/plain",
    "application/jsonx",
    "",
]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_content_types_other_than_json_in_utf8(server, content_type):
    error = assert_counted_refusal(
        server["base"], _post(server, BODY, content_type), 415, "unsupported_media_type"
    )
    assert error["record"] is None


def test_a_gzip_body_through_an_http_client_is_refused(server):
    send = _post(server, gzip.compress(BODY), **{"content-encoding": "gzip"})
    assert_counted_refusal(server["base"], send, 415, "unsupported_media_type")


def test_many_fields_and_long_keys_cost_a_request_and_nothing_more(server):
    """Unknown fields are ignored (the default): however many, long or deep they are, they
    never reach the model, and the request is answered quickly."""
    many = {**GOOD[0], **{f"f{i}": i for i in range(50_000)}}
    long_key = {**GOOD[0], "k" * 1_000_000: 1}
    long_value = {**GOOD[0], "extra": "v" * 1_500_000}
    deep = {**GOOD[0], "extra": json.loads("[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3))}
    expected = _expected(server)[0]
    for record in (many, long_key, long_value, deep):
        response, elapsed = timed_post(
            server["client"], f"{server['base']}/predict", json={"records": [record]}
        )
        assert response.status_code == 200 and elapsed < 5, (response.text[:300], elapsed)
        assert response.json()[0]["prediction"] == expected


def test_memory_is_back_near_where_it_started(server):
    """Last in the module: every probe above has run against this server."""
    grown = worker_rss(server["pid"]) - server["rss"]
    assert grown < GROWTH_LIMIT, f"the server grew by {grown / 2**20:.0f} MiB"
    assert_ready(server["base"])
