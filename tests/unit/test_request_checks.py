"""Properties of the /predict checks (kfp_automl/runtime/records.py), fast and in process.

Whatever a client sends, the checks either refuse it with a RecordError whose message stays
short, or hand on canonical records: only the model's fields and the id, with the values that
were checked, which the fitted model always scores, and which check and parse the same again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.fast_path import serving_model
from kfp_automl.runtime.jsonbody import loads
from kfp_automl.runtime.model_file import load_model
from kfp_automl.runtime.records import (
    FRAMING_HEADERS,
    MAX_VALUE_CHARS,
    UNSCORED,
    RecordError,
    canonical_body,
    check_framing,
    check_records,
    parse_request,
    predict_frame,
    prediction_records,
    records_to_columns,
    score_in_parts,
    unscored_index,
)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"
SCHEMA = Schema.read(LEGACY / "schema.json")
GOOD = {
    "x1": 0.5,
    "x2": 10.0,
    "colour": "red",
    "city": "c1",
    "member": "yes",
    "signup": "2024-05-01",
    "note": "fine",
}
ODD = ["-1", "99999-01-01", "0001-01-01", "", " ", "\ud800", "NaN", "yes", "c1", "x" * 1100]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(exclude_categories=()), max_size=20)
    | st.sampled_from(ODD)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD = st.sampled_from([*GOOD, "id", "extra"])
RECORD = (
    st.builds(lambda changes: {**GOOD, **changes}, st.dictionaries(FIELD, VALUES, max_size=4))
    | VALUES
)
# good records with any of their fields replaced by any JSON scalar: mostly valid records
ODD_RECORD = st.fixed_dictionaries({k: st.just(v) | SCALARS for k, v in GOOD.items()})
FAST = settings(max_examples=300, deadline=None)


@pytest.fixture(scope="module")
def models():
    model = load_model(LEGACY, (LEGACY / "sha256").read_text().strip())
    return model, serving_model(model, SCHEMA)


def _score(model, records: list[dict]) -> list[dict]:
    return prediction_records(
        predict_frame(model, pd.DataFrame(records_to_columns(records, SCHEMA)))
    )


@FAST
@given(
    body=st.binary(max_size=300) | st.builds(lambda v: json.dumps({"records": v}).encode(), VALUES)
)
def test_any_body_parses_to_a_list_or_a_record_error(body):
    try:
        assert isinstance(parse_request(body), list)
    except RecordError as exc:
        assert exc.reason in {"bad_json", "too_large"}


@FAST
@given(records=st.lists(RECORD, max_size=4), unknown=st.sampled_from(["ignore", "reject"]))
def test_checked_records_are_canonical_and_check_the_same_again(records, unknown):
    try:
        canonical = check_records(records, SCHEMA, unknown, "id")
    except RecordError as exc:
        assert len(json.dumps(exc.as_dict())) < 400, exc.as_dict()  # short, whatever was sent
        return
    assert len(canonical) == len(records)
    for kept, sent in zip(canonical, records, strict=True):
        assert set(kept) <= {*SCHEMA.names, "id"} and set(SCHEMA.names) <= set(kept)
        assert all(kept[k] == sent[k] or kept[k] != kept[k] for k in kept)
    parsed = parse_request(canonical_body(canonical))
    assert parsed == canonical == check_records(parsed, SCHEMA, unknown, "id")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(ODD_RECORD, min_size=1, max_size=3))
def test_a_checked_record_always_scores(models, records):
    """What the checks let through, the fitted model scores: sklearn's own path and the
    serving fast path, one record alone (a batch whose every value is missing) or several."""
    try:
        canonical = check_records(records, SCHEMA, "ignore", "id")
    except RecordError:
        return
    for model in models:
        for batch in (canonical, canonical[:1]):
            assert len(_score(model, batch)) == len(batch)


def test_a_record_the_model_fails_on_costs_only_its_own_answer(models):
    """A merged batch the model fails on is scored in parts: every other record gets the
    answer it gets alone, and only the failing one is marked unscored."""
    _, fast = models
    records = [{**GOOD, "x1": float(i)} for i in range(9)]
    bad = {**GOOD, "x1": "text"}  # unchecked: records_to_columns refuses it
    batch = records[:4] + [bad] + records[4:]
    answers = score_in_parts(batch, lambda part: _score(fast, part))
    assert answers[4] == {UNSCORED: True}
    alone = [_score(fast, [r])[0] for r in records]
    assert answers[:4] + answers[5:] == alone
    body = json.dumps([{"id": "a", **answers[0]}, {"id": "b", **answers[4]}]).encode()
    assert unscored_index(body) == 1
    assert unscored_index(json.dumps([{"id": UNSCORED, "prediction": UNSCORED}]).encode()) is None


HEADER = st.tuples(
    st.sampled_from([*FRAMING_HEADERS, b"content-encoding", b"Content-Type", b"x-other"]),
    st.sampled_from(
        [b"application/json", b"application/json; charset=utf-8", b"text/plain", b"5", b"chunked"]
    )
    | st.binary(max_size=20),
)


@FAST
@given(headers=st.lists(HEADER, max_size=5))
def test_framing_passes_only_one_json_body_framed_one_way(headers):
    try:
        check_framing(headers)
    except RecordError as exc:
        assert exc.reason in {"bad_framing", "unsupported_media_type"}
        return
    names = [n.lower() for n, _ in headers]
    assert all(names.count(n) <= 1 for n in FRAMING_HEADERS)
    assert not {b"content-length", b"transfer-encoding"} <= set(names)
    ctype = dict((n.lower(), v) for n, v in headers)[b"content-type"]
    assert ctype.split(b";")[0].strip().lower() == b"application/json"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (
            [
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-type", b"application/json"),
            ],
            "bad_framing",
        ),
        (
            [
                (b"content-type", b"application/json"),
                (b"content-length", b"5"),
                (b"transfer-encoding", b"chunked"),
            ],
            "bad_framing",
        ),
        ([(b"content-type", b"application/json; charset=latin-1")], "unsupported_media_type"),
        (
            [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")],
            "unsupported_media_type",
        ),
        ([], "unsupported_media_type"),
    ],
    ids=["two content-types", "length and chunked", "latin-1", "gzip", "no content-type"],
)
def test_framing_refusals(headers, reason):
    with pytest.raises(RecordError) as info:
        check_framing(headers)
    assert info.value.reason == reason


def test_unknown_fields_and_their_values_never_reach_the_model():
    record = {**GOOD, "k" * 10_000: "v" * 1_000_000, "extra": [[[[1]]]], "id": 7}
    assert check_records([record], SCHEMA, "ignore", "id") == [{**GOOD, "id": 7}]
    with pytest.raises(RecordError) as info:
        check_records([{**GOOD, "k" * 10_000: 1}], SCHEMA, "reject", "id")
    assert info.value.field == "k" * 80 + "..."  # a client's field name, cut short


def test_value_limits():
    with pytest.raises(RecordError, match="at most 1024 characters") as info:
        check_records([{**GOOD, "colour": "c" * (MAX_VALUE_CHARS + 1)}], SCHEMA)
    assert info.value.reason == "too_long"
    assert check_records([{**GOOD, "note": "n" * 30_000}], SCHEMA)[0]["note"] == "n" * 30_000
    assert loads(canonical_body([{"a": "é"}])) == {"records": [{"a": "é"}]}
