"""The transaction's ports on the real runtime: Faust's consumer and generation, aiokafka's producer, the
table's RocksDB databases (rocksdict). Thin on purpose: the order of things is ``transaction``'s.

* ``GenerationFence``: a batch may start while flow is on and its generation is current; a prepared
  batch may be stored while the group coordinator's live generation is still the batch's.
* ``KafkaChangelog``: aiokafka's producer directly (Faust's wrapper adds a sensor callback per record);
  all of a batch's records are handed over before any is awaited.
* ``TableStore``: one multi-get per partition of what the table's ``StateCache`` does not hold; RocksDB
  WriteBatches of ``STORE_CHUNK`` blobs, the last also holding the highest changelog offset they reach
  (Faust's persisted offset, where recovery resumes), each followed by the cache's update.
* ``ConsumerSource``: acks through Faust's consumer; releases by untracking the messages and forgetting
  their partitions' read offsets, so the messages fetched again after the seek are delivered.
* ``KafkaSideOutputs``: dead letters, late events and forwards; one too large for its topic becomes a
  dead letter without its payload that points at the source record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import rocksdict
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.exceptions import ProducerSendError

from .envelope import Envelope, envelope, without_payload
from .forwarding import origin_header
from .partitioning import entity_partition
from .processor import BatchResult
from .state_cache import StateCache

log = logging.getLogger(__name__)

#: Changelog records appended between two turns of the event loop.
YIELD_EVERY = 500
#: Records per RocksDB write batch of a store write: rocksdict keeps the interpreter lock through a write (0.05 to
#: 0.3 ms for this many state blobs of 0.5 to 5 KB), and the web server's thread waits for it.
STORE_CHUNK = 64


def live_generation(app) -> int | None:
    """The group coordinator's current generation (-1 once expelled), or None if not known."""
    try:
        return app.consumer._thread._ensure_consumer()._coordinator.generation
    except Exception:  # not started, or another transport: fall back to Faust's copy
        return None


class GenerationFence:
    """The fence of ``transaction.Fence`` on a Faust app."""

    def __init__(self, app):
        self.app = app

    def may_start(self, token: int) -> bool:
        return self.app.flow_control.is_active() and self.app.consumer_generation_id == token

    def owns(self, token: int) -> bool:
        live = live_generation(self.app)
        return self.app.consumer_generation_id == token and (live is None or live == token)


class KafkaChangelog:
    """Produces records to one table's changelog topic (partition = the source partition), as record batches
    built in place (aiokafka's ``create_batch``/``send_batch``): no per-record coroutine or future."""

    def __init__(self, app, topic: str):
        self.app = app
        self.topic = topic

    async def send_batch(self, records: Sequence[tuple[bytes, bytes]], partition: int) -> Awaitable[int]:
        producer = self.app.producer._ensure_producer()
        sent = []  # (future of a batch, its record count)
        batch = producer.create_batch()
        for n, (key, value) in enumerate(records, 1):
            if not n % YIELD_EVERY:
                await asyncio.sleep(0)  # let the event loop answer reads while a large batch is built
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                if batch.record_count():
                    sent.append((await producer.send_batch(batch, self.topic, partition=partition), batch.record_count()))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # larger than a batch: alone
                    sent.append((await producer.send(self.topic, value, key=key, partition=partition), 0))
                    batch = producer.create_batch()
        if batch.record_count():
            sent.append((await producer.send_batch(batch, self.topic, partition=partition), batch.record_count()))
        return _last_offset(sent)


async def _last_offset(sent) -> int:
    """The offset of the last record of the batches (raises if the broker refused any)."""
    last = -1
    for future, count in sent:
        metadata = await future
        last = max(last, metadata.offset + max(count - 1, 0))
    return last


class TableStore:
    """A Faust table's RocksDB store, per partition (keys and values are raw bytes), read through the
    table's ``StateCache``."""

    def __init__(self, table):
        self.table = table
        self.cache = StateCache.of(table)

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def load(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.cache.get_many(partition, keys)

    def write(self, partition: int, items: Sequence[tuple[bytes, bytes]], changelog_offset: int) -> None:
        """``items`` and the changelog offset they reach, in RocksDB write batches of at most ``STORE_CHUNK``
        records, the offset in the last. All in one call, with no turn of the event loop between two batches:
        the chunks only let another thread (the web server's) take the interpreter lock in between. A crash
        between two leaves records past the persisted offset that the changelog holds, which recovery
        writes again, so the store is still never ahead of its changelog."""
        db = self._db(partition)
        cache = self.cache
        last = max(len(items) - 1, 0) // STORE_CHUNK * STORE_CHUNK
        for start in range(0, last + 1, STORE_CHUNK):
            chunk = items[start : start + STORE_CHUNK]
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in chunk:
                batch.put(key, value)
            if start == last:
                batch.put(self.table.data.offset_key, str(int(changelog_offset)).encode())
            db.write(batch)
            cache.stored(partition, chunk)


class ConsumerSource:
    """Acks and releases Faust messages of the app's consumer."""

    def __init__(self, app):
        self.app = app

    def ack(self, messages: Sequence) -> None:
        ack = self.app.consumer.ack
        for message in messages:
            ack(message)

    def release(self, messages: Sequence) -> None:
        release(self.app.consumer, messages)

    async def rewind(self, topic: str, partition: int, offset: int) -> None:
        """Fetch ``topic``'s ``partition`` again from ``offset`` (Faust's seek also resets its read offset)."""
        from faust.types import TP

        await self.app.consumer.seek(TP(topic, partition), offset)


def release(consumer, messages: Sequence) -> None:
    """Forget messages that will not be acked: untracked (Faust's ``wait_empty`` no longer waits for
    them) and their partitions' read offsets dropped, so the messages fetched again after the rebalance's
    seek to the committed offsets are delivered, not taken for repeats."""
    for message in messages:
        consumer._unacked_messages.discard(message)
        message.tracked = False
    for tp in {m.tp for m in messages if getattr(m, "tp", None) is not None}:
        consumer._read_offset[tp] = None


def _too_large(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
    return (
        isinstance(cause, MessageSizeTooLargeError | RecordTooLargeError) or "too large" in str(exc).lower()
    )


class KafkaSideOutputs:
    """Publishes a batch's dead letters (``dlq``), late events (``late``) and forwards (``forward``, keyed
    by entity, to the entity's partition, with the origin header)."""

    def __init__(self, app, source_topic: str, dlq: str, late: str, forward: str, partitions: int):
        self.app = app
        self.source_topic = source_topic
        self.dlq, self.late, self.forward = dlq, late, forward
        self.partitions = partitions

    async def _send(self, topic: str, e: Envelope, partition=None, origin=None):
        headers = [origin_header(*origin)] if origin else None
        send = self.app.producer._ensure_producer().send
        try:
            return await send(topic, e.value, key=e.key, partition=partition, headers=headers), topic, e, origin
        except KafkaError as exc:  # refused before sending (e.g. larger than max_request_size)
            return exc, topic, e, origin

    async def send(self, result: BatchResult) -> Awaitable[None]:
        sent = [await self._send(self.dlq, e) for e in result.dead]
        sent += [await self._send(self.late, e) for e in result.late]
        for e, origin in zip(result.forward, result.forward_origins, strict=True):
            sent.append(await self._send(self.forward, e, entity_partition(e.key, self.partitions), origin))
        return self._confirm(sent)

    async def _confirm(self, sent) -> None:
        for item in sent:
            await self._delivered(item)

    async def _delivered(self, sent) -> None:
        """Wait for one side record; one too large to publish is dead-lettered without its payload."""
        future, topic, e, origin = sent
        try:
            if isinstance(future, BaseException):
                raise future
            await future
        except (ProducerSendError, KafkaError) as exc:
            if not _too_large(exc):
                raise
            why = f"too large for {topic} ({type(exc.__cause__ or exc).__name__})"
            if origin is None:  # a dead letter or late event: its envelope, minus the payload
                value = without_payload(e.value, why)
            else:  # a forwarded event: a dead letter that points at the source record
                value = without_payload(
                    envelope("cannot forward to the entity's partition", self.source_topic, *origin, e.value), why
                )
            log.error("%s: %s", self.source_topic, why)
            send = self.app.producer._ensure_producer().send
            await (await send(self.dlq, value, key=e.key))
