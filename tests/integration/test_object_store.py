"""The offline store on a real S3-API server (S3Proxy, filesystem backend; started by the session fixture).

Training sets, compaction, retention and statistics on ``s3://bucket/prefix`` give what they give on a local
directory, checked against the oracle; compaction and retention there keep every snapshot a reader listed
readable for the grace period, and show each event exactly once before, during and after.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from aggregations import FeatureVector
from sinks import get_offline_features, read_events
from sinks.compaction import compact
from sinks.layout import DAY_MS, dataset_dir, list_parts
from sinks.retention import prune
from sinks.snapshot import MaintenanceBusy, live_parts, read_journals
from sinks.statistics import read_statistics, refresh_statistics
from sinks.storage import StorePath, open_location, read_parquet
from sinks.writer import claim_source, written_offsets
from tests.unit.test_offline_features import (
    PAY,
    check_against_oracle,
    oracle_events,
    query_rows,
    random_events,
    write_events,
)


@pytest.fixture
def pay_events():
    rng = np.random.default_rng(11)
    events = random_events(rng, 300, ["a", "b", "c", "d"])
    events += [  # ties whose arrival order differs from offset order
        {"user": "a", "ts": 50_000, "amount": 1.0, "partition": 0, "offset": 1000, "arrival": 50_010},
        {"user": "a", "ts": 50_000, "amount": 2.0, "partition": 1, "offset": 1000, "arrival": 50_005},
    ]
    return events


def _write_in_flushes(store, events, flushes):
    """As a sink writing ``flushes`` batches: many small files per (day, partition)."""
    for chunk in np.array_split(np.arange(len(events)), flushes):
        write_events(store, PAY, [events[i] for i in chunk])


def test_store_path_basics(s3_store):
    root = open_location(s3_store)
    assert isinstance(root, StorePath) and str(root) == s3_store
    f = root / "x" / "a.txt"
    assert not f.exists() and list(root.iterdir()) == []
    f.write_text("hello")
    assert f.read_text() == "hello" and f.is_file() and (root / "x").is_dir()
    assert f.stat().st_size == 5 and f.relative_to(root).as_posix() == "x/a.txt"
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_text()
    f.unlink()
    f.unlink(missing_ok=True)
    assert not f.exists()
    with pytest.raises(ValueError):
        open_location("gs://bucket/prefix")


def test_a_listing_shows_every_object_written_before_it_while_others_are_written(s3_store):
    """Read-after-write for listings, the guarantee the ingest claims and the maintenance journals rely on.

    AWS S3 and MinIO give it; S3Proxy's filesystem-nio2 backend does not (a listing that races a PUT in the
    same prefix ends early, silently), which is why deploy/s3proxy runs its ``filesystem`` backend.
    """
    root = open_location(s3_store) / "listing"
    before = {f"before-{i:03d}" for i in range(40)}
    for name in before:
        (root / name).write_text("x")
    stop = threading.Event()

    def write_and_delete(writer: int) -> None:
        i = 0
        while not stop.is_set():
            (root / f"during-{writer}-{i}").write_text("y")
            (root / f"during-{writer}-{i}").unlink()
            i += 1

    writers = [threading.Thread(target=write_and_delete, args=(w,)) for w in range(3)]
    for t in writers:
        t.start()
    try:
        missing = [len(before - {e.name for e in root.iterdir()}) for _ in range(80)]
    finally:
        stop.set()
        for t in writers:
            t.join()
    assert [m for m in missing if m] == [], "listings that left out objects written before them"


@pytest.mark.parametrize("partitions", [1, 3])
def test_training_set_on_object_store_matches_the_oracle(s3_store, pay_events, partitions):
    write_events(s3_store, PAY, pay_events)
    rows = query_rows(np.random.default_rng(5), 120, ["a", "b", "c", "d", "zz"])
    rows.loc[0] = ["a", 50_001]
    rows["ts_ms"] = rows["ts"]
    out = f"{s3_store}/out/train.parquet"
    vector = FeatureVector("all", ["pay.*"])
    result = get_offline_features(vector, rows, s3_store, registry=[PAY], partitions=partitions, out=out)
    check_against_oracle(PAY, result, rows, oracle_events(pay_events, "user"), "user")
    written = read_parquet(open_location(out)).to_pandas()
    pd.testing.assert_frame_equal(written, result.reset_index(drop=True), check_dtype=False)
    known = get_offline_features(vector, rows, s3_store, registry=[PAY], as_known_at=True)
    check_against_oracle(PAY, known, rows, oracle_events(pay_events, "user"), "user", known_at=True)


def _pairs(store):
    stored = read_events(PAY, store)
    return sorted(zip(stored["_partition"].tolist(), stored["_offset"].tolist(), strict=True))


def test_compaction_on_object_store_keeps_listed_snapshots_and_each_event_once(s3_store, pay_events, monkeypatch):
    _write_in_flushes(s3_store, pay_events, 6)
    root = dataset_dir(s3_store, PAY.name)
    expected = sorted((e["partition"], e["offset"]) for e in pay_events)
    assert _pairs(s3_store) == expected
    before = live_parts(root)  # a reader's snapshot, listed before the compaction

    stats = compact(PAY, s3_store)
    assert stats.files_in > stats.files_out > 0
    assert len(read_journals(root)) == stats.files_out  # one committed transaction per bin, in its grace
    assert _pairs(s3_store) == expected
    # Every file the earlier reader listed still reads, and that snapshot still holds each event once.
    old = sorted(
        (int(p), int(o))
        for part in before
        for p, o in zip(*read_parquet(part.path, ["_partition", "_offset"]).to_pydict().values(), strict=True)
    )
    assert old == expected
    assert sorted(written_offsets(root, 0).tolist()) == sorted(o for p, o in expected if p == 0)

    # A second run within the grace period leaves the pending transactions' files alone.
    assert compact(PAY, s3_store).files_in == 0
    # After the grace period the next run retires them: replaced files deleted, journals gone.
    monkeypatch.setenv("FEATURESTREAM_STORE_GRACE_S", "0")
    compact(PAY, s3_store)
    assert read_journals(root) == []
    assert len(list_parts(root)) == len(live_parts(root))
    assert _pairs(s3_store) == expected
    stats = refresh_statistics(PAY, s3_store)
    assert stats["rows"] == len(pay_events) and read_statistics(PAY, s3_store)["rows"] == len(pay_events)


def test_retention_on_object_store_hides_days_at_once_and_deletes_after_grace(s3_store, monkeypatch):
    days = 400
    events = [
        {"user": "a", "ts": d * DAY_MS + 1000, "amount": 1.0, "partition": 0, "offset": d, "arrival": d * DAY_MS + 2000}
        for d in range(days)
    ]
    write_events(s3_store, PAY, events)
    root = dataset_dir(s3_store, PAY.name)
    now = days * DAY_MS
    result = prune(PAY, s3_store, keep_days=30, now_ms=now)
    assert 300 < len(result.deleted) < days
    kept = read_events(PAY, s3_store)
    assert len(kept) == days - len(result.deleted)
    assert kept["ts"].min() >= result.cutoff_ms
    assert len(list_parts(root)) == days  # still there for readers that listed them: the grace period
    monkeypatch.setenv("FEATURESTREAM_STORE_GRACE_S", "0")
    again = prune(PAY, s3_store, keep_days=30, now_ms=now)
    assert again.deleted == []
    assert len(list_parts(root)) == len(kept)
    assert read_journals(root) == []


def test_a_second_maintenance_run_is_refused_while_one_holds_the_lease(s3_store, pay_events):
    write_events(s3_store, PAY, pay_events)
    root = dataset_dir(s3_store, PAY.name)
    from sinks.snapshot import maintenance

    with maintenance(root), pytest.raises(MaintenanceBusy, match="holds"):
        compact(PAY, s3_store)
    assert compact(PAY, s3_store).files_in >= 0  # released


def test_a_dataset_of_another_topic_is_refused_on_object_store(s3_store):
    root = dataset_dir(s3_store, PAY.name)
    claim_source(root, "topic-a")
    claim_source(root, "topic-a")
    with pytest.raises(ValueError, match="topic-a"):
        claim_source(root, "topic-b")


def test_backfill_into_the_object_store_resumes_and_is_idempotent(kafka_bootstrap, new_topic, s3_store):
    from sinks.backfill import PROGRESS_FILE, backfill
    from tests.integration.test_sink import FS, assert_exactly, produce

    topic = new_topic(partitions=3)
    events = produce(kafka_bootstrap, topic, n=600)
    partial = backfill(
        FS, s3_store, kafka_bootstrap, topic=topic, flush_events=100, stop_after_flushes=1, until_sink=False,
        max_poll_records=50,
    )
    assert 0 < partial.written < len(events) and (dataset_dir(s3_store, FS.name) / PROGRESS_FILE).exists()
    resumed = backfill(FS, s3_store, kafka_bootstrap, topic=topic, flush_events=100, until_sink=False)
    assert resumed.resumed and partial.written + resumed.written == len(events)
    assert_exactly(s3_store, events)
    assert backfill(FS, s3_store, kafka_bootstrap, topic=topic, until_sink=False).written == 0
    assert not (dataset_dir(s3_store, FS.name) / PROGRESS_FILE).exists()


def test_online_state_rebuilt_from_the_object_store_equals_the_local_rebuild(s3_store, pay_events, tmp_path):
    from sinks.online_state import rebuild_states

    write_events(s3_store, PAY, pay_events)
    write_events(tmp_path, PAY, pay_events)
    now = 200_000

    def states(store):
        return {(s.partition, s.key, s.value) for part in rebuild_states(PAY, store, now, 3, partitions=2) for s in part.states}

    assert states(s3_store) == states(tmp_path) and states(tmp_path)
