"""Offline retrieval (``sinks.get_offline_features``) on small hand-made Parquet datasets, against the oracle.

The expected values come from ``tests/oracle.py`` (brute force over the raw events), never from the
code under test. Counts, min, max, first and last must be equal; float results within 1e-9 relative.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations import Aggregation, Entity, EventValidator, FeatureSet, FeatureVector, OnRead, Registry
from sinks import get_offline_features, read_events
from sinks.layout import dataset_dir
from sinks.writer import write_batch
from tests import oracle

OPS = ["count", "sum", "avg", "min", "max", "first", "last", "var", "count_distinct"]


def amount_ratio(f):
    """On-read feature at module level, so the set pickles (worker processes need that)."""
    return f["amount"] / f["amount_avg_10s"]


def pay_set(on_read_fn=amount_ratio) -> FeatureSet:
    return FeatureSet(
        "pay",
        [Entity("user")],
        "ts",
        "pay",
        {"user": "string", "ts": "timestamp", "amount": "float64"},
        [Aggregation("amount", OPS, windows=["4s", "10s", "60s"], periods=["1s", "2s", "10s"])],
        on_read=[OnRead("amount_ratio", on_read_fn, inputs=["amount"])],
    )


PAY = pay_set()
SHOP = FeatureSet(
    "shop",
    [Entity("shop")],
    "ts",
    "shop",
    {"shop": "string", "ts": "timestamp", "amount": "float64"},
    [Aggregation("amount", ["count", "max", "last"], windows=["10s"], periods=["5s"])],
)
REGISTRY = Registry([PAY, SHOP], [FeatureVector("both", ["pay.amount_sum_10s", "shop.amount_count_10s"])])


def write_events(store, fs, events):
    """events: dicts with the set's columns + partition, offset, arrival; written as the sink would."""
    root = dataset_dir(store, fs.name)
    frame = pd.DataFrame(events)
    for partition, part in frame.groupby("partition"):
        rows = part[list(fs.schema)].to_dict("records")
        typed = EventValidator(fs).to_frame(
            [{k: (None if _nan(v) else v) for k, v in r.items()} for r in rows]
        )
        write_batch(fs, root, int(partition), typed, part["offset"].to_numpy(), part["arrival"].to_numpy())


def _nan(v):
    return isinstance(v, float) and math.isnan(v)


def oracle_events(events, entity):
    """Oracle input: ties of equal ts in source order (offset, then partition), computed here independently."""
    ranked = sorted(events, key=lambda e: (e["offset"], e["partition"]))
    return [
        dict(key=e[entity], ts=e["ts"], seq=i, value=e["amount"], arrival=e["arrival"])
        for i, e in enumerate(ranked)
    ]


def assert_feature(value, expected, op, in_window, where):
    if expected is None:
        assert value is None or (isinstance(value, float) and math.isnan(value)), where
    elif op in ("count", "count_distinct", "min", "max", "first", "last"):
        assert value == expected, where
    else:
        assert abs(value - expected) <= 1e-9 * abs(expected) + oracle.tolerance(op, in_window), where


def check_against_oracle(fs, result, rows, ref, entity, known_at=False, columns=None):
    for feature in fs.plan.features:
        name = feature.name if columns is None else columns.get(feature.name, feature.name)
        if name not in result.columns:
            continue
        w = feature.window
        for i, (key, t) in enumerate(zip(rows[entity], rows["ts_ms"], strict=True)):
            events = [e for e in ref if e["arrival"] <= t] if known_at else ref
            in_window = oracle.window_events(events, key, t, w.length, w.period)
            expected = oracle.aggregate(feature.op, in_window)
            where = f"{name} at {entity}={key} t={t}: expected {expected}, got {result[name].iloc[i]}"
            assert_feature(result[name].iloc[i], expected, feature.op, in_window, where)


def random_events(rng, n, keys, entity="user", span=90_000, partitions=3):
    events = []
    offsets = dict.fromkeys(range(partitions), 0)
    for _ in range(n):
        p = int(rng.integers(partitions))
        ts = int(rng.choice([rng.integers(0, span), rng.integers(0, span // 1000) * 1000]))
        delay = int(rng.choice([0, 5, rng.integers(0, 30_000)]))
        amount = None if rng.random() < 0.1 else float(rng.integers(-500, 500)) / 4
        events.append(
            {
                entity: str(rng.choice(keys)),
                "ts": ts,
                "amount": amount,
                "partition": p,
                "offset": offsets[p],
                "arrival": ts + delay,
            }
        )
        offsets[p] += 1
    return events


@pytest.fixture(scope="module")
def pay_store(tmp_path_factory):
    rng = np.random.default_rng(3)
    events = random_events(rng, 400, ["a", "b", "c", "d"])
    # Ties: equal timestamps whose arrival order differs from offset order, and across partitions.
    events += [
        {"user": "a", "ts": 50_000, "amount": 1.0, "partition": 0, "offset": 1000, "arrival": 50_010},
        {"user": "a", "ts": 50_000, "amount": 2.0, "partition": 1, "offset": 1000, "arrival": 50_005},
        {"user": "a", "ts": 50_000, "amount": 3.0, "partition": 0, "offset": 1001, "arrival": 50_005},
    ]
    store = tmp_path_factory.mktemp("store")
    write_events(store, PAY, events)
    return store, events


def query_rows(rng, n, keys, entity="user", span=160_000):
    ts = rng.integers(0, span, size=n)
    ts[: n // 4] = (ts[: n // 4] // 1000) * 1000  # on tile boundaries
    return pd.DataFrame({entity: rng.choice(keys, size=n), "ts": ts})


@pytest.mark.parametrize("partitions", [1, 3, None])
def test_every_op_matches_the_oracle(pay_store, partitions):
    store, events = pay_store
    rows = query_rows(np.random.default_rng(partitions or 0), 150, ["a", "b", "c", "d", "zz"])
    rows.loc[0] = ["a", 50_001]  # just after the tie
    rows["ts_ms"] = rows["ts"]
    vector = FeatureVector("all", ["pay.*"])
    result = get_offline_features(vector, rows, store, registry=[PAY], partitions=partitions)
    check_against_oracle(PAY, result, rows, oracle_events(events, "user"), "user")


def test_an_event_at_exactly_t_is_excluded(tmp_path):
    events = [
        {"user": "a", "ts": 10_000, "amount": 5.0, "partition": 0, "offset": 0, "arrival": 10_000},
        {"user": "a", "ts": 12_345, "amount": 7.0, "partition": 0, "offset": 1, "arrival": 12_345},
    ]
    write_events(tmp_path, PAY, events)
    rows = pd.DataFrame({"user": ["a", "a", "a"], "ts": [12_345, 12_346, 10_000]})
    vector = FeatureVector("v", ["pay.amount_count_60s", "pay.amount_last_60s"])
    result = get_offline_features(vector, rows, tmp_path, registry=[PAY])
    assert result["amount_count_60s"].tolist() == [1, 2, 0]
    assert result["amount_last_60s"].tolist()[:2] == [5.0, 7.0]
    assert math.isnan(result["amount_last_60s"].iloc[2])


def test_rows_keep_their_order_index_and_columns(pay_store):
    store, events = pay_store
    rng = np.random.default_rng(11)
    rows = query_rows(rng, 60, ["d", "a", "c", "b"])
    rows["label"] = np.arange(60) % 2
    rows.index = pd.Index(rng.permutation(1000)[:60], name="row_id")
    rows["ts_ms"] = rows["ts"]
    vector = FeatureVector("v", ["pay.amount_max_10s", "pay.amount_count_4s"])
    result = get_offline_features(vector, rows, store, registry=[PAY], partitions=4)
    assert list(result.columns) == ["user", "ts", "label", "ts_ms", "amount_max_10s", "amount_count_4s"]
    assert result.index.equals(rows.index)
    pd.testing.assert_frame_equal(result[rows.columns], rows)
    check_against_oracle(PAY, result, rows, oracle_events(events, "user"), "user")


def test_timestamp_formats_agree(pay_store):
    store, _ = pay_store
    ms = np.array([1_000, 45_678, 50_000, 89_999])
    vector = FeatureVector("v", ["pay.amount_sum_60s", "pay.amount_last_10s"])
    frames = [
        pd.DataFrame({"user": ["a", "b", "a", "c"], "ts": ms}),
        pd.DataFrame({"user": ["a", "b", "a", "c"], "ts": pd.to_datetime(ms, unit="ms", utc=True)}),
        pd.DataFrame({"user": ["a", "b", "a", "c"], "ts": pd.to_datetime(ms, unit="ms").astype(str)}),
    ]
    results = [
        get_offline_features(vector, f, store, registry=[PAY])[["amount_sum_60s", "amount_last_10s"]]
        for f in frames
    ]
    pd.testing.assert_frame_equal(results[0], results[1])
    pd.testing.assert_frame_equal(results[0], results[2])


def test_two_feature_sets_with_different_entities(tmp_path):
    rng = np.random.default_rng(5)
    pay = random_events(rng, 200, ["a", "b", "c"], "user")
    shop = random_events(rng, 200, ["s1", "s2"], "shop", partitions=2)
    write_events(tmp_path, PAY, pay)
    write_events(tmp_path, SHOP, shop)
    rows = query_rows(rng, 80, ["a", "b", "c", "x"])
    rows["shop"] = rng.choice(["s1", "s2", "s3"], size=80)
    rows["ts_ms"] = rows["ts"]
    result = get_offline_features("both", rows, tmp_path, registry=REGISTRY, partitions=2)
    assert list(result.columns)[-2:] == ["amount_sum_10s", "amount_count_10s"]
    pay_only = {f.name: "-" for f in PAY.plan.features} | {"amount_sum_10s": "amount_sum_10s"}
    shop_only = {f.name: "-" for f in SHOP.plan.features} | {"amount_count_10s": "amount_count_10s"}
    check_against_oracle(PAY, result, rows, oracle_events(pay, "user"), "user", columns=pay_only)
    check_against_oracle(SHOP, result, rows, oracle_events(shop, "shop"), "shop", columns=shop_only)


def test_feature_names_shared_by_two_sets_are_prefixed(tmp_path):
    write_events(
        tmp_path, PAY, [{"user": "a", "ts": 1, "amount": 2.0, "partition": 0, "offset": 0, "arrival": 1}]
    )
    write_events(
        tmp_path, SHOP, [{"shop": "s", "ts": 1, "amount": 3.0, "partition": 0, "offset": 0, "arrival": 1}]
    )
    rows = pd.DataFrame({"user": ["a"], "shop": ["s"], "ts": [5]})
    vector = FeatureVector("v", ["pay.amount_max_10s", "shop.amount_max_10s", "shop.amount_count_10s"])
    result = get_offline_features(vector, rows, tmp_path, registry=[PAY, SHOP])
    assert list(result.columns) == [
        "user",
        "shop",
        "ts",
        "pay.amount_max_10s",
        "shop.amount_max_10s",
        "amount_count_10s",
    ]
    assert result.iloc[0, 3:].tolist() == [2.0, 3.0, 1]


def test_on_read_features_use_the_request_and_aggregates(pay_store):
    store, events = pay_store
    rows = pd.DataFrame(
        {"user": ["a", "b", "zz"], "ts": [60_000, 70_000, 70_000], "amount": [10.0, 4.0, 1.0]}
    )
    result = get_offline_features(FeatureVector("v", ["pay.amount_ratio"]), rows, store, registry=[PAY])
    assert list(result.columns) == ["user", "ts", "amount", "amount_ratio"]
    ref = oracle_events(events, "user")
    for i, (key, t, amount) in enumerate(rows.itertuples(index=False)):
        avg = oracle.aggregate("avg", oracle.window_events(ref, key, t, 10_000, 2_000))
        expected = None if avg is None else amount / avg
        assert_feature(result["amount_ratio"].iloc[i], expected, "avg", [], f"row {i}")


def test_unknown_feature_and_missing_columns_are_clear_errors(pay_store):
    store, _ = pay_store
    rows = pd.DataFrame({"user": ["a"], "ts": [5]})
    with pytest.raises(KeyError, match="amount_median_10s"):
        get_offline_features(FeatureVector("v", ["pay.amount_median_10s"]), rows, store, registry=[PAY])
    with pytest.raises(KeyError, match="nope"):
        get_offline_features(FeatureVector("v", ["nope.x"]), rows, store, registry=[PAY])
    with pytest.raises(KeyError, match="shop"):
        get_offline_features("both", rows, store, registry=REGISTRY)
    with pytest.raises(KeyError, match="event_time"):
        get_offline_features("both", rows, store, registry=REGISTRY, timestamp_column="event_time")
    with pytest.raises(KeyError, match="unknown feature vector"):
        get_offline_features("fraud", rows, store, registry=REGISTRY)
    with pytest.raises(ValueError, match="registry"):
        get_offline_features("both", rows, store)


def test_as_known_at_uses_only_arrived_events(tmp_path):
    rng = np.random.default_rng(9)
    events = random_events(rng, 300, ["a", "b", "c"])
    for e in events[::7]:  # some events arrive long after they happened
        e["arrival"] = e["ts"] + int(rng.integers(1_000, 60_000))
    write_events(tmp_path, PAY, events)
    rows = query_rows(rng, 150, ["a", "b", "c"], span=120_000)
    rows["ts_ms"] = rows["ts"]
    vector = FeatureVector("all", ["pay.*"])
    ref = oracle_events(events, "user")
    known = get_offline_features(vector, rows, tmp_path, registry=[PAY], as_known_at=True, partitions=2)
    check_against_oracle(PAY, known, rows, ref, "user", known_at=True)
    plain = get_offline_features(vector, rows, tmp_path, registry=[PAY])
    assert not known["amount_count_60s"].equals(plain["amount_count_60s"])  # the late events mattered


def test_empty_store_and_empty_rows(tmp_path):
    vector = FeatureVector("v", ["pay.amount_count_10s", "pay.amount_max_10s", "pay.amount_last_10s"])
    rows = pd.DataFrame({"user": ["a", "b"], "ts": [1_000, 2_000]})
    result = get_offline_features(vector, rows, tmp_path, registry=[PAY])
    assert result["amount_count_10s"].tolist() == [0, 0]
    assert result["amount_max_10s"].isna().all() and result["amount_last_10s"].isna().all()
    empty = get_offline_features(vector, rows.iloc[:0], tmp_path, registry=[PAY])
    assert len(empty) == 0 and "amount_max_10s" in empty.columns


def test_out_writes_the_training_set(pay_store, tmp_path):
    store, _ = pay_store
    rows = pd.DataFrame({"user": ["a", "b"], "ts": [50_001, 70_000]})
    target = tmp_path / "train.parquet"
    result = get_offline_features(
        FeatureVector("v", ["pay.amount_sum_60s"]), rows, store, registry=[PAY], out=target
    )
    pd.testing.assert_frame_equal(pd.read_parquet(target), result)


def test_read_events_filters_by_time_arrival_and_partition(pay_store):
    store, events = pay_store
    everything = read_events(PAY, store)
    assert len(everything) == len(events)
    assert everything["ts"].dtype == np.int64 and everything["_arrival"].dtype == np.int64
    window = read_events(PAY, store, start_ms=10_000, end_ms=20_000, arrival_until_ms=15_000)
    expected = {
        (e["partition"], e["offset"]) for e in events if 10_000 <= e["ts"] < 20_000 and e["arrival"] <= 15_000
    }
    assert set(zip(window["_partition"], window["_offset"], strict=True)) == expected
    parts = [read_events(PAY, store, partitions=3, only=p, columns=["user"]) for p in range(3)]
    assert sum(len(p) for p in parts) == len(events)
    users = [set(p["user"]) for p in parts]
    assert all(not (users[i] & users[j]) for i in range(3) for j in range(i + 1, 3))
    assert list(parts[0].columns) == ["user", "_partition", "_offset", "_arrival"]


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.integers(0, 70_000), st.integers(0, 70).map(lambda s: s * 1000)),
            st.one_of(st.none(), st.integers(-(10**5), 10**5).map(lambda i: i / 8)),
            st.integers(0, 2),
            st.integers(0, 20_000),
        ),
        max_size=50,
    ),
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 140_000)), min_size=1, max_size=15),
    st.booleans(),
)
def test_random_datasets_match_the_oracle(tmp_path_factory, evs, queries, known_at):
    store = tmp_path_factory.mktemp("h")
    offsets = [0, 0, 0]
    events = []
    for user, ts, amount, p, delay in evs:
        events.append(
            {
                "user": user,
                "ts": ts,
                "amount": amount,
                "partition": p,
                "offset": offsets[p],
                "arrival": ts + delay,
            }
        )
        offsets[p] += 1
    if events:
        write_events(store, PAY, events)
    rows = pd.DataFrame({"user": [q[0] for q in queries], "ts": [q[1] for q in queries]})
    rows["ts_ms"] = rows["ts"]
    result = get_offline_features(
        FeatureVector("all", ["pay.*"]), rows, store, registry=[PAY], partitions=2, as_known_at=known_at
    )
    check_against_oracle(PAY, result, rows, oracle_events(events, "user"), "user", known_at=known_at)


def test_worker_processes_give_the_same_result(pay_store, caplog):
    store, events = pay_store
    rows = query_rows(np.random.default_rng(21), 200, ["a", "b", "c", "d"])
    rows["ts_ms"] = rows["ts"]
    vector = FeatureVector("all", ["pay.*"])
    alone = get_offline_features(vector, rows, store, registry=[PAY], partitions=4)
    with caplog.at_level("WARNING"):
        parallel = get_offline_features(vector, rows, store, registry=[PAY], partitions=4, workers=2)
    assert not caplog.records, "the partitions should have run in worker processes, not fallen back"
    pd.testing.assert_frame_equal(alone, parallel)
    check_against_oracle(PAY, parallel, rows, oracle_events(events, "user"), "user")


def test_a_set_that_cannot_be_pickled_is_computed_in_process_with_a_warning(pay_store, caplog):
    store, _ = pay_store
    rows = query_rows(np.random.default_rng(22), 50, ["a", "b"])
    unpicklable = pay_set(lambda f: f["amount"] / f["amount_avg_10s"])
    vector = FeatureVector("all", ["pay.*"])
    alone = get_offline_features(vector, rows, store, registry=[unpicklable], partitions=4)
    with caplog.at_level("WARNING"):
        parallel = get_offline_features(vector, rows, store, registry=[unpicklable], partitions=4, workers=2)
    assert any("cannot be pickled" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(alone, parallel)
