"""Plain features (``Feature``): the latest event's value within a ttl, against the brute-force oracle.

Offline/preview (every event a candidate) and the online path (micro-batches folded into state, stored
through the codec, expired as time moves on, then read) must both equal ``tests.oracle.latest_at``; the
column's own dtype is kept (ints stay ints) and a null in the latest event is served as null.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations import Aggregation, Entity, EventValidator, Feature, FeatureSet
from aggregations.codec import EntityStateCodec
from aggregations.compute import fold_into_state
from aggregations.kernel import read
from aggregations.schema import entity_keys
from tests import oracle

SCHEMA = {"user_id": "string", "ts": "timestamp", "age": "int64", "country": "string", "amount": "float64"}
HOUR = 3_600_000


def _profiles(with_aggregation: bool = True) -> FeatureSet:
    return FeatureSet(
        name="profiles",
        entities=[Entity("user_id")],
        timestamp_key="ts",
        source="profiles",
        schema=SCHEMA,
        features=[
            Feature("age", ttl="2h"),
            Feature("country"),
            Feature("amount", ttl="30m", name="last_amount"),
        ],
        aggregations=[Aggregation("amount", ["count"], windows=["1h"])] if with_aggregation else (),
    )


FS = _profiles()
TTL = {"age": 2 * HOUR, "country": None, "last_amount": HOUR // 2}
COLUMN = {"age": "age", "country": "country", "last_amount": "amount"}

events_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "user_id": st.sampled_from(["a", "b", "c"]),
            "ts": st.integers(0, 5 * HOUR).map(lambda x: x - x % 600_000),  # coarse: many equal times
            "age": st.one_of(st.none(), st.integers(-(2**62), 2**62)),
            "country": st.one_of(st.none(), st.sampled_from(["fr", "de", "jp"])),
            "amount": st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
        }
    ),
    min_size=0,
    max_size=40,
)


def _oracle_rows(events, column):
    return [{"key": e["user_id"], "ts": e["ts"], "seq": i, "value": e[column]} for i, e in enumerate(events)]


def _frame(events) -> pd.DataFrame:
    return EventValidator(FS, max_future="1000d").to_frame(events)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, times=st.lists(st.integers(0, 6 * HOUR), min_size=1, max_size=10))
def test_preview_equals_the_oracle_and_keeps_dtypes(events, times):
    at = pd.DataFrame([{"user_id": u, "ts": t} for t in times for u in ("a", "b", "c", "nobody")])
    got = FS.preview(_frame(events), at=at)
    assert str(got["age"].dtype) == "Int64" and got["last_amount"].dtype == np.float64
    for i, row in at.iterrows():
        for name, column in COLUMN.items():
            want = oracle.latest_at(_oracle_rows(events, column), row["user_id"], row["ts"], TTL[name])
            value = got[name].iloc[i]
            assert (None if pd.isna(value) else value) == want, (name, row.to_dict(), value, want)
            if want is not None and name == "age":
                assert int(value) == want  # no float rounding of big ints


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=events_strategy,
    cuts=st.lists(st.integers(0, 40), max_size=4),
    now0=st.integers(0, 5 * HOUR),
    steps=st.lists(st.integers(0, HOUR), min_size=5, max_size=5),
    reads=st.lists(st.integers(0, 3 * HOUR), min_size=1, max_size=5),
)
def test_online_fold_expire_and_codec_equal_the_oracle(events, cuts, now0, steps, reads):
    """Batches in arrival order, each folded at a later ``now`` (events may lie in the future of it), state
    through the codec between batches; reads at t >= the last now equal the oracle over the applied events."""
    codec = EntityStateCodec(FS)
    store: dict[str, bytes] = {}
    bounds = sorted({0, len(events), *[min(c, len(events)) for c in cuts]})
    applied, now = [], now0
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        now += steps[k % len(steps)]
        batch = events[lo:hi]
        frame = _frame(batch)
        keys = entity_keys(FS, frame)
        uniques = list(dict.fromkeys(keys.tolist()))
        stored, _ = codec.decode_many([store.get(u) for u in uniques])
        codes = np.array([uniques.index(k) for k in keys], dtype=np.int64)
        seq = np.arange(lo, hi, dtype=np.int64)
        state, late = fold_into_state(FS, stored, frame, codes, seq, now)
        applied += [dict(e, seq=lo + i) for i, e in enumerate(batch) if not late[i]]
        for code, blob in enumerate(codec.encode_all(state, list(range(len(uniques))), [{}] * len(uniques))):
            store[uniques[code]] = blob
    users = ["a", "b", "c"]
    levels, _ = codec.decode_many([store.get(u) for u in users])
    for offset in reads:
        t = now + offset
        got = read(FS.plan, levels, np.arange(3), np.full(3, t))
        for name, column in COLUMN.items():
            rows = [
                {"key": e["user_id"], "ts": e["ts"], "seq": e["seq"], "value": e[column]} for e in applied
            ]
            for code, user in enumerate(users):
                want = oracle.latest_at(rows, user, t, TTL[name])
                assert got[name][code] == want and type(got[name][code]) is type(want), (name, user, t)


def test_online_state_stays_small():
    """Expiry keeps per entity its latest event before now and those at/after now, nothing older."""
    codec = EntityStateCodec(FS)
    events = [
        {"user_id": "a", "ts": i * 60_000, "age": i, "country": "fr", "amount": 1.0} for i in range(200)
    ]
    frame = _frame(events)
    state, _ = fold_into_state(
        FS, None, frame, np.zeros(200, np.int64), np.arange(200), now_ms=100 * 60_000 + 1
    )
    assert len(state.latest) == 100  # event 100 (the latest before now) and the 99 after it
    meta, _ = codec.decode_meta(codec.encode(state, 0))
    assert len(meta["latest"]["ts"]) == 100


def test_declarations():
    only = _profiles(with_aggregation=False)
    assert only.feature_names() == ["age", "country", "last_amount"] and only.plan.windows == ()
    assert only.plan.reach_ms is None  # country has no ttl
    with pytest.raises(ValueError, match="is declared string, but column 'age' is int64"):
        FeatureSet("x", [Entity("user_id")], "ts", "x", SCHEMA, features=[Feature("age", dtype="string")])
    with pytest.raises(ValueError, match="not in the schema"):
        FeatureSet("x", [Entity("user_id")], "ts", "x", SCHEMA, features=[Feature("nope")])
    with pytest.raises(ValueError, match="a transform makes: give its dtype"):
        FeatureSet(
            "x", [Entity("user_id")], "ts", "x", SCHEMA, features=[Feature("nope")], transforms=[lambda f: f]
        )
    with pytest.raises(ValueError, match="ttl malformed duration"):
        Feature("age", ttl="0s")
    with pytest.raises(ValueError, match="needs at least one Aggregation or Feature"):
        FeatureSet("x", [Entity("user_id")], "ts", "x", SCHEMA)
    with pytest.raises(ValueError, match="duplicate feature name"):
        FeatureSet(
            "x",
            [Entity("user_id")],
            "ts",
            "x",
            SCHEMA,
            features=[Feature("age"), Feature("country", name="age")],
        )
    plain = FeatureSet(
        "x", [Entity("user_id")], "ts", "x", SCHEMA, aggregations=[Aggregation("amount", ["sum"], ["1h"])]
    )
    assert "features" not in plain.definition()  # sets without plain features keep their fingerprint
    assert FS.definition()["features"][0] == {
        "column": "age",
        "name": "age",
        "dtype": None,
        "ttl_ms": 2 * HOUR,
    }


def test_preview_of_events_names_a_clashing_feature_by_its_set():
    events = _frame([{"user_id": "a", "ts": 1, "age": 30, "country": None, "amount": 2.0},
                     {"user_id": "a", "ts": 2, "age": None, "country": "fr", "amount": 3.0}])  # fmt: skip
    got = FS.preview(events)
    assert got["profiles.age"].tolist()[1] == 30 and got["profiles.country"].isna().tolist() == [True, True]
    assert got["age"].isna().tolist() == [False, True]  # the events' own column is untouched
