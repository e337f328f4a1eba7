"""Strict JSON on the worker's HTTP API (stream.http_json) and the request checks of stream.reading."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregations.loading import load_registry
from stream import http_json
from stream.reading import (
    BadRequest,
    check_request_inputs,
    json_values,
    parse_vector_request,
    request_columns,
)

TX = load_registry("examples/transactions/features.py").feature_set("transactions")


def strict_loads(raw: bytes):
    def refuse(name):
        raise ValueError(name)

    return json.loads(raw, parse_constant=refuse)


def test_non_finite_values_are_written_as_null():
    value = {"a": math.inf, "b": [-math.inf, 1.5, math.nan], "c": (math.nan,), "d": "x", "e": 3}
    assert strict_loads(http_json.dumps(value)) == {"a": None, "b": [None, 1.5, None], "c": [None], "d": "x", "e": 3}
    assert http_json.dumps({"ok": 1.25}) == b'{"ok":1.25}'


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_every_answer_parses_strictly(value):
    strict_loads(http_json.dumps(value))


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b'{"a": 1e400}', "out of float64 range"),
        (b"[" * 50_000 + b"]" * 50_000, "nested deeper than"),
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than"),
        (b"{oops", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_requests_must_be_strict_json(body, reason):
    with pytest.raises(http_json.NotStrictJSON, match=reason):
        http_json.loads(body)
    with pytest.raises(BadRequest, match=reason):
        parse_vector_request(body)


def test_nesting_within_the_limit_is_accepted():
    body = b'{"entities": [{"user_id": "u", "x": ' + b"[" * 20 + b"]" * 20 + b"}]}"
    assert parse_vector_request(body)[0]["user_id"] == "u"


@pytest.mark.parametrize(
    "amount, reason",
    [("abc", "must be a number"), ([1], "must be a number"), ({"v": 1}, "must be a number"),
     (True, "must be a number"), (10**400, "out of float64 range")],
)  # fmt: skip
def test_on_read_inputs_must_fit_the_schema(amount, reason):
    with pytest.raises(BadRequest, match=rf"entities\[1\]\.amount {reason}|entities\[1\]\.amount is {reason}"):
        check_request_inputs(TX, [{"user_id": "a", "amount": 1.0}, {"user_id": "b", "amount": amount}])
    check_request_inputs(TX, [{"user_id": "a", "amount": 2}, {"user_id": "b", "amount": None}, {"user_id": "c"}])


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e400", "abc"])
def test_query_inputs_must_be_finite_numbers(text):
    with pytest.raises(BadRequest, match="amount"):
        request_columns(TX, {"amount": text})
    assert request_columns(TX, {"amount": "12.5"})["amount"].tolist() == [12.5]


def test_served_values_are_finite_or_null():
    assert json_values(np.array([1.0, np.inf, -np.inf, np.nan])) == [1.0, None, None, None]
    assert json_values(pd.Series([1.5, np.inf], dtype=object).to_numpy()) == [1.5, None]
