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

import asyncio
import logging
import time
from collections.abc import Sequence

from mode import CrashingSupervisor

from aggregations.definitions import FeatureSet

from . import batch_drain
from .metrics import WorkerMetrics
from .processor import BatchProcessor, BatchResult
from .table_writer import TableWriter

log = logging.getLogger(__name__)

DEFAULT_BATCH_MAX = 5000


def newest_broker_ms(messages: Sequence) -> int | None:
    """The newest broker (or producer) timestamp of a batch of Faust messages, in ms."""
    newest = max((m.timestamp for m in messages if m.timestamp is not None), default=None)
    return None if newest is None else int(newest * 1000)


class FeatureSetAgent:
    """Wires one FeatureSet's processor to its Faust topic, table and side topics."""

    def __init__(
        self,
        app,
        feature_set: FeatureSet,
        source_topic,
        table,
        dlq_topic,
        late_topic,
        metrics: WorkerMetrics,
        max_future: str,
        batch_max: int = DEFAULT_BATCH_MAX,
    ):
        self.app = app
        self.feature_set = feature_set
        self.table = table
        self.dlq_topic = dlq_topic
        self.late_topic = late_topic
        self.metrics = metrics
        self.batch_max = batch_max
        self.source_name = source_topic.get_topic_name()
        self.writer = TableWriter(app, table)
        self.processor = BatchProcessor(feature_set, self.source_name, max_future)
        metrics.touch(feature_set.name)
        # CrashingSupervisor: an error that escapes stops the worker instead of restarting the actor.
        self.agent = app.agent(
            source_topic, name=f"featurestream.{feature_set.name}", supervisor_strategy=CrashingSupervisor
        )(self.run)
        batch_drain.register(app, self.source_name, self.handle_messages)

    async def run(self, stream) -> None:
        """The declared agent: never fed (batch_drain takes the topic's messages first)."""
        async for _ in stream:
            raise RuntimeError(
                f"a message of {self.source_name} reached the Faust stream instead of the batch handler: "
                "stopping rather than acking it unprocessed"
            )

    async def handle_messages(self, messages: Sequence) -> None:
        """One fetch's messages of the source topic: processed in batches of at most ``batch_max``, acked."""
        consumer = self.app.consumer
        for start in range(0, len(messages), self.batch_max):
            chunk = messages[start : start + self.batch_max]
            try:
                await self.handle(chunk)
            except BaseException:
                batch_drain.untrack(consumer, messages[start:])
                raise
            ack = consumer.ack
            for message in chunk:
                ack(message)

    async def handle(self, messages: Sequence) -> BatchResult:
        """Process one batch of Faust messages end to end (acking is the caller's)."""
        started = time.perf_counter()
        store = self.table.data

        def load(partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
            # One multi-get in the partition's database (what table.get would reach key by key).
            return store._db_for_partition(partition).get(list(keys))

        result = self.processor.process(messages, int(time.time() * 1000), load)
        # Dead letters and late events are produced with the table writes and delivered before the
        # batch is acked: a crash after the ack cannot lose them.
        side = [await self.dlq_topic.send(key=e.key, value=e.value) for e in result.dead]
        side += [await self.late_topic.send(key=e.key, value=e.value) for e in result.late]
        await self.writer.write(result.writes)
        if side:
            await asyncio.gather(*side)
        if result.dead:
            log.warning(
                "%s: %d event(s) dead-lettered to %s",
                self.feature_set.name,
                len(result.dead),
                self.dlq_topic.get_topic_name(),
            )
        newest_broker_ts = newest_broker_ms(messages)
        self.metrics.observe(self.feature_set.name, result, time.perf_counter() - started, newest_broker_ts)
        return result
