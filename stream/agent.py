"""The Faust agent of one FeatureSet: source topic -> micro-batches -> tile table, dead letters, late events.

The agent takes records with ``stream.take_events`` (each event keeps its partition, offset and
broker timestamp), hands them to ``BatchProcessor`` (pure: validation, dedupe, late cut, kernel) and
writes the returned state blobs into the table, publishing dead letters and late events. Events are
acked only after the batch is written, so a crash redelivers them, and the per-entity applied
offsets make the redelivery a no-op (effectively once).

Faust ties table reads and writes to the *current event*: the RocksDB store picks the partition
database, and the changelog the partition, from it. ``take_events`` consumes in a background task,
so in the agent's own task there is no current event (faust-streaming issue #497: "Cannot modify
table key from outside of stream iteration"). We therefore set Faust's current-event context
variable explicitly, per source partition, to an event of that partition while reading and writing
that partition's keys: each key then lands in the store and changelog partition of its source
partition, exactly as a per-event agent would place it.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from faust.streams import _current_event
from mode import CrashingSupervisor

from aggregations.definitions import FeatureSet

from .metrics import WorkerMetrics
from .processor import BatchProcessor, BatchResult, SourceRecord

log = logging.getLogger(__name__)

DEFAULT_BATCH_MAX = 5000
DEFAULT_BATCH_WITHIN_S = 0.5


@contextmanager
def acting_as(event) -> Iterator[None]:
    """Make ``event`` Faust's current event in this task, so table access uses its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def source_records(events: Sequence) -> list[SourceRecord]:
    """Faust events -> plain records (raw key/value bytes, partition, offset, broker time in ms)."""
    out = []
    for event in events:
        m = event.message
        ts = m.timestamp
        out.append(SourceRecord(m.partition, m.offset, m.key, m.value, None if ts is None else int(ts * 1000)))
    return out


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
        batch_within_s: float = DEFAULT_BATCH_WITHIN_S,
    ):
        self.feature_set = feature_set
        self.table = table
        self.dlq_topic = dlq_topic
        self.late_topic = late_topic
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_within_s = batch_within_s
        self.processor = BatchProcessor(feature_set, source_topic.get_topic_name(), max_future)
        metrics.touch(feature_set.name)
        # CrashingSupervisor: an error that escapes (the state store failed) stops the worker instead of
        # silently restarting the actor past unacked events; a restart then replays them, deduplicated.
        self.agent = app.agent(
            source_topic, name=f"featurestream.{feature_set.name}", supervisor_strategy=CrashingSupervisor
        )(self.run)

    async def run(self, stream) -> None:
        async for events in stream.take_events(self.batch_max, self.batch_within_s):
            await self.handle(events)

    async def handle(self, events: Sequence) -> BatchResult:
        """Process one batch of Faust events end to end."""
        started = time.perf_counter()
        records = source_records(events)
        first_of_partition: dict[int, object] = {}
        for event in events:
            first_of_partition.setdefault(event.message.partition, event)
        table = self.table

        def load(partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
            with acting_as(first_of_partition[partition]):
                return [table.get(k) for k in keys]

        result = self.processor.process(records, int(time.time() * 1000), load)
        writes_by_partition: dict[int, list] = {}
        for write in result.writes:
            writes_by_partition.setdefault(write.partition, []).append(write)
        for partition, writes in writes_by_partition.items():
            with acting_as(first_of_partition[partition]):
                for write in writes:
                    table[write.key] = write.value
        for envelope in result.dead:
            await self.dlq_topic.send(key=envelope.key, value=envelope.value)
        for envelope in result.late:
            await self.late_topic.send(key=envelope.key, value=envelope.value)
        if result.dead:
            log.warning("%s: %d event(s) dead-lettered to %s", self.feature_set.name, len(result.dead),
                        self.dlq_topic.get_topic_name())
        newest_broker_ts = max((r.timestamp_ms for r in records if r.timestamp_ms is not None), default=None)
        self.metrics.observe(self.feature_set.name, result, time.perf_counter() - started, newest_broker_ts)
        return result
