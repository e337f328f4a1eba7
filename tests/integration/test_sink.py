"""The Parquet sink against a real broker: exactly the valid events, once each, across restarts and crashes.

Known events (plus a few malformed ones) are produced to a fresh topic; the sink runs with ``once``
(in process, and once through the ``featurestream`` CLI in a subprocess); the dataset must hold each
valid event exactly once, identified by ``(_partition, _offset)``, whatever the restarts. A training
set read from that dataset must equal the brute-force oracle over the produced events.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewPartitions

from aggregations import FeatureVector
from aggregations.loading import load_registry
from sinks import ParquetSink, get_offline_features, read_events
from sinks.layout import dataset_dir, list_parts
from tests import oracle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(str(REPO / "examples" / "transactions" / "features.py"))
FS = REGISTRY.feature_set("transactions")
MALFORMED = [
    b"not json at all",
    json.dumps({"ts": 1, "amount": 1.0}).encode(),  # no user
    json.dumps({"user_id": "u1", "ts": 1, "amount": "12.5"}).encode(),  # amount is a string
    json.dumps({"user_id": "u1", "amount": 3.0}).encode(),  # no timestamp
    json.dumps({"user_id": "u1", "ts": 10**15, "amount": 3.0}).encode(),  # far future
    json.dumps([1, 2, 3]).encode(),
]


def produce(bootstrap: str, topic: str, n: int = 600, seed: int = 1) -> list[dict]:
    """Send n valid events (and MALFORMED interleaved); return the valid ones with partition/offset/arrival."""
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = []
    for i in range(n):
        user = f"u{int(rng.integers(0, 25))}"
        ts = now - int(rng.integers(0, 6 * 3_600_000))
        if i % 50 == 0:
            ts = (ts // 1000) * 1000  # some on tile boundaries, some ties
        amount = None if i % 37 == 0 else round(float(rng.lognormal(3, 1)), 2)
        event = {
            "user_id": user,
            "ts": ts if i % 3 else pd.Timestamp(ts, unit="ms", tz="UTC").isoformat(),
            "amount": amount,
        }
        future = producer.send(topic, key=user.encode(), value=json.dumps(event).encode())
        sent.append((future, {"user_id": user, "ts": ts, "amount": amount}))
        if i % 100 == 0:
            bad = MALFORMED[(i // 100) % len(MALFORMED)]
            producer.send(topic, key=user.encode(), value=bad)
    producer.flush(timeout=60)
    producer.close()
    events = []
    for future, event in sent:
        meta = future.get(timeout=30)
        events.append(
            {**event, "partition": meta.partition, "offset": meta.offset, "arrival": meta.timestamp}
        )
    return events


def stored(store) -> pd.DataFrame:
    return read_events(FS, store).sort_values(["_partition", "_offset"]).reset_index(drop=True)


def assert_exactly(store, events):
    data = stored(store)
    got = list(zip(data["_partition"], data["_offset"], strict=True))
    assert len(got) == len(set(got)), "duplicated events"
    expected = {(e["partition"], e["offset"]): e for e in events}
    assert set(got) == set(expected)
    for row in data.to_dict("records"):
        e = expected[(row["_partition"], row["_offset"])]
        assert (row["user_id"], row["ts"], row["_arrival"]) == (e["user_id"], e["ts"], e["arrival"])
        assert (math.isnan(row["amount"]) and e["amount"] is None) or row["amount"] == e["amount"]


def settled_once(stats):
    """SinkStats counts every record it settled once, in exactly one outcome (however often it was read)."""
    assert stats.consumed == stats.written + stats.invalid + stats.duplicates, stats
    return stats


def sink(bootstrap, topic, store, group, **kwargs) -> ParquetSink:
    return ParquetSink(
        FS, store, bootstrap, topic=topic, group=group, flush_events=100, flush_seconds=1, **kwargs
    )


def test_sink_writes_each_valid_event_once_across_restarts(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(partitions=3)
    events = produce(kafka_bootstrap, topic)
    group = f"sink-{uuid.uuid4().hex[:8]}"

    first = settled_once(sink(kafka_bootstrap, topic, tmp_path, group).run(once=True))
    assert first.written == len(events)
    assert first.invalid == 6
    assert first.consumed == len(events) + 6
    assert_exactly(tmp_path, events)
    files = sorted(p.path.name for p in list_parts(dataset_dir(tmp_path, FS.name)))
    assert not list(dataset_dir(tmp_path, FS.name).rglob(".tmp-*"))

    again = sink(kafka_bootstrap, topic, tmp_path, group).run(once=True)
    assert (again.consumed, again.written) == (0, 0)
    # A new group has no committed offsets: it re-reads everything and finds it all written. Each record
    # counts once even if a rebalance made the sink read part of the topic twice.
    fresh = settled_once(sink(kafka_bootstrap, topic, tmp_path, f"{group}-new").run(once=True))
    assert (fresh.written, fresh.duplicates, fresh.invalid) == (0, len(events), 6)
    assert_exactly(tmp_path, events)
    assert sorted(p.path.name for p in list_parts(dataset_dir(tmp_path, FS.name))) == files

    more = produce(kafka_bootstrap, topic, n=120, seed=2)
    resumed = settled_once(sink(kafka_bootstrap, topic, tmp_path, group).run(once=True))
    assert resumed.written == len(more)
    assert_exactly(tmp_path, events + more)


def wait_stored(store, events, running: threading.Thread, bound_s: float = 120.0) -> None:
    """Until the dataset holds exactly ``events`` (a working sink takes seconds; the bound only ends a failure)."""
    want = {(e["partition"], e["offset"]) for e in events}
    deadline = time.monotonic() + bound_s
    got: set = set()
    while time.monotonic() < deadline and running.is_alive():
        if list_parts(dataset_dir(store, FS.name)):
            data = stored(store)
            got = set(zip(data["_partition"], data["_offset"], strict=True))
        if got >= want:
            return
        time.sleep(0.5)
    raise AssertionError(f"the sink stored {len(got & want)} of {len(want)} events (alive: {running.is_alive()})")


def test_partitions_added_under_a_running_sink_are_consumed(kafka_bootstrap, new_topic, tmp_path):
    """Adding partitions makes the sink's group rebalance mid-run. A poll that gives up before that rebalance
    ends must not leave the sink stuck without partitions (the kafka-python bug fixed in sinks/kafka_fixes.py):
    with 1 ms polls every rebalance outlives its poll."""
    topic = new_topic(partitions=2)
    events = produce(kafka_bootstrap, topic, n=200, seed=7)
    running = sink(kafka_bootstrap, topic, tmp_path, f"sink-{uuid.uuid4().hex[:8]}",
                   consumer_config={"metadata_max_age_ms": 500})  # fmt: skip
    running.poll_timeout_ms = 1
    thread = threading.Thread(target=running.run, name="sink", daemon=True)
    thread.start()
    try:
        wait_stored(tmp_path, events, thread)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
        try:
            admin.create_partitions({topic: NewPartitions(total_count=4)})
        finally:
            admin.close()
        more = produce(kafka_bootstrap, topic, n=200, seed=8)
        assert {e["partition"] for e in more} >= {2, 3}
        wait_stored(tmp_path, events + more, thread)
    finally:
        running.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert_exactly(tmp_path, events + more)
    assert settled_once(running.stats).written == len(events) + len(more)


class Crash(Exception):
    pass


def test_crash_between_rename_and_commit_duplicates_nothing(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    events = produce(kafka_bootstrap, topic, n=400, seed=3)
    group = f"sink-{uuid.uuid4().hex[:8]}"
    calls = []

    def die_on_third_commit(offsets):
        calls.append(offsets)
        if len(calls) == 3:
            raise Crash("killed after the files were renamed, before the commit")

    crashing = sink(
        kafka_bootstrap,
        topic,
        tmp_path,
        group,
        before_commit=die_on_third_commit,
        consumer_config={"max_poll_records": 60},
    )
    with pytest.raises(Crash):
        crashing.run(once=True)
    partial = stored(tmp_path)
    assert 0 < len(partial) < len(events)

    restarted = settled_once(sink(kafka_bootstrap, topic, tmp_path, group).run(once=True))
    assert restarted.duplicates > 0  # the uncommitted, already written events were seen again and skipped
    assert_exactly(tmp_path, events)


def test_sink_cli_subprocess_and_training_set_match_the_oracle(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(partitions=3)
    events = produce(kafka_bootstrap, topic, n=500, seed=4)
    group = f"sink-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable,
        "-m",
        "featurestream.cli",
        "sink",
        "--once",
        "--feature-set",
        "transactions",
        "--topic",
        topic,
        "--group",
        group,
        "--broker",
        kafka_bootstrap,
        "--data-dir",
        str(tmp_path),
        "--flush-events",
        "150",
    ]
    for _ in range(2):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
    assert_exactly(tmp_path, events)

    rng = np.random.default_rng(5)
    sample = [events[i] for i in rng.choice(len(events), size=120, replace=False)]
    rows = pd.DataFrame(
        {
            "user_id": [e["user_id"] for e in sample],
            "ts": [e["ts"] for e in sample],
            "amount": [e["amount"] for e in sample],
        }
    )
    rows.loc[len(rows)] = ["u3", max(e["ts"] for e in events) + 1, 10.0]
    vector = FeatureVector("all", ["transactions.*"])
    result = get_offline_features(vector, rows, tmp_path, registry=REGISTRY, partitions=2)

    ranked = sorted(events, key=lambda e: (e["offset"], e["partition"]))  # the tie order: offset, partition
    ref = [dict(key=e["user_id"], ts=e["ts"], seq=i, value=e["amount"]) for i, e in enumerate(ranked)]
    for feature in FS.plan.features:
        w = feature.window
        for i, (user, t) in enumerate(zip(rows["user_id"], rows["ts"], strict=True)):
            in_window = oracle.window_events(ref, user, int(t), w.length, w.period)
            expected = oracle.aggregate(feature.op, in_window)
            value = result[feature.name].iloc[i]
            where = f"{feature.name} at {user} t={t}: expected {expected}, got {value}"
            if expected is None:
                assert math.isnan(value), where
            elif feature.op in ("count", "min", "max", "last"):
                assert value == expected, where
            else:
                assert abs(value - expected) <= 1e-9 * abs(expected) + oracle.tolerance(
                    feature.op, in_window
                ), where


def test_kill_9_mid_stream_then_restart_is_exactly_once(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(partitions=3)
    events = produce(kafka_bootstrap, topic, n=4000, seed=6)
    group = f"sink-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable,
        "-m",
        "featurestream.cli",
        "sink",
        "--feature-set",
        "transactions",
        "--topic",
        topic,
        "--group",
        group,
        "--broker",
        kafka_bootstrap,
        "--data-dir",
        str(tmp_path),
        "--flush-events",
        "40",
    ]
    root = dataset_dir(tmp_path, FS.name)
    for _ in range(3):  # kill -9 at whatever point it has reached once some files exist, three times
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            before = len(list_parts(root))
            while len(list_parts(root)) <= before and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    done = subprocess.run(
        [*command, "--once"], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    assert_exactly(tmp_path, events)
