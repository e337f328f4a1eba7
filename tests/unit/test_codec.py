"""Online state bytes: round trips keep every read, string and set states included; wrong definitions refuse."""

import numpy as np
import pytest

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.codec import EntityStateCodec, StateMismatch
from aggregations.kernel import EventBatch, build_levels, read


def make_set(windows=("1h", "1d")):
    return FeatureSet(
        "c",
        [Entity("k")],
        "ts",
        "c",
        {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
        [
            Aggregation("x", ["count", "sum", "min", "last", "var"], windows=list(windows)),
            Aggregation("m", ["first", "last", "count_distinct"], windows=["1d"]),
        ],
    )


def test_round_trip_with_strings_sets_and_absent_entities():
    fs = make_set()
    rng = np.random.default_rng(5)
    n, now = 3000, 1_800_000_000_000
    codes = rng.integers(0, 50, n)
    ts = now - rng.integers(0, 2 * 86_400_000, n)
    x = rng.normal(0, 1, n)
    x[::7] = np.nan
    m = np.array([None if i % 11 == 0 else f"m{i % 13}" for i in range(n)], dtype=object)
    levels = build_levels(fs.plan, EventBatch(codes, ts, np.arange(n), {"x": x, "m": m}))
    codec = EntityStateCodec(fs)
    blobs = codec.encode_all(levels, list(range(50)), [{"offsets": {"0": i}} for i in range(50)])
    blobs.insert(3, None)  # an entity with no state yet decodes to nothing
    decoded, metas = codec.decode_many(blobs)
    assert metas[3] == {} and metas[4]["offsets"] == {"0": 3}
    q_codes = np.arange(51)
    original_codes = np.where(q_codes < 3, q_codes, q_codes - 1)
    original_codes[3] = 999  # no such entity
    q_ts = np.full(51, now)
    expected = read(fs.plan, levels, original_codes, q_ts)
    got = read(fs.plan, decoded, q_codes, q_ts)
    for name, values in expected.items():
        assert [repr(v) for v in values.tolist()] == [repr(v) for v in got[name].tolist()], name


def test_state_of_another_definition_is_refused():
    old, new = make_set(("1h",)), make_set(("2h",))
    levels = build_levels(
        old.plan,
        EventBatch(
            np.zeros(1, np.int64),
            np.ones(1, np.int64),
            np.zeros(1, np.int64),
            {"x": np.ones(1), "m": np.array(["a"], dtype=object)},
        ),
    )
    blob = EntityStateCodec(old).encode(levels, 0, {})
    with pytest.raises(StateMismatch, match="written by definition"):
        EntityStateCodec(new).decode_many([blob])
    with pytest.raises(StateMismatch, match="bad magic"):
        EntityStateCodec(new).decode_many([b"junk"])
