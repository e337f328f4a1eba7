"""The worker's batch processing without Kafka: values against the oracle, offset dedupe, late, dead letters."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from aggregations import Aggregation, Entity, FeatureSet
from aggregations.loading import load_registry
from stream.envelope import open_envelope
from stream.processor import (
    BatchProcessor,
    SourceRecord,
    StateLoadError,
    applied_offsets,
    duplicate_mask,
    group_entities,
    updated_offsets,
    with_offset,
)
from stream.reading import FeatureReader
from tests import oracle

TX = load_registry("examples/transactions/features.py").feature_set("transactions")
NOW = 1_800_000_000_000
HOUR = 3_600_000


class Store:
    """The table stand-in: (partition, key) -> blob."""

    def __init__(self):
        self.blobs: dict[tuple[int, bytes], bytes] = {}
        self.loads = 0

    def load(self, partition, keys):
        self.loads += 1
        return [self.blobs.get((partition, k)) for k in keys]

    def apply(self, result):
        for w in result.writes:
            self.blobs[(w.partition, w.key)] = w.value


def partition_of(user: str, partitions: int = 3) -> int:
    return sum(user.encode()) % partitions


def make_records(events, partitions=3):
    """events: dicts with user_id, ts, amount -> records with per-partition offsets in list order."""
    next_offset: dict[int, int] = {}
    out = []
    for e in events:
        p = partition_of(e["user_id"], partitions)
        off = next_offset.get(p, 0)
        next_offset[p] = off + 1
        out.append(SourceRecord(p, off, e["user_id"].encode(), json.dumps(e).encode()))
    return out


def random_events(n, users=7, seed=1, span=HOUR):
    rng = np.random.default_rng(seed)
    return [
        {
            "user_id": f"u{int(rng.integers(users))}",
            "ts": int(NOW - rng.integers(1, span)),
            "amount": None if rng.random() < 0.05 else float(np.round(rng.lognormal(3, 1), 2)),
        }
        for _ in range(n)
    ]


def features_now(store: Store, users, at=NOW, fs=TX):
    reader = FeatureReader(fs)
    blobs = [store.blobs.get((partition_of(u), u.encode())) for u in users]
    return dict(zip(users, reader.read(blobs, at), strict=True))


def assert_matches_oracle(got, records, users, at=NOW, fs=TX):
    rows = []
    for r in records:
        e = json.loads(r.value)
        # seq: arrival order within the entity's partition = offset
        rows.append({"key": e["user_id"], "ts": e["ts"], "seq": r.offset, "value": e["amount"]})
    for user in users:
        for f in fs.plan.features:
            expected = oracle.feature_at(rows, user, at, f.op, f.window.length, f.window.period)
            value = got[user][f.name]
            if expected is None:
                assert value is None, (user, f.name, value)
            elif f.op == "count":
                assert value == expected, (user, f.name)
            else:
                assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12), (user, f.name, value, expected)


def test_batches_fold_to_the_oracle_values():
    events = random_events(400)
    records = make_records(events)
    store, proc = Store(), BatchProcessor(TX, "transactions")
    for start in range(0, len(records), 37):
        result = proc.process(records[start : start + 37], NOW, store.load)
        store.apply(result)
        assert not result.dead and not result.late and result.duplicates == 0
    users = [*sorted({e["user_id"] for e in events}), "nobody"]
    assert_matches_oracle(features_now(store, users), records, users)


def test_unknown_entity_reads_as_empty_windows():
    (values,) = FeatureReader(TX).read([None], NOW)
    assert values["amount_count_1h"] == 0 and values["amount_sum_90d"] == 0.0
    assert values["amount_avg_1h"] is None and values["amount_last_1d"] is None
    assert values["amount_vs_avg_90d"] is None


def test_replay_after_crash_counts_nothing_twice():
    records = make_records(random_events(300, seed=2))
    store, proc = Store(), BatchProcessor(TX, "transactions")
    for start in range(0, 300, 50):
        store.apply(proc.process(records[start : start + 50], NOW, store.load))
    before = dict(store.blobs)
    # Kafka redelivers from an older committed offset: everything again, in other batch sizes.
    duplicates, rewritten = 0, {}
    for start in range(0, 300, 70):
        result = proc.process(records[start : start + 70], NOW, store.load)
        duplicates += result.duplicates
        assert result.applied == 0
        rewritten.update({(w.partition, w.key): w.value for w in result.writes})
        store.apply(result)
    assert duplicates == 300
    assert store.blobs == before
    # The replay re-sends every entity's unchanged state (heals a changelog that missed the last writes).
    assert rewritten == before


def test_partial_replay_applies_only_the_new_tail():
    events = random_events(200, seed=3)
    records = make_records(events)
    store, proc = Store(), BatchProcessor(TX, "transactions")
    store.apply(proc.process(records[:120], NOW, store.load))
    # Redelivery of 80..199: 80..119 were applied already.
    result = proc.process(records[80:], NOW, store.load)
    store.apply(result)
    assert result.duplicates == 40 and result.applied == 80
    users = sorted({e["user_id"] for e in events})
    assert_matches_oracle(features_now(store, users), records, users)


def test_malformed_events_are_dead_lettered_and_the_rest_applied():
    good = {"user_id": "u1", "ts": NOW - 1000, "amount": 5.0}
    payloads = [
        b"not json",
        json.dumps({"ts": NOW - 10, "amount": 1.0}).encode(),
        json.dumps({"user_id": "u1", "ts": NOW - 10, "amount": "abc"}).encode(),
        None,
        json.dumps(good).encode(),
        json.dumps({"user_id": "u1", "ts": NOW + 5 * HOUR, "amount": 1.0}).encode(),
    ]
    records = [SourceRecord(partition_of("u1"), i, b"u1", p) for i, p in enumerate(payloads)]
    store, proc = Store(), BatchProcessor(TX, "transactions")
    result = proc.process(records, NOW, store.load)
    store.apply(result)
    assert result.consumed == 6 and result.applied == 1 and result.rejected == 5
    envelopes = [open_envelope(e.value) for e in result.dead]
    assert [e["offset"] for e in envelopes] == [0, 1, 2, 3, 5]
    assert all(e["topic"] == "transactions" and e["partition"] == partition_of("u1") for e in envelopes)
    assert envelopes[0]["payload"] == b"not json" and envelopes[3]["payload"] is None
    assert "not valid JSON" in envelopes[0]["reason"]
    assert "missing entity key 'user_id'" in envelopes[1]["reason"]
    assert "amount must be a number" in envelopes[2]["reason"]
    assert "future" in envelopes[4]["reason"]
    assert all(e.key == b"u1" for e in result.dead)
    assert features_now(store, ["u1"])["u1"]["amount_count_1h"] == 1


def test_late_events_are_published_not_applied_and_not_replayed():
    proc, store = BatchProcessor(TX, "transactions"), Store()
    cutoff_age = 91 * 86_400_000  # older than the 90d window can reach
    events = [
        {"user_id": "u1", "ts": NOW - cutoff_age, "amount": 1.0},
        {"user_id": "u1", "ts": NOW - 1000, "amount": 2.0},
    ]
    records = make_records(events)
    result = proc.process(records, NOW, store.load)
    store.apply(result)
    assert result.applied == 1 and len(result.late) == 1
    late = open_envelope(result.late[0].value)
    assert late["reason"].startswith("late:") and json.loads(late["payload"])["amount"] == 1.0
    assert features_now(store, ["u1"])["u1"]["amount_count_90d"] == 1
    again = proc.process(records, NOW, store.load)
    assert again.duplicates == 2 and not again.late


def test_only_late_events_still_advance_the_applied_offset():
    proc, store = BatchProcessor(TX, "transactions"), Store()
    records = make_records([{"user_id": "u1", "ts": NOW - 100 * 86_400_000, "amount": 1.0}])
    result = proc.process(records, NOW, store.load)
    store.apply(result)
    assert len(result.late) == 1 and len(result.writes) == 1
    assert proc.process(records, NOW, store.load).duplicates == 1


def test_offsets_are_tracked_per_source_partition():
    groups = group_entities(np.array(["a", "b", "a", "c"], dtype=object), np.array([0, 1, 0, 1]))
    assert groups.codes.tolist() == [0, 1, 0, 2] and groups.partitions.tolist() == [0, 1, 1]
    assert groups.keys == [b"a", b"b", b"c"]
    slots = [str(p) for p in groups.partitions.tolist()]
    applied = applied_offsets([{"offsets": {"0": 10}}, {"offsets": {"0": 99}}, {}], slots)
    assert applied.tolist() == [10, -1, -1]  # b's offsets are for partition 0, not its partition 1
    dup = duplicate_mask(np.array([10, 5, 11, 0]), groups.codes, applied)
    assert dup.tolist() == [True, False, False, False]
    assert updated_offsets(applied, groups.codes, np.array([10, 5, 11, 0])).tolist() == [11, 5, 0]
    assert with_offset({"fp": "x", "offsets": {"0": 1}, "other": 1}, "3", 7) == {
        "offsets": {"0": 1, "3": 7},
        "other": 1,
    }


def test_two_copies_of_one_forwarded_event_in_one_batch_count_once():
    # A source partition replayed after a rebalance forwards its events again: the .by-entity topic then
    # holds two copies of each (same origin), and one fetch can hold both. Only the first may count.
    from stream.forwarding import forwarded_groups, origin_header
    from stream.partitioning import entity_partition

    e = {"user_id": "u1", "ts": NOW - 1000, "amount": 5.0}
    home = entity_partition(b"u1", 3)
    origin = ((home + 1) % 3, 41)

    class Message:
        def __init__(self, offset):
            self.partition, self.offset, self.key, self.value = home, offset, b"u1", json.dumps(e).encode()
            self.headers = [origin_header(*origin)]

    proc, store = BatchProcessor(TX, "tx", partitions=3), Store()
    (slot, group), = forwarded_groups([Message(7), Message(8)])
    result = proc.process(group, NOW, store.load, slot=slot)
    store.apply(result)
    assert (result.applied, result.duplicates) == (1, 1)
    assert features_now(store, ["u1"])["u1"]["amount_count_1h"] == 1


def test_in_batch_duplicates_follow_arrival_order_per_entity():
    codes = np.array([0, 0, 1, 0, 1, 0])
    offsets = np.array([5, 7, 3, 6, 3, 8])  # entity 0: 5, 7, then 6 (<= 7: a copy), then 8
    assert duplicate_mask(offsets, codes, np.array([4, -1])).tolist() == [False, False, False, True, True, False]
    assert duplicate_mask(offsets, codes, np.array([7, 3])).tolist() == [True, True, True, True, True, False]


def test_entity_spread_over_partitions_gets_state_per_partition():
    groups = group_entities(np.array(["a", "a", "b"], dtype=object), np.array([0, 2, 0]))
    assert sorted(zip(groups.partitions.tolist(), groups.keys, strict=True)) == [(0, b"a"), (0, b"b"), (2, b"a")]
    assert len(set(groups.codes.tolist())) == 3


def test_without_a_partition_count_events_are_applied_where_they_are():
    proc, store = BatchProcessor(TX, "transactions"), Store()
    payload = json.dumps({"user_id": "u1", "ts": NOW - 1, "amount": 1.0}).encode()
    result = proc.process([SourceRecord(0, 0, b"other", payload), SourceRecord(0, 1, None, payload)], NOW, store.load)
    assert result.applied == 2 and not result.forward and result.key_mismatches == 0


def _flaky_transform(frame: pd.DataFrame) -> pd.DataFrame:
    if (frame["amount"] == 13.0).any():
        raise ValueError("unlucky amount")
    return frame.assign(double=frame["amount"] * 2)


FLAKY = FeatureSet(
    name="flaky",
    entities=[Entity("user_id")],
    timestamp_key="ts",
    source="flaky",
    schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
    aggregations=[Aggregation("double", ["count", "sum"], windows=["1h"])],
    transforms=[_flaky_transform],
)


def test_a_failing_transform_dead_letters_only_the_event_that_breaks_it():
    events = [{"user_id": "u1", "ts": NOW - 1000 * i, "amount": float(i)} for i in range(1, 20)]
    records = make_records(events)
    store, proc = Store(), BatchProcessor(FLAKY, "flaky")
    result = proc.process(records, NOW, store.load)
    store.apply(result)
    assert result.rejected == 1 and result.applied == 18
    assert "processing failed: ValueError: unlucky amount" in open_envelope(result.dead[0].value)["reason"]
    (values,) = FeatureReader(FLAKY).read([store.blobs[(partition_of("u1"), b"u1")]], NOW)
    assert values["double_count_1h"] == 18
    assert values["double_sum_1h"] == 2 * (sum(range(1, 20)) - 13)


def test_a_failing_store_is_not_bad_input():
    proc = BatchProcessor(TX, "transactions")
    records = make_records([{"user_id": "u1", "ts": NOW - 1, "amount": 1.0}])

    def broken(partition, keys):
        raise OSError("disk gone")

    with pytest.raises(StateLoadError, match="disk gone"):
        proc.process(records, NOW, broken)


def test_state_of_another_definition_is_ignored_not_fatal():
    other = FeatureSet(
        name="transactions",
        entities=[Entity("user_id")],
        timestamp_key="ts",
        source="transactions",
        schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
        aggregations=[Aggregation("amount", ["count"], windows=["1h"])],
    )
    records = make_records([{"user_id": "u1", "ts": NOW - 1, "amount": 1.0}])
    store = Store()
    store.apply(BatchProcessor(other, "transactions").process(records, NOW, store.load))
    payload = json.dumps({"user_id": "u1", "ts": NOW - 2, "amount": 2.0}).encode()
    newer = [SourceRecord(partition_of("u1"), 1, b"u1", payload)]
    result = BatchProcessor(TX, "transactions").process(newer, NOW, store.load)
    store.apply(result)
    assert result.applied == 1 and not result.dead
    assert features_now(store, ["u1"])["u1"]["amount_sum_1h"] == 2.0


def test_events_outside_their_entitys_partition_are_forwarded_then_applied_once_in_their_slot():
    from stream.forwarding import forwarded_groups, origin_header
    from stream.partitioning import entity_partition
    from stream.processor import forwarded_slot

    events = random_events(60, users=5, seed=9)
    home = {e["user_id"]: entity_partition(e["user_id"].encode(), 3) for e in events}
    # Every event lands one partition off its entity's, with no key: all must be forwarded.
    records = [
        SourceRecord((home[e["user_id"]] + 1) % 3, i, None, json.dumps(e).encode()) for i, e in enumerate(events)
    ]
    proc, store = BatchProcessor(TX, "tx", partitions=3), Store()
    result = proc.process(records, NOW, store.load)
    assert result.applied == 0 and not result.writes
    assert [e.key for e in result.forward] == [e["user_id"].encode() for e in events]
    assert [e.value for e in result.forward] == [r.value for r in records]
    assert result.forward_origins == [(r.partition, r.offset) for r in records]
    assert result.key_mismatches == len(events)

    # The .by-entity topic hands them back in their entity's partition, grouped by origin slot.
    class Message:
        def __init__(self, partition, offset, key, value, headers):
            self.partition, self.offset, self.key, self.value, self.headers = partition, offset, key, value, headers

    forwarded = [
        Message(home[f.key.decode()], 1000 + i, f.key, f.value, [origin_header(*origin)])
        for i, (f, origin) in enumerate(zip(result.forward, result.forward_origins, strict=True))
    ]
    groups = forwarded_groups(forwarded)
    assert {slot for slot, _ in groups} == {forwarded_slot(p) for p in {r.partition for r in records}}
    for slot, group in groups:
        store.apply(proc.process(group, NOW, store.load, slot=slot))
    # A forward repeated after a crash (new offsets in .by-entity, same origins) is skipped.
    again = [Message(m.partition, m.offset + 500, m.key, m.value, m.headers) for m in forwarded]
    repeats = [proc.process(group, NOW, store.load, slot=slot) for slot, group in forwarded_groups(again)]
    assert all(r.applied == 0 for r in repeats)
    assert sum(r.duplicates for r in repeats) == len(events)
    reader = FeatureReader(TX)
    rows = [{"key": e["user_id"], "ts": e["ts"], "seq": i, "value": e["amount"]} for i, e in enumerate(events)]
    for user in home:
        (got,) = reader.read([store.blobs.get((home[user], user.encode()))], NOW, None)
        want = oracle.feature_at(rows, user, NOW, "count", 3_600_000, 300_000)
        assert got["amount_count_1h"] == want


def test_a_late_forwarded_event_points_at_its_source_record_not_the_by_entity_topic():
    from stream.forwarding import forwarded_groups, origin_header
    from stream.partitioning import entity_partition

    home = entity_partition(b"u1", 3)
    origin = ((home + 1) % 3, 77)
    old = {"user_id": "u1", "ts": NOW - 200 * 86_400_000, "amount": 1.0}

    class Message:
        partition, offset, key = home, 5, b"u1"
        value = json.dumps(old).encode()
        headers = [origin_header(*origin)]

    (slot, group), = forwarded_groups([Message()])
    result = BatchProcessor(TX, "tx", partitions=3).process(group, NOW, lambda p, keys: [None] * len(keys), slot=slot)
    (late,) = result.late
    body = open_envelope(late.value)
    assert (body["topic"], body["partition"], body["offset"]) == ("tx", origin[0], origin[1])
