"""The Faust glue of the agent, without a broker: record extraction and the current-event context."""

from __future__ import annotations

from types import SimpleNamespace

from faust.streams import current_event

from stream.agent import acting_as, source_records


class FakeEvent:
    """Stands in for faust.Event: only ``.message`` is read (and Faust keeps a weak reference to it)."""

    def __init__(self, message):
        self.message = message


def fake_event(partition: int, offset: int, key: bytes | None, value: bytes | None, ts: float | None):
    message = SimpleNamespace(partition=partition, offset=offset, key=key, value=value, timestamp=ts)
    return FakeEvent(message)


def test_source_records_keep_raw_bytes_partition_offset_and_broker_time_in_ms():
    records = source_records([fake_event(2, 41, b"u1", b"{}", 1_800_000_000.123), fake_event(0, 7, None, None, None)])
    assert [(r.partition, r.offset, r.key, r.value, r.timestamp_ms) for r in records] == [
        (2, 41, b"u1", b"{}", 1_800_000_000_123),
        (0, 7, None, None, None),
    ]


def test_acting_as_sets_and_restores_fausts_current_event():
    outer, inner = fake_event(0, 1, None, None, None), fake_event(3, 2, None, None, None)
    assert current_event() is None
    with acting_as(outer):
        assert current_event() is outer
        with acting_as(inner):
            assert current_event().message.partition == 3
        assert current_event() is outer
    assert current_event() is None
