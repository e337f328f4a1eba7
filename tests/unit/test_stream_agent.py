"""The Faust glue of the agent, without a broker: record extraction from Faust messages."""

from __future__ import annotations

from types import SimpleNamespace

from stream.agent import newest_broker_ms


class FakeEvent:
    """Stands in for faust.Event: only ``.message`` is read (and Faust keeps a weak reference to it)."""

    def __init__(self, message):
        self.message = message


def fake_event(partition: int, offset: int, key: bytes | None, value: bytes | None, ts: float | None):
    message = SimpleNamespace(partition=partition, offset=offset, key=key, value=value, timestamp=ts)
    return FakeEvent(message)


def test_newest_broker_time_in_ms_ignores_messages_without_one():
    messages = [
        fake_event(2, 41, b"u1", b"{}", 1_800_000_000.123).message,
        fake_event(0, 7, None, None, None).message,
    ]
    assert newest_broker_ms(messages) == 1_800_000_000_123
    assert newest_broker_ms([fake_event(0, 7, None, None, None).message]) is None
