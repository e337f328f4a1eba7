"""How the version guard reads how far a table's state goes (``stream.versions``), with a fake consumer:
the newest checkpoint of each changelog partition, found from the end; never an older one (that would make
a current state look stale and refuse a restart); and the comparison with the group's offsets."""

from __future__ import annotations

from collections import namedtuple

from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint
from stream.versions import newest_checkpoints, state_behind

Record = namedtuple("Record", "offset key value timestamp")


class FakeConsumer:
    """A changelog: partition -> list of (key, value); ``per_poll`` records per poll, ``clock`` advanced per poll."""

    def __init__(self, partitions: dict[int, list[tuple[bytes, bytes]]], per_poll: int = 10_000, clock=None):
        self.partitions, self.per_poll, self.clock = partitions, per_poll, clock
        self.positions: dict = {}
        self.assigned: list = []
        self.read = 0

    def partitions_for_topic(self, topic):
        return set(self.partitions)

    def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def end_offsets(self, tps):
        return {tp: len(self.partitions[tp.partition]) for tp in tps}

    def assign(self, tps):
        self.assigned = list(tps)

    def seek(self, tp, offset):
        self.positions[tp] = offset

    def position(self, tp):
        return self.positions[tp]

    def poll(self, timeout_ms, max_records):
        if self.clock is not None:
            self.clock[0] += 1.0
        out = {}
        for tp in self.assigned:
            records = self.partitions[tp.partition]
            start = self.positions[tp]
            chunk = records[start : start + min(self.per_poll, max_records)]
            out[tp] = [Record(start + i, k, v, 1000 + start + i) for i, (k, v) in enumerate(chunk)]
            self.positions[tp] = start + len(chunk)
            self.read += len(chunk)
        return out

    def unsubscribe(self):
        self.assigned = []


def state(i: int) -> tuple[bytes, bytes]:
    return (f"u{i}".encode(), b"blob")


def checkpoint(source: int) -> tuple[bytes, bytes]:
    return (CHECKPOINT_KEY, Checkpoint(source).encode())


def test_the_newest_checkpoint_is_read_from_the_end_without_reading_the_whole_changelog():
    history = [x for n in range(1, 2001) for x in (state(n), checkpoint(n * 10))]
    crashed = [*history, state(1), state(2)]  # a crash after the state records, before the checkpoint
    consumer = FakeConsumer({0: history, 1: crashed, 2: [state(1)], 3: []})
    got = newest_checkpoints(consumer, "changelog")
    assert got == {0: (Checkpoint(20_000), 1000 + 3999), 1: (Checkpoint(20_000), 1000 + 3999), 2: None, 3: None}
    assert consumer.read < 200  # not 8,000


def test_a_scan_that_runs_out_of_time_judges_nothing_rather_than_an_older_checkpoint(monkeypatch):
    import stream.versions as versions

    clock = [0.0]
    monkeypatch.setattr(versions.time, "monotonic", lambda: clock[0])
    records = [checkpoint(5), *[state(i) for i in range(100)], checkpoint(999), *[state(i) for i in range(100)]]
    consumer = FakeConsumer({0: records}, per_poll=1, clock=clock)
    assert newest_checkpoints(consumer, "changelog", timeout_s=50) == {0: None}


def test_state_behind_the_group_is_reported_per_partition():
    checkpoints = {0: Checkpoint(100), 1: Checkpoint(50), 2: None}
    assert state_behind(checkpoints, {0: 100, 1: 80, 2: 999}) == {1: [50, 80]}
