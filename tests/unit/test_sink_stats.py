"""SinkStats counts each record of a run once, whatever a rebalance makes the sink read again.

The sink's consume/flush bookkeeping is driven directly (records in, revocations, flushes against a real
dataset directory); only the Kafka consumer is a stand-in that records commits, which is all ``_flush``
asks of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from kafka.structs import TopicPartition

from aggregations.loading import load_registry
from sinks import ParquetSink

REPO = Path(__file__).resolve().parents[2]
FS = load_registry(str(REPO / "examples" / "transactions" / "features.py")).feature_set("transactions")
TOPIC = "transactions"


@dataclass
class Record:
    offset: int
    value: bytes
    timestamp: int


class Committer:
    """The one consumer call ``_flush`` makes: ``commit``, optionally failing once (a rebalance raced it)."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.commits: list[dict] = []

    def commit(self, offsets):
        from kafka.errors import CommitFailedError

        if self.fail:
            self.fail = False
            raise CommitFailedError("the group rebalanced")
        self.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})


def records(first: int, last: int) -> list[Record]:
    """Offsets first..last: every 10th is invalid JSON, the rest valid events."""
    now = int(time.time() * 1000)
    out = []
    for offset in range(first, last + 1):
        event = {"user_id": f"u{offset % 7}", "ts": now - offset, "amount": float(offset)}
        value = b"not json" if offset % 10 == 0 else json.dumps(event).encode()
        out.append(Record(offset, value, now))
    return out


def new_sink(tmp_path) -> ParquetSink:
    return ParquetSink(FS, tmp_path, "127.0.0.1:1", topic=TOPIC, group="g", flush_events=10_000)


def assert_once_each(stats, n_records: int, n_invalid: int) -> None:
    assert stats.consumed == stats.written + stats.invalid + stats.duplicates == n_records
    assert stats.invalid == n_invalid


def test_a_buffer_dropped_by_a_rebalance_is_counted_when_read_again_not_twice(tmp_path):
    sink = new_sink(tmp_path)
    sink._accept(0, records(0, 49))
    sink._forget([TopicPartition(TOPIC, 0)])  # revoked before its flush: dropped, to be read again
    assert sink._seek_back == {0: 0}
    sink._accept(0, records(0, 99))
    sink._flush(Committer())
    assert_once_each(sink.stats, 100, 10)
    assert (sink.stats.written, sink.stats.duplicates) == (90, 0)


def test_records_read_again_after_a_lost_commit_are_skipped_uncounted(tmp_path):
    sink = new_sink(tmp_path)
    sink._accept(0, records(0, 59))
    sink._flush(Committer(fail=True))  # written durably, but the commit did not land
    sink._forget([TopicPartition(TOPIC, 0)])  # the rebalance: the partition comes back at the old position
    sink._accept(0, records(0, 99))
    committer = Committer()
    sink._flush(committer)
    assert_once_each(sink.stats, 100, 10)
    assert (sink.stats.written, sink.stats.duplicates) == (90, 0)
    assert committer.commits == [{0: 100}]


def test_records_written_by_an_earlier_run_are_duplicates_once_each(tmp_path):
    first = new_sink(tmp_path)
    first._accept(1, records(0, 39))
    first._flush(Committer())
    again = new_sink(tmp_path)  # a new run from offset 0 (e.g. a new group), with a rebalance mid-read
    again._accept(1, records(0, 19))
    again._forget([TopicPartition(TOPIC, 1)])
    again._accept(1, records(0, 49))
    again._flush(Committer())
    assert_once_each(again.stats, 50, 5)
    assert (again.stats.duplicates, again.stats.written) == (36, 9)


class OutageConsumer(Committer):
    """A consumer whose polls raise while the broker is away, then return the topic's records: what ``run``
    asks of kafka-python (subscribe, topic metadata, poll, assignment, commit, close)."""

    def __init__(self, fails: int, **_config):
        super().__init__()
        self.fails = fails
        self.batches = [records(0, 29)]

    def subscribe(self, topics, listener=None):
        self.topics_ = topics

    def topics(self):
        return {TOPIC}

    def partitions_for_topic(self, topic):
        return {0}

    def assignment(self):
        return {TopicPartition(TOPIC, 0)}

    def poll(self, timeout_ms=0):
        from kafka.errors import KafkaConnectionError

        if self.fails:
            self.fails -= 1
            raise KafkaConnectionError("111 ECONNREFUSED")
        return {TopicPartition(TOPIC, 0): self.batches.pop()} if self.batches else {}

    def close(self, autocommit=False):
        pass


def test_a_continuous_sink_polls_again_when_the_broker_is_away(tmp_path, monkeypatch):
    import threading

    import kafka

    consumer = OutageConsumer(fails=3)
    monkeypatch.setattr(kafka, "KafkaConsumer", lambda **config: consumer)
    sink = new_sink(tmp_path)
    sink.connect_retry_s = 0.01
    sink.flush_seconds = 0.0
    runner = threading.Thread(target=sink.run)
    runner.start()
    deadline = time.monotonic() + 10
    while not consumer.commits and time.monotonic() < deadline:
        time.sleep(0.02)
    sink.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert sink.stats.poll_failures == 3
    assert consumer.commits and consumer.commits[-1] == {0: 30}
    assert_once_each(sink.stats, 30, 3)


def test_a_once_sink_still_fails_on_an_unreachable_broker(tmp_path, monkeypatch):
    import kafka
    import pytest
    from kafka.errors import KafkaConnectionError

    monkeypatch.setattr(kafka, "KafkaConsumer", lambda **config: OutageConsumer(fails=1))
    with pytest.raises(KafkaConnectionError):
        new_sink(tmp_path).run(once=True)
