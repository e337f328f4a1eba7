"""Online reads of a few entities at one time (``aggregations.entity_read``) against the brute-force oracle
and against the offline kernel's ``read`` on the same state, with hypothesis: every feature, every window, at
times before, between and after the events, through the codec's bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations import Aggregation, Entity, Feature, FeatureSet
from aggregations.codec import EntityStateCodec
from aggregations.entity_read import EntityReader
from aggregations.kernel import EventBatch, build_levels, expire, merge_levels, read
from aggregations.loading import load_registry
from tests import oracle

OPS = ["count", "sum", "avg", "min", "max", "first", "last", "sqr", "var", "std", "count_distinct"]
EXACT = {"count", "count_distinct", "min", "max", "first", "last"}
FS = FeatureSet(
    "p",
    [Entity("k")],
    "ts",
    "p",
    {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
    [
        Aggregation("x", OPS, windows=["4s", "10s", "60s"], periods=["1s", "2s", "10s"]),
        Aggregation("m", ["first", "last", "count_distinct"], windows=["10s"], periods=["2s"]),
    ],
)
CODEC = EntityStateCodec(FS)
READER = EntityReader(CODEC)
SPAN = 90_000

values = st.one_of(st.none(), st.integers(-(10**6), 10**6).map(lambda i: i / 100))
labels = st.one_of(st.none(), st.sampled_from(["a", "b", "", "c"]))
timestamps = st.one_of(
    st.integers(0, SPAN),
    st.integers(0, SPAN // 1000).map(lambda s: s * 1000),  # exactly on tile boundaries
    st.integers(0, SPAN // 1000).map(lambda s: s * 1000 - 1),
)
events_st = st.lists(st.tuples(st.integers(0, 3), timestamps, values, labels), min_size=0, max_size=60)
times_st = st.lists(st.integers(0, SPAN + 70_000), min_size=1, max_size=6)


def _batch(evs, seq0=0) -> EventBatch:
    return EventBatch(
        np.array([e[0] for e in evs], dtype=np.int64),
        np.array([e[1] for e in evs], dtype=np.int64),
        np.arange(seq0, seq0 + len(evs), dtype=np.int64),
        {
            "x": np.array([np.nan if e[2] is None else e[2] for e in evs], dtype=np.float64),
            "m": np.array([e[3] for e in evs], dtype=object),
        },
    )


def _blobs(evs, split: int, now: int) -> list:
    """Entities 0..4 (4 never has events) stored as the worker stores them: two batches merged, expired at
    ``now``, encoded."""
    levels = build_levels(FS.plan, _batch(evs[:split]))
    levels = merge_levels(levels, build_levels(FS.plan, _batch(evs[split:], seq0=split)))
    levels = expire(FS.plan, levels, now)
    return CODEC.encode_all(levels, list(range(5)), [{"offsets": {"0": i}} for i in range(5)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events_st, st.integers(0, 60), times_st, st.integers(0, 5))
def test_reads_equal_the_oracle_and_the_kernel(evs, split, times, n):
    now = 0  # expire nothing a read at t >= 0 can reach
    blobs = _blobs(evs, min(split, len(evs)), now)
    picked = [blobs[i % 5] for i in range(n)] + [None]  # repeats, and an entity without state
    codes = [i % 5 for i in range(n)] + [4]
    ref = [dict(key=c, ts=t, seq=i, value=x, label=m) for i, (c, t, x, m) in enumerate(evs)]
    levels, _ = CODEC.decode_many(picked)
    for t in times:
        got = READER.read(picked, t)
        alone = [READER.read([blob], t) for blob in picked]  # one entity a read: a GET's path
        kernel = read(FS.plan, levels, np.arange(len(picked)), np.full(len(picked), t))
        for f in FS.plan.features:
            rows = [dict(r, value=r["value"] if f.column == "x" else r["label"]) for r in ref]
            for i, code in enumerate(codes):
                in_window = oracle.window_events(rows, code, t, f.window.length, f.window.period)
                want = oracle.aggregate(f.op, in_window)
                other = kernel[f.name][i]
                for path, value in (("batch", got[f.name][i]), ("alone", alone[i][f.name][0])):
                    where = f"{f.name} of entity {code} at t={t}: oracle {want}, read {value} ({path}), kernel {other}"
                    if want is None:
                        assert value is None or (isinstance(value, float) and math.isnan(value)), where
                    elif f.op in EXACT:
                        assert value == want == other, where
                    else:
                        tol = 1e-9 * abs(want) + oracle.tolerance(f.op, in_window)
                        assert abs(value - want) <= tol and abs(value - other) <= 1e-12 * abs(want) + 1e-12, where


def test_named_features_only_and_no_entities():
    blobs = _blobs([(0, 1000, 2.0, "a"), (0, 1500, 3.0, "b")], 1, 0)
    got = READER.read(blobs[:1], 5000, ["x_sum_10s", "m_last_10s"])
    assert set(got) == {"x_sum_10s", "m_last_10s"}
    assert got["x_sum_10s"].tolist() == [5.0] and got["m_last_10s"].tolist() == ["b"]
    assert all(len(v) == 0 for v in READER.read([], 5000).values())


def _events_state(feature_set, columns, n_events, entities, now, seed, days=40):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, entities, n_events)
    ts = now - rng.integers(1, days * 86_400_000, n_events)
    batch = EventBatch(codes, ts, np.arange(n_events), {c: make(rng, n_events) for c, make in columns.items()})
    levels = expire(feature_set.plan, build_levels(feature_set.plan, batch), now)
    codec = EntityStateCodec(feature_set)
    return codec, codec.encode_all(levels, list(range(entities)), [{}] * entities)


@pytest.mark.parametrize("n_events, days", [(3000, 40), (20_000, 2)])  # the second fills tiles past k (compacted)
def test_sketch_ops_read_as_the_kernel_reads(n_events, days):
    payments = load_registry("examples/payments/features.py").feature_set("payments")
    now = 1_800_000_000_000
    columns = {
        "amount": lambda rng, n: np.round(rng.lognormal(3, 1, n), 2),
        "merchant": lambda rng, n: np.array([f"m{i}" for i in rng.integers(0, 600, n)], dtype=object),
    }
    codec, blobs = _events_state(payments, columns, n_events, 6, now, 3, days)
    levels, _ = codec.decode_many(blobs)
    for at in (now, now + 1, now + 7_200_000):
        got = EntityReader(codec).read(blobs, at)
        want = read(payments.plan, levels, np.arange(6), np.full(6, at))
        for f in payments.plan.features:  # sketch reads unite tiles' items: deterministic, equal to the kernel's
            assert [repr(v) for v in got[f.name]] == [repr(v) for v in want[f.name]], f.name


def test_plain_features_read_as_the_kernel_reads():
    profiles = FeatureSet(
        "profiles",
        [Entity("user_id")],
        "ts",
        "profiles",
        {"user_id": "string", "ts": "timestamp", "age": "int64", "amount": "float64"},
        aggregations=[Aggregation("amount", ["count", "last"], windows=["1h"])],
        features=[Feature("age", ttl="2h"), Feature("amount", name="last_amount")],
    )
    codec = EntityStateCodec(profiles)
    rng = np.random.default_rng(9)
    n, now = 400, 1_800_000_000_000
    batch = EventBatch(
        rng.integers(0, 5, n),
        now - rng.integers(-1000, 4 * 3_600_000, n),
        np.arange(n),
        {"amount": rng.normal(0, 1, n)},
        {"age": np.array([int(a) for a in rng.integers(0, 90, n)], dtype=object),
         "amount": np.array([float(a) for a in rng.normal(0, 1, n)], dtype=object)},
    )  # fmt: skip
    levels = build_levels(profiles.plan, batch)
    blobs = codec.encode_all(levels, list(range(5)), [{}] * 5)
    decoded, _ = codec.decode_many(blobs)
    for at in (now - 3_600_000, now, now + 2_000, now + 3 * 3_600_000):
        got = EntityReader(codec).read(blobs, at)
        want = read(profiles.plan, decoded, np.arange(5), np.full(5, at))
        assert set(got) == set(want)
        for name in want:
            assert [repr(v) for v in got[name]] == [repr(v) for v in want[name]], name
