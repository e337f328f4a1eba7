"""Compaction, backfill and retention against a real broker: each event exactly once, always.

Events are produced to a fresh topic and written by the live sink in many small files. Compaction must
keep the ``(_partition, _offset)`` set identical while reader threads keep reading (each snapshot is the
full set, with no duplicate and no gap), and the live sink must keep its exact-offset accounting after
it. Backfill into an empty dataset, into one the live sink partly wrote, interrupted and resumed, and
from a time or an offset must give each event exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka import KafkaAdminClient

from sinks import read_events
from sinks.backfill import PROGRESS_FILE, backfill
from sinks.compaction import compact
from sinks.layout import DAY_MS, dataset_dir, list_parts
from sinks.retention import prune, retention_cutoff
from tests.integration.test_sink import FS, assert_exactly, produce, sink

pytestmark = pytest.mark.integration


def keys(store) -> list[tuple[int, int]]:
    data = read_events(FS, store, columns=[])
    return list(zip(data["_partition"].tolist(), data["_offset"].tolist(), strict=True))


def test_compaction_under_concurrent_readers_and_live_sink(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(partitions=2)
    events = produce(kafka_bootstrap, topic, n=1200)
    group = f"sink-{uuid.uuid4().hex[:8]}"
    small_polls = {"max_poll_records": 50}
    first = sink(kafka_bootstrap, topic, tmp_path, group, consumer_config=small_polls).run(once=True)
    assert first.written == len(events), first  # small files
    root = dataset_dir(tmp_path, FS.name)
    small = len(list_parts(root))
    assert small >= 12
    before = sorted(keys(tmp_path))
    assert len(before) == len(set(before)) == len(events)

    snapshots, errors, done = [], [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                snapshots.append(keys(tmp_path))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    stats = compact(FS, tmp_path, target_bytes=1 << 20)
    time.sleep(0.2)
    done.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(snapshots) >= 4
    for snap in snapshots:  # every concurrent snapshot: the whole set, once each
        assert len(snap) == len(before) and sorted(snap) == before
    assert sorted(keys(tmp_path)) == before
    assert stats.files_in == small and len(list_parts(root)) < small
    assert_exactly(tmp_path, events)

    # the live sink goes on after compaction: new events once, old ones not again (a new group re-reads all)
    more = produce(kafka_bootstrap, topic, n=300, seed=2)
    again = sink(kafka_bootstrap, topic, tmp_path, f"sink-{uuid.uuid4().hex[:8]}").run(once=True)
    assert again.written == len(more) and again.duplicates == len(events)
    assert_exactly(tmp_path, events + more)


def test_backfill_empty_partly_written_resumed_and_from_time(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(partitions=3)
    events = produce(kafka_bootstrap, topic, n=900)

    # into an empty dataset
    empty = tmp_path / "empty"
    first = backfill(FS, empty, kafka_bootstrap, topic=topic, flush_events=200)
    assert first.written == len(events) and first.invalid == 9  # a malformed record every 100
    assert_exactly(empty, events)
    assert backfill(FS, empty, kafka_bootstrap, topic=topic).written == 0  # idempotent with itself
    assert not (dataset_dir(empty, FS.name) / PROGRESS_FILE).exists()

    # into a dataset the live sink partly wrote: a sink that dies after its first commits
    part = tmp_path / "part"
    group = f"sink-{uuid.uuid4().hex[:8]}"
    live = sink(kafka_bootstrap, topic, part, group)
    live.flush_events = 150
    live.before_commit = lambda offsets: live.stop()
    live.run(once=False)
    written_by_sink = len(keys(part))
    assert 0 < written_by_sink < len(events)
    # the live sink's group committed offsets: backfill stops there (the sink owns the rest)...
    stats = backfill(FS, part, kafka_bootstrap, topic=topic, sink_group=group)
    got = keys(part)
    assert len(got) == len(set(got))
    # ...and the live sink, resumed, writes the rest: every event once
    sink(kafka_bootstrap, topic, part, group).run(once=True)
    assert_exactly(part, events)
    assert stats.written + written_by_sink <= len(events)

    # a dataset with holes, written by a sink whose group has no commit: backfill to the end fills them
    holes = tmp_path / "holes"
    g2 = f"sink-{uuid.uuid4().hex[:8]}"
    live2 = sink(kafka_bootstrap, topic, holes, g2)
    live2.before_commit = lambda offsets: live2.stop()
    live2.run(once=False)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.delete_groups([g2])
    admin.close()
    # interrupted after one flush, then resumed with the same command
    partial = backfill(
        FS, holes, kafka_bootstrap, topic=topic, flush_events=100, max_poll_records=50, stop_after_flushes=1
    )
    assert (dataset_dir(holes, FS.name) / PROGRESS_FILE).exists()
    resumed = backfill(FS, holes, kafka_bootstrap, topic=topic, flush_events=100)
    assert resumed.resumed
    assert partial.consumed + resumed.consumed == len(events) + 9  # no record replayed twice
    assert_exactly(holes, events)

    # from a time and from an offset: exactly the events from there on
    cut = sorted(e["arrival"] for e in events)[len(events) // 2]
    later = tmp_path / "later"
    backfill(FS, later, kafka_bootstrap, topic=topic, start=f"ts:{cut}")
    assert set(keys(later)) == {(e["partition"], e["offset"]) for e in events if e["arrival"] >= cut}
    offset = tmp_path / "offset"
    backfill(FS, offset, kafka_bootstrap, topic=topic, start=100)
    assert set(keys(offset)) == {(e["partition"], e["offset"]) for e in events if e["offset"] >= 100}


def test_retention_keeps_the_longest_window(tmp_path):
    longest = FS.plan.longest  # 90d, period 1d
    now = 20_500 * DAY_MS + 5 * 3_600_000
    cutoff = retention_cutoff(FS, keep_days=7, now_ms=now, newest_day=now // DAY_MS)
    assert cutoff <= now - longest.length - longest.period
    root = dataset_dir(tmp_path, FS.name)
    for day in range(20_500 - 120, 20_501):
        (root / f"date={time.strftime('%Y-%m-%d', time.gmtime(day * 86_400))}").mkdir(parents=True)
    result = prune(FS, tmp_path, keep_days=7, now_ms=now)
    remaining = sorted(p.name for p in root.iterdir() if p.name.startswith("date="))
    assert len(result.deleted) == 120 + 1 - len(remaining)
    oldest_kept = time.strptime(remaining[0], "date=%Y-%m-%d")
    assert (time.mktime(oldest_kept) - time.timezone) * 1000 <= now - longest.length - longest.period
    assert len(remaining) >= 90 + 1
