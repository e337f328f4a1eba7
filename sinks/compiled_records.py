"""Kafka record parsing for the sink's and backfill's consumers with aiokafka's compiled reader.

kafka-python parses each record of a fetched batch in pure Python (varints, headers) and wraps it in a
``ConsumerRecord`` of thirteen fields: about 4 µs a record, most of the sink's time. aiokafka ships the
same parser as a C extension (``aiokafka.record._crecords``, 0.1 µs a record). ``use_compiled_records``
makes one kafka-python consumer parse its fetches with it and leaves everything else to kafka-python:
group membership, positions, fetch requests, commits, rebalances.

Only the innermost loop changes. Batches are still walked by kafka-python, which checks each batch's CRC
(``check_crcs``), records its leader epoch, skips control batches and sets the next fetch position exactly
as before; each data batch's records are then read from its bytes by the compiled reader, and the fetch
position advances record by record as kafka-python's own loop advances it (``poll`` may stop mid-batch at
``max_poll_records``). Where kafka-python does more than that, the consumer keeps kafka-python's parser:
``read_committed`` (aborted transactions), key or value deserializers, and legacy (v0/v1) message sets.

Polled records are then aiokafka ``DefaultRecord`` objects rather than ``ConsumerRecord``: they have
``offset``, ``timestamp`` (the broker's log-append time when the topic uses it), ``timestamp_type``,
``key``, ``value`` and ``headers``, and no ``topic`` or ``partition`` (the key of ``poll``'s answer has
them). The hook is on one consumer's fetcher, never on kafka-python's classes, and relies on kafka-python
internals (``KafkaConsumer._fetcher``, ``Fetcher.PartitionRecords``, a batch's ``_buffer``) of the pinned
version; ``tests/unit/test_compiled_records.py`` compares both parsers record by record.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def use_compiled_records(consumer) -> bool:
    """Make ``consumer`` (a ``kafka.KafkaConsumer``) parse fetched records with aiokafka's compiled reader.

    Returns False, and leaves the consumer as it was, if either library lacks what this relies on.
    """
    try:
        from aiokafka.record._crecords.default_records import DefaultRecordBatch  # noqa: F401
    except ImportError:  # aiokafka built without its extensions
        log.warning("aiokafka's compiled record reader is missing: records are parsed by kafka-python")
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(fetcher, "PartitionRecords", None)
    if base is None or not hasattr(base, "_unpack_records"):
        log.warning("kafka-python's fetcher is not the one expected: records are parsed by kafka-python")
        return False
    fetcher.PartitionRecords = _compiled_partition_records(base)
    return True


_CLASSES: dict[type, type] = {}


def _compiled_partition_records(base: type) -> type:
    """A subclass of kafka-python's ``Fetcher.PartitionRecords`` whose records come from the compiled reader."""
    if base in _CLASSES:
        return _CLASSES[base]
    from aiokafka.record._crecords.default_records import DefaultRecordBatch
    from kafka.errors import CorruptRecordError
    from kafka.protocol.consumer import IsolationLevel

    class CompiledPartitionRecords(base):
        def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
            if (
                self.isolation_level == IsolationLevel.READ_COMMITTED
                or key_deserializer is not None
                or value_deserializer is not None
            ):
                yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
                return
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} failed "
                        "crc check"
                    )
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    if batch.is_control_batch:  # a transaction marker: no record for the consumer
                        self.next_fetch_offset = batch.next_offset
                    else:
                        self.bytes_read += batch.size_in_bytes
                        for record in DefaultRecordBatch(bytes(batch._buffer)):
                            self.records_read += 1
                            self.next_fetch_offset = record.offset + 1
                            yield record
                else:  # a legacy message set: kafka-python's own records
                    for record in batch:
                        if self.check_crcs and not record.validate_crc():
                            raise CorruptRecordError(
                                f"Record for partition {self.topic_partition} at offset {record.offset} failed "
                                "crc check"
                            )
                        self.records_read += 1
                        self.bytes_read += record.size_in_bytes
                        self.next_fetch_offset = record.offset + 1
                        yield record
                batch = records.next_batch()
            # As kafka-python: the last batch's next offset, past records removed by compaction.
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

    _CLASSES[base] = CompiledPartitionRecords
    return CompiledPartitionRecords
