"""One FeatureSet's ingest: source messages in batches -> tile table, dead letters, late events.

Messages of the source topic arrive in batches straight from the consumer's fetches
(``batch_drain``), not one by one through a Faust Stream. ``handle`` hands them to ``BatchProcessor`` (pure: validation, dedupe, late cut, kernel), writes the returned
state blobs into the table and publishes dead letters and late events. Messages are acked only after
the batch is written, so a crash redelivers them, and the per-entity applied offsets make the
redelivery a no-op (effectively once).

The Faust agent on the source topic stays declared so that Faust subscribes the topic, assigns its
partitions together with the table's and waits for the agent at startup; it never receives a message
(they are taken before its channel) and stops the worker if one ever reaches it.

State is read with one multi-get per source partition from that partition's RocksDB database and
written by ``TableWriter`` (changelog first, then the store): each key lives in the store and changelog
partition of its source partition, exactly where a per-event Faust agent would put it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.exceptions import ProducerSendError
from mode import CrashingSupervisor

from aggregations.bookkeeping import by_entity_slot, forwarded_slot
from aggregations.definitions import FeatureSet

from . import batch_drain
from .envelope import Envelope, envelope, without_payload
from .metrics import WorkerMetrics
from .partitioning import entity_partition
from .processor import BatchProcessor, BatchResult, SourceRecord
from .table_writer import TableWriter
from .topics import SetTopics

log = logging.getLogger(__name__)

DEFAULT_BATCH_MAX = 5000


def newest_broker_ms(messages: Sequence) -> int | None:
    """The newest broker (or producer) timestamp of a batch of Faust messages, in ms."""
    newest = max((m.timestamp for m in messages if m.timestamp is not None), default=None)
    return None if newest is None else int(newest * 1000)


ORIGIN_HEADER = "featurestream-origin"


def origin_header(partition: int, offset: int) -> tuple[str, bytes]:
    """The header a forwarded event carries: its source partition and offset."""
    return ORIGIN_HEADER, f"{partition}:{offset}".encode()


def origin_of(message) -> tuple[int, int] | None:
    """(source partition, offset) from a forwarded message's header, or None if it has none."""
    for name, value in message.headers or ():
        if name == ORIGIN_HEADER:
            try:
                partition, offset = value.decode().split(":")
                return int(partition), int(offset)
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def _too_large(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
    return (
        isinstance(cause, MessageSizeTooLargeError | RecordTooLargeError) or "too large" in str(exc).lower()
    )


def forwarded_groups(messages: Sequence) -> list[tuple[str, list[SourceRecord]]]:
    """Messages of the ``.by-entity`` topic as records per dedupe slot, in order of first appearance.

    A forwarded event's offset is its origin offset, deduplicated in its origin partition's slot, so
    a forward repeated after a crash is skipped. A record without the header (produced there by
    hand) keeps its own offset, in a slot of its own partition.
    """
    groups: dict[str, list[SourceRecord]] = {}
    for m in messages:
        origin = origin_of(m)
        if origin is None:
            record = SourceRecord(m.partition, m.offset, m.key, m.value)
            slot = by_entity_slot(m.partition)
        else:
            record = SourceRecord(m.partition, origin[1], m.key, m.value, origin_partition=origin[0])
            slot = forwarded_slot(origin[0])
        groups.setdefault(slot, []).append(record)
    return list(groups.items())


class FeatureSetAgent:
    """Wires one FeatureSet's processor to its Faust topics (source and .by-entity), table and side topics."""

    def __init__(
        self,
        app,
        feature_set: FeatureSet,
        topics: SetTopics,
        table,
        metrics: WorkerMetrics,
        max_future: str,
        batch_max: int = DEFAULT_BATCH_MAX,
    ):
        self.app = app
        self.feature_set = feature_set
        self.table = table
        self.topics = topics
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.dlq_topic = app.topic(topics.dlq, **raw)
        self.late_topic = app.topic(topics.late, **raw)
        self.forward_topic = app.topic(topics.repartition, **raw)
        self.metrics = metrics
        self.batch_max = batch_max
        self.source_name = topics.source
        self.writer = TableWriter(app, table)
        self.processor = BatchProcessor(
            feature_set, self.source_name, max_future, partitions=topics.partitions
        )
        metrics.touch(feature_set.name)
        # One declared agent on both topics: Faust subscribes them and assigns their partitions with the
        # table's. CrashingSupervisor: an error that escapes stops the worker instead of restarting it.
        channel = app.topic(topics.source, topics.repartition, **raw)
        self.agent = app.agent(
            channel, name=f"featurestream.{feature_set.name}", supervisor_strategy=CrashingSupervisor
        )(self.run)
        batch_drain.register(app, topics.source, self.handle_messages)
        batch_drain.register(app, topics.repartition, self.handle_forwarded)

    async def run(self, stream) -> None:
        """The declared agent: never fed (batch_drain takes the topics' messages first)."""
        async for _ in stream:
            raise RuntimeError(
                f"a message of {self.source_name} reached the Faust stream instead of the batch handler: "
                "stopping rather than acking it unprocessed"
            )

    async def handle_messages(self, messages: Sequence) -> None:
        """One fetch's messages of the source topic: processed in batches of at most ``batch_max``, acked."""
        for start in range(0, len(messages), self.batch_max):
            chunk = messages[start : start + self.batch_max]
            try:
                await self.handle(chunk, chunk)
            except BaseException:
                batch_drain.untrack(self.app.consumer, messages[start:])
                raise
            self._ack(chunk)

    async def handle_forwarded(self, messages: Sequence) -> None:
        """One fetch's messages of the .by-entity topic, processed per origin slot, then acked."""
        try:
            for slot, records in forwarded_groups(messages):
                for start in range(0, len(records), self.batch_max):
                    await self.handle(records[start : start + self.batch_max], messages, slot=slot)
        except BaseException:
            batch_drain.untrack(self.app.consumer, messages)
            raise
        self._ack(messages)

    async def _send(
        self, topic, e: Envelope, partition: int | None = None, origin: tuple[int, int] | None = None
    ):
        """Hand one side record to the producer: (future or the send error, topic, envelope, origin).

        aiokafka's producer directly (as TableWriter does): Faust's per-record wrapper made a batch of
        mostly late events several times slower than one of applied events."""
        headers = [origin_header(*origin)] if origin else None
        send = self.app.producer._ensure_producer().send
        try:
            future = await send(topic.get_topic_name(), e.value, key=e.key, partition=partition, headers=headers)
            return future, topic, e, origin
        except KafkaError as exc:  # refused before sending (e.g. larger than max_request_size)
            return exc, topic, e, origin

    async def _delivered(self, sent) -> None:
        """Wait for a side record; one too large to publish is dead-lettered without its payload."""
        future, topic, e, origin = sent
        try:
            if isinstance(future, BaseException):
                raise future
            await future
        except (ProducerSendError, KafkaError) as exc:
            if not _too_large(exc):
                raise
            why = f"too large for {topic.get_topic_name()} ({type(exc.__cause__ or exc).__name__})"
            if origin is None:  # a dead letter or late event: its envelope, minus the payload
                value = without_payload(e.value, why)
            else:  # a forwarded event: a dead letter that points at the source record
                value = without_payload(
                    envelope("cannot forward to the entity's partition", self.source_name, *origin, e.value),
                    why,
                )
            log.error("%s: %s", self.feature_set.name, why)
            await (await self.dlq_topic.send(key=e.key, value=value))

    def _ack(self, messages: Sequence) -> None:
        ack = self.app.consumer.ack
        for message in messages:
            ack(message)

    async def handle(
        self, records: Sequence, messages: Sequence = (), slot: str | None = None
    ) -> BatchResult:
        """Process one batch end to end (acking is the caller's); ``messages`` give the broker times."""
        started = time.perf_counter()
        store = self.table.data

        def load(partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
            # One multi-get in the partition's database (what table.get would reach key by key).
            return store._db_for_partition(partition).get(list(keys))

        result = self.processor.process(records, int(time.time() * 1000), load, slot)
        # Dead letters, late and forwarded events are produced with the table writes and delivered
        # before the batch is acked: a crash after the ack cannot lose them.
        side = [await self._send(self.dlq_topic, e) for e in result.dead]
        side += [await self._send(self.late_topic, e) for e in result.late]
        partitions = self.topics.partitions
        for e, (partition, offset) in zip(result.forward, result.forward_origins, strict=True):
            target = entity_partition(e.key, partitions)
            side.append(await self._send(self.forward_topic, e, partition=target, origin=(partition, offset)))
        await self.writer.write(result.writes)
        for sent in side:
            await self._delivered(sent)
        if result.dead:
            log.warning(
                "%s: %d event(s) dead-lettered to %s",
                self.feature_set.name,
                len(result.dead),
                self.dlq_topic.get_topic_name(),
            )
        if slot is not None:
            result.consumed = 0  # counted when they were consumed from the source topic
        newest_broker_ts = newest_broker_ms(messages)
        self.metrics.observe(self.feature_set.name, result, time.perf_counter() - started, newest_broker_ts)
        return result
