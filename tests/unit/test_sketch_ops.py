"""Sketch ops (approx_count_distinct, approx_percentile, top_k, last_k) against the brute-force oracle.

Small windows are in the sketches' exact regime (KLL holds up to 200 values, the frequent items map more
distinct values than the data has, last_k is always exact): there reads must equal the oracle, under any
split into batches and any merge order. Larger windows are checked over many seeds against the library's
stated bounds: CPC within its relative standard error, KLL within its normalized rank error, frequent
items within its a priori error. The merge law holds exactly where the sketch is deterministic under merge
(CPC, last_k, and the others in their exact regime) and within twice the bound elsewhere.
"""

from __future__ import annotations

import json
import math
import re

import datasketches as ds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.codec import EntityStateCodec
from aggregations.compute import fold_into_state
from aggregations.drift import feature_drift
from aggregations.kernel import EventBatch, build_levels, empty_levels, expire, merge_levels, read
from aggregations.sketch_fields import kll_items
from sinks.training_sets import differences
from tests import oracle

CPC_RSE = math.log(2) / math.sqrt(2**11)  # the ICON estimator's relative standard error at lg_k 11
KLL_EPS = ds.kll_doubles_sketch.get_normalized_rank_error(200, False)  # single quantile, 99% confidence

X_OPS = ["approx_percentile(0, 0.25, 0.5, 0.9, 1)", "last_k(3)", "approx_count_distinct", "top_k(20)"]
M_OPS = ["approx_count_distinct", "count_distinct", "top_k(3)", "last_k(2)"]
FS = FeatureSet(
    "sk",
    [Entity("k")],
    "ts",
    "sk",
    {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
    [
        Aggregation("x", X_OPS, windows=["4s", "10s", "60s"], periods=["1s", "2s", "10s"]),
        Aggregation("m", M_OPS, windows=["10s", "60s"], periods=["2s", "10s"]),
    ],
)
PLAN = FS.plan
SPAN = 90_000

xs = st.one_of(st.none(), st.integers(-2000, 2000).map(lambda i: i / 8))  # ties are common on purpose
ms = st.one_of(st.none(), st.sampled_from(["", "a", "b", "é", "a b", "zz", "a\u0301"]))
timestamps = st.one_of(
    st.integers(0, SPAN),
    st.integers(0, SPAN // 1000).map(lambda s: s * 1000),
    st.integers(0, SPAN // 1000).map(lambda s: s * 1000 - 1),
)
events_st = st.lists(st.tuples(st.integers(0, 3), timestamps, xs, ms), max_size=60)
queries_st = st.lists(st.tuples(st.integers(0, 4), st.integers(0, SPAN + 70_000)), min_size=1, max_size=20)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def as_batch(evs, seq_offset=0) -> EventBatch:
    n = len(evs)
    m = np.empty(n, dtype=object)
    for i, e in enumerate(evs):
        m[i] = e[3]
    return EventBatch(
        np.array([e[0] for e in evs], dtype=np.int64),
        np.array([e[1] for e in evs], dtype=np.int64),
        np.arange(seq_offset, seq_offset + n, dtype=np.int64),
        {"x": np.array([np.nan if e[2] is None else e[2] for e in evs], dtype=np.float64), "m": m},
    )


def oracle_rows(evs, column):
    pos = {"x": 2, "m": 3}[column]
    return [dict(key=e[0], ts=e[1], seq=i, value=e[pos]) for i, e in enumerate(evs)]


def count_within(true: int, estimate: int) -> bool:
    """CPC's stated accuracy: within 4 relative standard errors, plus one for a coupon collision at tiny counts."""
    return abs(estimate - true) <= 4 * CPC_RSE * true + 1


def is_null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def assert_exact_regime(values: dict, evs, queries) -> None:
    """Every sketch feature equals the oracle (approx_count_distinct: within its bound)."""
    rows = {c: oracle_rows(evs, c) for c in ("x", "m")}
    for f in PLAN.features:
        w = f.window
        for i, (code, t) in enumerate(queries):
            in_window = oracle.window_events(rows[f.column], code, t, w.length, w.period)
            want = oracle.aggregate(f.op, in_window, f.params)
            got = values[f.name][i]
            where = f"{f.name} at entity={code} t={t}: expected {want!r}, got {got!r}"
            if f.op == "approx_count_distinct":
                assert count_within(want, got), where
            elif want is None:
                assert is_null(got), where
            else:
                assert got == want, where


@SETTINGS
@given(events_st, queries_st)
def test_reads_match_the_oracle_in_the_exact_regime(evs, queries):
    levels = build_levels(PLAN, as_batch(evs))
    assert_exact_regime(read(PLAN, levels, [q[0] for q in queries], [q[1] for q in queries]), evs, queries)


@SETTINGS
@given(events_st, st.integers(0, 60), st.integers(0, 60), queries_st)
def test_merge_law_any_split_and_order_gives_the_same_values(evs, c1, c2, queries):
    c1, c2 = sorted((min(c1, len(evs)), min(c2, len(evs))))
    parts = [
        build_levels(PLAN, as_batch(evs[:c1])),
        build_levels(PLAN, as_batch(evs[c1:c2], c1)),
        build_levels(PLAN, as_batch(evs[c2:], c2)),
    ]
    q_codes, q_ts = [q[0] for q in queries], [q[1] for q in queries]
    whole = read(PLAN, build_levels(PLAN, as_batch(evs)), q_codes, q_ts)
    for merged in (
        merge_levels(merge_levels(parts[0], parts[1]), parts[2]),
        merge_levels(parts[2], merge_levels(parts[1], parts[0])),
        merge_levels(empty_levels(PLAN), merge_levels(parts[0], merge_levels(parts[1], parts[2]))),
    ):
        got = read(PLAN, merged, q_codes, q_ts)
        for name, values in whole.items():
            assert [None if is_null(v) else v for v in got[name]] == [None if is_null(v) else v for v in values], name
    assert_exact_regime(whole, evs, queries)


@SETTINGS
@given(events_st, st.integers(0, SPAN), queries_st)
def test_codec_round_trip_and_expiry_keep_reads(evs, now, queries):
    codec = EntityStateCodec(FS)
    levels = expire(PLAN, build_levels(PLAN, as_batch(evs)), now)
    decoded, _ = codec.decode_many(codec.encode_all(levels, list(range(5)), [{}] * 5))
    later = [(c, now + (t % 70_000)) for c, t in queries]
    assert_exact_regime(read(PLAN, decoded, [q[0] for q in later], [q[1] for q in later]), evs, later)


# -- larger windows: the library's stated error bounds, over many seeds -----------------------------------

BIG = FeatureSet(
    "big",
    [Entity("k")],
    "ts",
    "big",
    {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
    [
        Aggregation("x", ["approx_percentile(0.01, 0.1, 0.5, 0.9, 0.99)"], windows=["1d"]),
        Aggregation("m", ["approx_count_distinct", "top_k(5)", "last_k(4)"], windows=["1d"]),
    ],
)
DAY = 86_400_000


def big_events(seed: int, n: int, distinct: int) -> pd.DataFrame:
    """n events of one entity over a day: lognormal amounts, Zipf-like merchants out of ``distinct``."""
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.3, n), distinct) - 1
    return pd.DataFrame(
        {
            "k": "e",
            "ts": np.sort(rng.integers(0, DAY, n)),
            "x": np.round(rng.lognormal(3, 1, n), 2),
            "m": [f"merchant-{seed}-{r}" for r in ranks],
        }
    )


def rows_of(frame: pd.DataFrame, column: str) -> list[dict]:
    return [
        dict(key="e", ts=int(t), seq=i, value=v) for i, (t, v) in enumerate(zip(frame["ts"], frame[column], strict=True))
    ]


def online_and_offline(frame: pd.DataFrame, batch: int):
    """Values at the end of the day: folded batch by batch through the codec (as the worker does), and in one go."""
    codec = EntityStateCodec(BIG)
    codes = np.zeros(len(frame), dtype=np.int64)
    blob = None
    for start in range(0, len(frame), batch):
        part = frame.iloc[start : start + batch]
        stored = None if blob is None else codec.decode_many([blob])[0]
        seq = np.arange(start, start + len(part))
        levels, late = fold_into_state(BIG, stored, part, codes[: len(part)], seq, now_ms=DAY)
        assert not late.any()
        (blob,) = codec.encode_all(levels, [0], [{}])
    online = read(BIG.plan, codec.decode_many([blob])[0], [0], [DAY])
    whole, _ = fold_into_state(BIG, None, frame, codes, np.arange(len(frame)), now_ms=DAY)
    return online, read(BIG.plan, whole, [0], [DAY]), len(blob)


@pytest.fixture(scope="module")
def big_runs():
    """Ten seeded entities of 6,000 events each (over 1,000 distinct merchants), online and offline."""
    runs = []
    for seed in range(10):
        frame = big_events(seed, 6_000, 3_000)
        online, offline, size = online_and_offline(frame, batch=700)
        runs.append((frame, online, offline, size))
    return runs


def test_approx_count_distinct_is_within_its_relative_error_and_identical_online_and_offline(big_runs):
    z = []
    for frame, online, offline, _ in big_runs:
        true = oracle.aggregate("approx_count_distinct", rows_of(frame, "m"))
        est = online["m_approx_count_distinct_1d"][0]
        assert est == offline["m_approx_count_distinct_1d"][0]  # CPC is deterministic under merge
        assert count_within(true, est), (true, est)
        z.append((est - true) / (CPC_RSE * true))
    assert math.sqrt(np.mean(np.square(z))) <= 1.5, z  # RMS error in units of the stated RSE


def test_approx_percentile_is_within_the_rank_error_online_and_offline(big_runs):
    checks = []
    for frame, online, offline, _ in big_runs:
        rows = rows_of(frame, "x")
        for q in (0.01, 0.1, 0.5, 0.9, 0.99):
            name = f"x_{oracle_label(q)}_1d"
            for values in (online, offline):
                x = values[name][0]
                assert oracle.percentile_within(rows, q, x, 2 * KLL_EPS), (name, q, x)
                checks.append(oracle.percentile_within(rows, q, x, KLL_EPS))
    # The bound holds at 99% confidence per quantile; nearly all reads must be within it.
    assert np.mean(checks) >= 0.97, np.mean(checks)


def oracle_label(q: float) -> str:
    return {0.01: "p01", 0.1: "p10", 0.5: "p50", 0.9: "p90", 0.99: "p99"}[q]


def test_top_k_counts_are_within_the_a_priori_error_and_nothing_more_frequent_is_missed(big_runs):
    lg = 6  # top_k(5): max(6, ceil(log2 5) + 3)
    for frame, online, offline, _ in big_runs:
        rows = rows_of(frame, "m")
        counts = oracle.value_counts(rows)
        bound = ds.frequent_strings_sketch.get_apriori_error(lg, len(rows))
        for values in (online, offline):
            top = values["m_top5_1d"][0]
            assert len(top) == 5
            assert [t["count"] for t in top] == sorted((t["count"] for t in top), reverse=True)
            for item in top:
                true = counts[item["value"]]
                assert true <= item["count"] <= true + bound, (item, true, bound)
            reported = {t["value"] for t in top}
            floor = min(t["count"] for t in top)
            missed = [(v, c) for v, c in counts.items() if v not in reported and c > floor]
            assert not missed, (missed, top)
        for a, b in zip(online["m_top5_1d"][0], offline["m_top5_1d"][0], strict=True):
            assert abs(a["count"] - b["count"]) <= 2 * bound  # not deterministic under merge: twice the bound


def test_last_k_is_exact_online_and_offline(big_runs):
    for frame, online, offline, _ in big_runs:
        want = oracle.aggregate("last_k", rows_of(frame, "m"), (4,))
        assert online["m_last4_1d"][0] == want == offline["m_last4_1d"][0]


def test_merge_trees_give_identical_distinct_counts():
    """CPC's estimate depends only on the values merged in: tiles merged in any grouping agree exactly."""
    frame = big_events(99, 20_000, 15_000)
    rng = np.random.default_rng(3)
    estimates = set()
    for batch in (1_000, 2_345, 20_000):
        order = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 30))) if batch != 20_000 else frame
        online, _, _ = online_and_offline(order.reset_index(drop=True), batch)
        estimates.add(int(online["m_approx_count_distinct_1d"][0]))
    assert len(estimates) == 1, estimates


# -- declarations, naming and plain-data definitions --------------------------------------------------------


def sketch_set(ops, column="m"):
    return FeatureSet(
        "d", [Entity("k")], "ts", "d", {"k": "string", "ts": "timestamp", "x": "float64", "m": "string"},
        [Aggregation(column, ops, windows=["1d"])],
    )  # fmt: skip


def test_parametrized_ops_name_their_features_deterministically():
    fs = sketch_set(["approx_percentile(0.5, 0.9, 0.99, 0.999, 0.05, 1)", "count"], column="x")
    assert fs.feature_names() == [
        "x_p50_1d", "x_p90_1d", "x_p99_1d", "x_p999_1d", "x_p05_1d", "x_p100_1d", "x_count_1d",
    ]  # fmt: skip
    fs = sketch_set(["top_k(5)", "last_k(3)", "approx_count_distinct"])
    assert fs.feature_names() == ["m_top5_1d", "m_last3_1d", "m_approx_count_distinct_1d"]
    assert all(name.isidentifier() for name in fs.feature_names())


def test_the_definition_is_plain_data_and_its_fingerprint_covers_parameters():
    a = sketch_set(["top_k(5)"])
    assert a.definition()["aggregations"][0]["ops"] == ["top_k(5)"]
    assert sketch_set(["top_k( 5 )"]).fingerprint() == a.fingerprint()  # spelled differently, same op
    assert sketch_set(["top_k(6)"]).fingerprint() != a.fingerprint()
    q = sketch_set(["approx_percentile(0.5, 1)"], column="x")
    assert q.definition()["aggregations"][0]["ops"] == ["approx_percentile(0.5,1.0)"]
    assert sketch_set(["approx_percentile(0.50, 1.0)"], column="x").fingerprint() == q.fingerprint()
    assert sketch_set(["approx_percentile(0.5, 0.99)"], column="x").fingerprint() != q.fingerprint()
    # Plain ops keep their definition (and so the state of existing feature sets stays valid).
    assert sketch_set(["count", "last"]).definition()["aggregations"][0]["ops"] == ["count", "last"]


@pytest.mark.parametrize(
    "ops, message",
    [
        (["top_k"], "top_k(k) with k in 1..100"),
        (["top_k(0)"], "needs one integer k in 1..100"),
        (["top_k(101)"], "needs one integer k in 1..100"),
        (["last_k(2.5)"], "needs one integer k"),
        (["approx_percentile(1.5)"], "not a number in [0, 1]"),
        (["approx_percentile(0.12345)"], "more than 4 decimals"),
        (["approx_percentile(0.5, 0.50)"], "duplicate quantile"),
        (["approx_percentile(x)"], "argument 'x' is not a number"),
        (["avg(3)"], "takes no arguments"),
        (["top_k(5)", "top_k(5)"], "duplicate op"),
        (["top_k(5)", "top_k( 5)"], "duplicate op"),
        (["top_k(5"], "malformed op"),
        (["approx_median"], "unknown op 'approx_median'"),
    ],
)
def test_bad_op_specs_are_clear_errors(ops, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sketch_set(ops)


def test_percentiles_need_a_numeric_column():
    with pytest.raises(ValueError, match=r"op 'approx_percentile\(0.5\)' needs a numeric column"):
        sketch_set(["approx_percentile(0.5)"], column="m")


def test_list_features_survive_parquet_and_drift_sees_the_same_values():
    """top_k/last_k are lists: Parquet stores them as list<struct>/list<string>, and drift keys a list read
    back from Parquet (numpy arrays) exactly like the same list served as JSON."""
    fs = sketch_set(["top_k(2)", "last_k(2)", "approx_count_distinct"])
    events = pd.DataFrame(
        {"k": list("aabab"), "ts": pd.to_datetime([1, 2, 3, 4, 5], unit="s", utc=True), "x": 1.0,
         "m": ["p", "q", "p", "", "p"]}
    )  # fmt: skip
    got = fs.preview(events)
    assert got["m_top2_1d"].tolist() == [
        None, [{"value": "p", "count": 1}], None,
        [{"value": "p", "count": 1}, {"value": "q", "count": 1}], [{"value": "p", "count": 1}],
    ]  # fmt: skip
    assert got["m_last2_1d"].tolist() == [None, ["p"], None, ["q", "p"], ["p"]]
    assert got["m_approx_count_distinct_1d"].tolist() == [0, 1, 0, 2, 1]
    plain = got.copy()
    plain.attrs = {}  # preview's statistics are not meant for Parquet
    table = pa.Table.from_pandas(plain, preserve_index=False)
    assert str(table.schema.field("m_top2_1d").type) == "list<item: struct<value: string, count: int64>>"
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    back = pq.read_table(pa.BufferReader(buffer.getvalue())).to_pandas()
    served = pd.Series(json.loads(json.dumps(got["m_top2_1d"].tolist())))
    assert feature_drift("m_top2_1d", back["m_top2_1d"], served).psi == 0.0
    # A rebuilt training set compares equal to the stored one, and a changed list is found.
    assert differences(back, pq.read_table(pa.BufferReader(buffer.getvalue())).to_pandas()) == []
    changed = back.copy()
    changed.at[3, "m_last2_1d"] = ["p", "q"]
    assert differences(back, changed) == ["m_last2_1d: 1 rows differ (row 3: array(['q', 'p'], dtype=object) vs ['p', 'q'])"]


def test_the_same_serialized_state_reads_the_same_values(big_runs):
    """Bit for bit where it matters: the online value comes from the stored sketch bytes, and reading those
    bytes again (another request, another worker after a rebalance) gives exactly the same values, also for
    the sketches that are randomized while they are built (KLL) or order-dependent (frequent items)."""
    frame = big_runs[0][0]
    codec = EntityStateCodec(BIG)
    levels, _ = fold_into_state(BIG, None, frame, np.zeros(len(frame), np.int64), np.arange(len(frame)), DAY)
    (blob,) = codec.encode_all(levels, [0], [{}])
    first = read(BIG.plan, codec.decode_many([blob])[0], [0], [DAY])
    again = read(BIG.plan, codec.decode_many([bytes(blob)])[0], [0], [DAY])
    assert {k: v.tolist() for k, v in first.items()} == {k: v.tolist() for k, v in again.items()}


def test_windows_of_exact_tiles_read_exactly_however_many_values_they_hold():
    """A read unites the tiles' sketches without compacting: 2,000 values over 24 hourly tiles of fewer than
    200 values, and 480 merchants with at most 20 per tile, read exactly, online and offline."""
    frame = big_events(5, 2_000, 30)
    hours = frame["ts"] // 3_600_000
    # 20 merchants an hour, 480 in the day: far more than top_k(5)'s map (48), never more within a tile.
    frame["m"] = [f"m{h}-{i % 20 if i % 3 else i % 5}" for i, h in enumerate(hours)]
    online, offline, _ = online_and_offline(frame, batch=300)
    amounts, merchants = rows_of(frame, "x"), rows_of(frame, "m")
    for q in (0.01, 0.1, 0.5, 0.9, 0.99):
        want = oracle.aggregate("approx_percentile", amounts, (q,))
        name = f"x_{oracle_label(q)}_1d"
        assert online[name][0] == offline[name][0] == want, (name, online[name][0], offline[name][0], want)
    want = oracle.aggregate("top_k", merchants, (5,))
    assert online["m_top5_1d"][0] == offline["m_top5_1d"][0] == want


def test_kll_items_are_read_as_the_library_iterates_them():
    for n in (0, 1, 2, 199, 200, 201, 5_000, 123_457):
        sketch = ds.kll_doubles_sketch(200)
        if n:
            sketch.update(np.random.default_rng(n).lognormal(size=n))
        values, weights = kll_items(sketch.serialize())
        assert sorted(zip(values.tolist(), weights.tolist(), strict=True)) == sorted((v, int(w)) for v, w in sketch), n
        assert int(weights.sum()) == n
