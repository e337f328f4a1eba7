"""The compiled record reader (``sinks.compiled_records``) yields what kafka-python's parser yields.

Fetch buffers are built byte for byte as a broker sends them (record batches v2 with base offsets, leader
epochs, compression, log-append time, compaction gaps, transaction markers, headers and null values; legacy
v0/v1 message sets; a partial batch at the end), then taken by both parsers in chunks, as ``poll`` takes them
with ``max_poll_records``: the same records (offset, timestamp and its type, key, value, headers) must come
out, and the fetch position and leader epoch that kafka-python reads after each chunk must be the same.
"""

from __future__ import annotations

import struct

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from sinks.compiled_records import _compiled_partition_records, use_compiled_records

TP = TopicPartition("events", 3)
Reference = Fetcher.PartitionRecords
Compiled = _compiled_partition_records(Fetcher.PartitionRecords)
GZIP = DefaultRecordBatch.CODEC_GZIP
LOG_APPEND_TIME = DefaultRecordBatch.TIMESTAMP_TYPE_MASK
CONTROL = DefaultRecordBatch.CONTROL_MASK


def batch(base: int, records: list[tuple], *, compression: int = 0, epoch: int = 7, attributes: int = 0,
          last_delta: int | None = None, max_timestamp: int | None = None) -> bytes:  # fmt: skip
    """A v2 record batch as the broker stores it: ``records`` are (offset delta, timestamp, key, value, headers)."""
    builder = DefaultRecordBatchBuilder(2, compression, False, -1, -1, -1, 1 << 20)
    for delta, ts, key, value, headers in records:
        builder.append(delta, timestamp=ts, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    header = list(DefaultRecordBatch.HEADER_STRUCT.unpack_from(raw))
    header[0], header[2] = base, epoch
    header[5] |= attributes
    if last_delta is not None:
        header[6] = last_delta
    if max_timestamp is not None:
        header[8] = max_timestamp
    DefaultRecordBatch.HEADER_STRUCT.pack_into(raw, 0, *header)
    crc = calc_crc32c(memoryview(raw)[DefaultRecordBatch.ATTRIBUTES_OFFSET :])
    struct.pack_into(">I", raw, DefaultRecordBatch.CRC_OFFSET, crc)
    return bytes(raw)


def legacy(magic: int, base: int, values: list[bytes], compression: int = 0) -> bytes:
    builder = LegacyRecordBatchBuilder(magic, compression, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i if compression else base + i, timestamp=1_700_000_000_000 + i if magic else None,
                       key=b"k%d" % i, value=value)  # fmt: skip
    raw = bytearray(builder.build())
    if compression:  # the wrapper message carries the last inner offset
        struct.pack_into(">q", raw, 0, base + len(values) - 1)
    return bytes(raw)


def rows(n: int, first_delta: int = 0, ts: int = 1_700_000_000_000) -> list[tuple]:
    return [
        (first_delta + i, ts + i, None if i % 5 == 4 else b"u%d" % i, None if i % 7 == 6 else b'{"i": %d}' % i,
         [("h", b"x"), ("empty", None)] if i % 3 == 0 else [])
        for i in range(n)
    ]  # fmt: skip


def taken(cls, buffer: bytes, fetch_offset: int, chunk: int, **kwargs) -> list:
    """Records and the (fetch position, leader epoch) after each ``take(chunk)``, until drained."""
    drained = []
    parts = cls(fetch_offset, TP, MemoryRecords(buffer), on_drain=drained.append, **kwargs)
    out = []
    while parts:
        records = parts.take(chunk)
        out.append(
            (
                [(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, [tuple(h) for h in r.headers or []])
                 for r in records],
                parts.next_fetch_offset,
                parts.leader_epoch,
            )
        )  # fmt: skip
    assert drained == [parts]
    return out


FETCHES = {
    "batches": batch(100, rows(10)) + batch(110, rows(25), epoch=9) + batch(135, rows(1)),
    "gzip": batch(0, rows(40), compression=GZIP) + batch(40, rows(3)),
    "log append time": batch(50, rows(12), attributes=LOG_APPEND_TIME, max_timestamp=1_800_000_000_000),
    "compacted": batch(10, [r for r in rows(20) if r[0] % 4], last_delta=22) + batch(33, rows(4)),
    "compacted last": batch(10, [r for r in rows(20) if r[0] % 4], last_delta=22),
    "transaction marker": batch(0, rows(6)) + batch(6, rows(1), attributes=CONTROL) + batch(7, rows(6)),
    "marker last": batch(0, rows(6)) + batch(6, rows(1), attributes=CONTROL),
    "partial batch at the end": batch(0, rows(8)) + batch(8, rows(8))[:-20],
    "legacy v0": legacy(0, 20, [b"a", b"b", b"c"]),
    "legacy v1": legacy(1, 20, [b"a", b"b", b"c"]),
    "legacy v1 gzip": legacy(1, 20, [b"a", b"b", b"c", b"d"], compression=1),
    "legacy then v2": legacy(1, 0, [b"a", b"b"]) + batch(2, rows(5)),
    "empty": b"",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FETCHES))
@pytest.mark.parametrize("chunk", [1, 4, 10_000])
def test_same_records_and_positions_as_kafka_python(name, chunk):
    buffer = FETCHES[name]
    reference = taken(Reference, buffer, 0, chunk)
    assert taken(Compiled, buffer, 0, chunk) == reference
    if name != "empty":
        assert sum(len(r) for r, _, _ in reference) > 0


@pytest.mark.parametrize("name", ["batches", "gzip", "compacted", "transaction marker"])
def test_a_fetch_from_mid_batch_starts_at_its_offset(name):
    buffer = FETCHES[name]
    for fetch_offset in (3, 5, 111, 120, 134):
        assert taken(Compiled, buffer, fetch_offset, 3) == taken(Reference, buffer, fetch_offset, 3)


def test_a_corrupt_batch_is_refused_as_kafka_python_refuses_it():
    raw = bytearray(FETCHES["batches"])
    raw[80] ^= 0xFF  # a byte of the first batch's records
    for cls in (Reference, Compiled):
        with pytest.raises(CorruptRecordError):
            taken(cls, bytes(raw), 0, 100)
        assert taken(cls, bytes(raw), 0, 100, check_crcs=False)  # not checked: read as it is


def test_read_committed_and_deserializers_keep_kafka_python_parser():
    buffer = FETCHES["transaction marker"]
    committed = taken(Compiled, buffer, 0, 4, isolation_level=IsolationLevel.READ_COMMITTED)
    assert committed == taken(Reference, buffer, 0, 4, isolation_level=IsolationLevel.READ_COMMITTED)
    parts = Compiled(0, TP, MemoryRecords(buffer), value_deserializer=_Upper())
    assert [r.value for r in parts.take(3)] == [b'{"I": 0}', b'{"I": 1}', b'{"I": 2}']


class _Upper:
    def deserialize(self, topic, headers, data):
        return data.upper()


def test_installed_on_one_consumer_only():
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(3, 9), request_timeout_ms=1000)
    other = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(3, 9), request_timeout_ms=1000)
    try:
        assert use_compiled_records(consumer)
        assert consumer._fetcher.PartitionRecords is Compiled
        assert other._fetcher.PartitionRecords is Reference
        assert Fetcher.PartitionRecords is Reference
    finally:
        consumer.close()
        other.close()
