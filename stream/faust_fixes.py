"""Fixes for faust-streaming 0.15.3 that the online path needs: never skip events, never stall.

1. Skipped events after a rebalance (below).
2. Stalled fetches: Faust creates its consumer with ``fetch_max_wait_ms=1500`` (hard-coded). The
   consumer is also assigned partitions that receive no data: Faust's ``<app>-__assignor-__leader``
   topic always, and the source topic of any idle feature set. aiokafka keeps one fetch in flight
   per broker and leaves out partitions whose records are still buffered; when the request holds
   only idle partitions, the broker parks it for the full 1.5 s and the busy partitions wait. We measured bursts of 1.6 s old events at a steady 1,000 events/s
   (freshness p99 2 s). The fix caps the wait at ``FETCH_MAX_WAIT_MS``; an idle worker then sends
   ~10 empty fetches a second.

Fix 1 in detail.

Bug (reproduced here with two workers starting 0-1 s apart on a fresh consumer group, 4 of 11
runs): after a rebalance, Faust's recovery resumes fetching *before* it seeks the assigned partitions
to their committed offsets (the ordering problem of faust-streaming issue #216). Messages fetched in
that window arrive while flow control is still off, so the stream skips them without processing. The
seek that should rewind the fetcher is ``aiokafka.AIOKafkaConsumer.seek_to_committed``, which only
seeks partitions whose committed offset is a positive number: a partition nobody has committed yet
(``None``) or committed at 0 is left where the early fetch put it. The worker then resumes *after*
the skipped messages and its next commit moves past them: in our runs ~13,000 events per moved
partition (one fetch) were never applied by any worker. The per-entity offset dedupe cannot help,
because those events are never delivered again.

Fix: seek such source partitions (not changelog partitions: table recovery positions those itself)
to the beginning of the log, which is what ``auto_offset_reset="earliest"``
(the worker's setting) means for a partition without a committed offset. Events that were in fact
applied already are then redelivered and skipped by the offset dedupe, so rewinding is always safe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

_APPLIED = False
FETCH_MAX_WAIT_MS = 100


def apply() -> None:
    """Install the fix (idempotent). Call before the app starts."""
    global _APPLIED
    if _APPLIED:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def seek_to_committed(self) -> Mapping:
        consumer = self._ensure_consumer()

        changelogs = self.app.tables.changelog_topics  # positioned by table recovery, never committed

        async def seek() -> Mapping:
            committed = await consumer.seek_to_committed()
            rewind = [
                tp
                for tp, offset in committed.items()
                if (offset is None or offset <= 0) and tp.topic not in changelogs
            ]
            if rewind:
                log.info("no committed offset for %s: seeking to the beginning", sorted(map(str, rewind)))
                await consumer.seek_to_beginning(*rewind)
            return committed

        return await self.call_thread(seek)

    seek_to_committed.__doc__ = "Seek partitions to the last committed offset, or the beginning if none."
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed

    create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = create_worker_consumer(self, transport)
        consumer._fetch_max_wait_ms = min(consumer._fetch_max_wait_ms, FETCH_MAX_WAIT_MS)  # read at start()
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    if os.environ.get("FEATURESTREAM_TRACE", "") not in ("", "0"):
        _trace_commits()
    _APPLIED = True


def _trace_commits() -> None:
    """Log every offset commit (``FEATURESTREAM_TRACE=1``; see ``stream.transaction.TRACE``)."""
    from faust.transport.consumer import Consumer

    commit_offsets = Consumer._commit_offsets

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        done = await commit_offsets(self, offsets, start_new_transaction)
        log.info(
            "trace commit %s: %s",
            done,
            " ".join(f"{tp.topic[-9:]}/{tp.partition}={o}" for tp, o in sorted(offsets.items())),
        )
        return done

    Consumer._commit_offsets = _commit_offsets
