"""Pipeline parameters given on the command line, checked against declared KFP types."""

from __future__ import annotations

import pytest

from kfp_automl.cluster.client import check_cron, coerce_parameter, parse_assignments
from kfp_automl.errors import UserError

DECLARED = {
    "s": {"parameterType": "STRING"},
    "i": {"parameterType": "NUMBER_INTEGER"},
    "f": {"parameterType": "NUMBER_DOUBLE"},
    "b": {"parameterType": "BOOLEAN"},
    "l": {"parameterType": "LIST"},
    "d": {"parameterType": "STRUCT"},
}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("s", "x=y", "x=y"),
        ("s", "", ""),
        ("i", " 42 ", 42),
        ("i", "-3", -3),
        ("i", 7, 7),
        ("i", 7.0, 7),
        ("f", "0.5", 0.5),
        ("f", "1e-3", 0.001),
        ("f", 2, 2.0),
        ("b", "True", True),
        ("b", "no", False),
        ("b", False, False),
        ("l", "[1, 2]", [1, 2]),
        ("d", '{"a": 1}', {"a": 1}),
    ],
)
def test_values_convert_to_the_declared_type(name, value, expected):
    got = coerce_parameter(name, value, DECLARED)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("i", "1.5", "an integer"),
        ("i", "", "an integer"),
        ("i", True, "an integer"),
        ("i", 7.5, "an integer"),
        ("f", "inf", "a finite number"),
        ("f", "abc", "a finite number"),
        ("f", True, "a finite number"),
        ("b", "maybe", "true or false"),
        ("l", '{"a": 1}', "a JSON list"),
        ("l", "[1,", "a JSON list"),
        ("d", "[]", "a JSON object"),
        ("s", 3, "text"),
    ],
)
def test_wrong_types_name_the_parameter(name, value, expected):
    with pytest.raises(UserError, match=rf"--param {name}: expected {expected}"):
        coerce_parameter(name, value, DECLARED)


def test_unknown_parameter_lists_the_known_ones():
    with pytest.raises(UserError, match="no such parameter .it has: b, d, f, i, l, s."):
        coerce_parameter("zz", "1", DECLARED)


def test_assignments():
    assert parse_assignments(["a=1", "b==2", "c="]) == {"a": "1", "b": "=2", "c": ""}
    for bad in (["a"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(UserError):
            parse_assignments(bad)


@pytest.mark.parametrize(
    "expr", ["0 0 3 * * *", "0 */15 * * * *", "0 0 9 ? * MON-FRI", "@daily", " 0  0 3 * * * "]
)
def test_kfp_cron_accepted(expr):
    assert check_cron(expr) == " ".join(expr.split())


@pytest.mark.parametrize("expr", ["0 3 * * *", "0 0 3 * * * *", "61 0 3 * * *", "@every 1h", "x"])
def test_kfp_cron_refused(expr):
    with pytest.raises(UserError, match="--cron"):
        check_cron(expr)
