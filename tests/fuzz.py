"""Hypothesis strategies of hostile source records for the decoder fuzz tests: deep nesting, huge and
odd entity keys, NaN/Infinity and out-of-range numbers, invalid UTF-8 and UTF-16, lone surrogates,
wrong types, seconds instead of milliseconds, empty and null payloads, plus valid events among them."""

from __future__ import annotations

import json
import time

from hypothesis import strategies as st

NOW = int(time.time() * 1000)


def _event(user, ts, amount) -> bytes:
    return json.dumps({"user_id": user, "ts": ts, "amount": amount}).encode()


valid_events = st.builds(
    _event,
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
    st.integers(NOW - 3 * 86_400_000, NOW - 1),
    st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-(10**6), 10**6)),
)

deep = st.integers(200, 5000).map(lambda d: b'{"user_id":' + b"[" * d + b"1" + b"]" * d + b"}")
deep_object = st.integers(200, 4000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d)
huge_keys = st.integers(1000, 6000).map(lambda n: _event("\u00e9" * (n // 2) + "x" * (n % 2), NOW - 1000, 1.0))
non_finite = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" + b"0" * 400]).map(
    lambda v: b'{"user_id":"u","ts":' + str(NOW - 5).encode() + b',"amount":' + v + b"}"
)
invalid_utf8 = st.binary(min_size=1, max_size=64).map(lambda b: b"\xff" + b)
utf16 = st.just(json.dumps({"user_id": "u", "ts": NOW - 1, "amount": 1.0}).encode("utf-16"))
surrogates = st.sampled_from([b'{"user_id":"\\ud800","ts":1700000000000,"amount":1}',
                              b'{"user_id":"u","ts":1700000000000,"amount":1,"x":"\\udfff"}'])  # fmt: skip
wrong_types = st.builds(
    lambda user, ts, amount: json.dumps({"user_id": user, "ts": ts, "amount": amount}).encode(),
    st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none(), st.booleans(), st.just("")),
    st.one_of(st.booleans(), st.text(max_size=10), st.floats(allow_nan=False, allow_infinity=False),
              st.integers(-(10**30), 10**30), st.none()),
    st.one_of(st.text(max_size=5), st.lists(st.floats(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers())),
)
seconds = st.integers(1_000_000_000, 2_000_000_000).map(lambda s: _event("u", s, 1.0))
odd_json = st.sampled_from([b"", b"null", b"[]", b"42", b'"text"', b"{", b'{"user_id":"u"', b"\x00", b" " * 10])
arbitrary = st.binary(max_size=200)

hostile = st.one_of(deep, deep_object, huge_keys, non_finite, invalid_utf8, utf16, surrogates, wrong_types, seconds,
                    odd_json, arbitrary)  # fmt: skip
records = st.lists(st.one_of(valid_events, hostile, st.none()), min_size=1, max_size=40)
