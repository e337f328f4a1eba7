"""One FeatureSet's ingest: fetched batches of its source and ``.by-entity`` topics, each taken through a
``PartitionTransaction`` (the one order of changelog, store, acks), with the Faust ports of ``ports``.

Messages of the source topic arrive in batches straight from the consumer's fetches (``batch_drain``),
not one by one through a Faust Stream. Each batch runs as its own task, shielded from cancellation:
when the worker stops (Faust stops the fetcher first) or a rebalance revokes partitions, the batch in
flight finishes (or abandons itself) and acks or releases its messages, and Faust's ``wait_empty`` waits
for exactly that before the consumer commits and leaves the group. So a departing owner's changelog
writes are all in before the partitions move.

The Faust agent on the source topic stays declared so that Faust subscribes the topic, assigns its
partitions together with the table's and waits for the agent at startup; it never receives a message
(they are taken before its channel) and stops the worker if one ever reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from mode import CrashingSupervisor

from aggregations.definitions import FeatureSet

from . import batch_drain
from .forwarding import ORIGIN_HEADER, forwarded_groups, origin_header, origin_of
from .metrics import WorkerMetrics
from .ports import ConsumerSource, GenerationFence, KafkaChangelog, KafkaSideOutputs, TableStore, release
from .processor import BatchProcessor, BatchResult
from .topics import SetTopics
from .transaction import BatchKind, PartitionTransaction, Ports, TxOutcome, TxState

log = logging.getLogger(__name__)

DEFAULT_BATCH_MAX = 5000
MAX_GAP_REWINDS = 3

__all__ = [
    "DEFAULT_BATCH_MAX",
    "ORIGIN_HEADER",
    "FeatureSetAgent",
    "forwarded_groups",
    "newest_broker_ms",
    "origin_header",
    "origin_of",
]


def newest_broker_ms(messages: Sequence) -> int | None:
    """The newest broker (or producer) timestamp of a batch of Faust messages, in ms."""
    newest = max((m.timestamp for m in messages if m.timestamp is not None), default=None)
    return None if newest is None else int(newest * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


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
        self.processor = BatchProcessor(feature_set, self.source_name, max_future, partitions=topics.partitions)
        self.ports = Ports(
            fence=GenerationFence(app),
            changelog=KafkaChangelog(app, table.changelog_topic.get_topic_name()),
            side=KafkaSideOutputs(
                app, topics.source, topics.dlq, topics.late, topics.repartition, topics.partitions
            ),
            store=TableStore(table),
            source=ConsumerSource(app),
        )
        self.in_flight: set[asyncio.Task] = set()
        # Batches are folded on the event loop itself (the transaction's default): reads are answered on the
        # web server's thread (``web_in_thread``), and a fold thread was a third thread contending for the
        # interpreter lock (ingest 13% slower with one, reads no faster).
        self.gap_rewinds: dict[tuple, int] = {}  # (kind, partition, checkpoint position) -> rewinds so far
        self.accepted_gaps: dict[tuple, int] = {}  # (kind, partition) -> first offset after a real gap
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
        """One fetch's messages of the source topic, in transactions of at most ``batch_max`` messages."""
        await self._chunks(BatchKind.SOURCE, messages)

    async def handle_forwarded(self, messages: Sequence) -> None:
        """One fetch's messages of the .by-entity topic, in transactions of at most ``batch_max`` messages."""
        await self._chunks(BatchKind.FORWARDED, messages)

    async def _chunks(self, kind: BatchKind, messages: Sequence) -> None:
        for start in range(0, len(messages), self.batch_max):
            chunk = messages[start : start + self.batch_max]
            try:
                outcome = await self.transact(kind, chunk)
            except BaseException:
                # Not started: fetched again from the committed offset. (The chunk in flight acks or
                # releases its own messages, even when this task is cancelled.)
                release(self.app.consumer, messages[start + self.batch_max :])
                raise
            if outcome.state is TxState.ABANDONED:
                release(self.app.consumer, messages[start + self.batch_max :])
                if outcome.gaps:
                    await self._rewind(kind, messages[start:], outcome.gaps)
                return

    async def _rewind(self, kind: BatchKind, unprocessed: Sequence, gaps: dict[int, tuple[int, int]]) -> None:
        """Fetch again what a gap left out: each gap partition from its checkpoint, every other partition
        of the unprocessed messages from its first one (they were released, not applied). A gap found
        again at the same place after ``MAX_GAP_REWINDS`` rewinds is real (the offsets are gone from the
        topic: retention, compaction): the next batch goes on from where the topic resumes."""
        topic = self.topics.source if kind is BatchKind.SOURCE else self.topics.repartition
        targets: dict[int, int] = {}
        for m in unprocessed:
            targets[m.partition] = min(targets.get(m.partition, m.offset), m.offset)
        for partition, (position, first) in sorted(gaps.items()):
            key = (kind, partition, position)
            self.gap_rewinds[key] = self.gap_rewinds.get(key, 0) + 1
            if self.gap_rewinds[key] > MAX_GAP_REWINDS:
                log.warning(
                    "%s: offsets %d..%d of %s[%d] are not in the topic (retention or compaction removed "
                    "them, or transaction markers): going on from %d",
                    self.feature_set.name, position, first - 1, topic, partition, first,
                )
                self.accepted_gaps[(kind, partition)] = first
                self.metrics.gaps.labels(self.feature_set.name, "accepted").inc()
                continue
            log.error(
                "%s: %s[%d] delivered offset %d while this state's checkpoint is at %d: rewinding to %d "
                "(attempt %d)", self.feature_set.name, topic, partition, first, position, position,
                self.gap_rewinds[key],
            )  # fmt: skip
            self.metrics.gaps.labels(self.feature_set.name, "rewound").inc()
            targets[partition] = position
        for partition, offset in sorted(targets.items()):
            await self.ports.source.rewind(topic, partition, offset)

    async def transact(self, kind: BatchKind, messages: Sequence) -> TxOutcome:
        """Run one transaction as a task of its own, shielded: cancelling the caller does not cut it short."""
        token = messages[0].generation_id if messages else self.app.consumer_generation_id
        accept = {p: first for (k, p), first in self.accepted_gaps.items() if k is kind}
        tx = PartitionTransaction(self.processor, kind, messages, token, self.ports, now_ms, accept_gaps=accept)
        started = time.perf_counter()
        task = asyncio.ensure_future(tx.run())
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        outcome = await asyncio.shield(task)
        if outcome.state is TxState.COMPLETE:  # an abandoned batch changed nothing: its owner redoes it
            self._observe(outcome.result, messages, time.perf_counter() - started)
        return outcome

    def _observe(self, result: BatchResult, messages: Sequence, seconds: float) -> None:
        if result.dead:
            log.warning(
                "%s: %d event(s) dead-lettered to %s", self.feature_set.name, len(result.dead), self.topics.dlq
            )
        self.metrics.observe(self.feature_set.name, result, seconds, newest_broker_ms(messages))
