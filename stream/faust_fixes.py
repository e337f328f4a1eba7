"""Fixes for faust-streaming 0.15.3 that the online path needs: never skip events, never stall.

1. Skipped events after a rebalance (below).
2. Stalled fetches: Faust creates its consumer with ``fetch_max_wait_ms=1500`` (hard-coded). The
   consumer is also assigned partitions that receive no data: Faust's ``<app>-__assignor-__leader``
   topic always, and the source topic of any idle feature set. aiokafka keeps one fetch in flight
   per broker and leaves out partitions whose records are still buffered; when the request holds
   only idle partitions, the broker parks it for the full 1.5 s and the busy partitions wait: bursts of
   1.6 s old events at a steady 1,000 events/s (freshness p99 2 s). The fix caps the wait at ``FETCH_MAX_WAIT_MS``; an idle worker then sends
   ~10 empty fetches a second.
3. Standby changelog records dropped after a rebalance (``keep_changelog_events``, below).
4. Changelog records fetched while flow is off, dropped for good (``reposition_changelogs``, below).
5. A worker whose broker is gone takes a minute to stop (``finish_fetcher_close``, below).

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

Fix 3 in detail.

Bug (found by ``tests/e2e/test_cluster.py``; its changelog audit shows it as records computed from an
older state): Faust queues the changelog records it fetches for table recovery in a queue that its flow
control *clears on every resume*, and its recovery resumes flow three times: to start active recovery, to
start the standby partitions (after seeking them to their local offsets), and once more when recovery
completes, after seeking the source partitions to their committed offsets (one request per partition,
50-100 ms). Standby records fetched in between are in the queue at that last resume and are dropped, though
they were fetched from the position this very recovery set and are never fetched again; the records that
follow are applied, so the local offset moves past the hole. A worker that later takes the partition over then starts from a
state that lacks those records (``Reading starts at`` equals the highwater, so nothing is re-read) and
builds on it: every event of its affected entities that only the lost records held is lost.

Fix: the changelog queue is cleared only when flow resumes after a real suspension (a rebalance or a
stop), which is when its contents are stale; a resume while flow is already on leaves it alone. Other
queues (Faust's streams) keep Faust's behaviour.

Fix 4 in detail.

Bug (found by the same test; the worker then waited forever for its table recovery, "No event received for
active tp"): when Faust's ``Consumer.getmany`` receives a fetch while flow is off, it drops every record of
it and "seeks back to committed offsets". Changelog partitions have no committed offset (table recovery
positions them itself), so nothing seeks them back: the records of that fetch are never delivered. If table
recovery had already positioned the partition (the fetch raced the resume of flow at the start of a
recovery), active recovery waits for them without end, and a standby goes on past a hole.

Fix: the seek to committed offsets also puts every changelog partition recovery is reading back to the first
record recovery has not received (its seen offset, or the newest record in its queue, plus one). Records in
between are fetched again; recovery skips any it has seen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .trace import TRACE

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
        expected = recovery_positions(self.app.tables, consumer.assignment())  # read on the event loop

        async def seek() -> Mapping:
            committed = await consumer.seek_to_committed()
            await reposition_changelogs(consumer, expected)
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
    _clear_queues_on_real_resume_only()
    finish_fetcher_close()
    if TRACE:
        _trace_commits()
    _APPLIED = True


def recovery_positions(tables, assignment) -> dict:
    """Fix 4: where each assigned changelog partition's next record for table recovery is, by what recovery
    has received (its seen offset, or the newest record still in its queue); partitions recovery has not
    positioned yet are left out."""
    recovery = tables.recovery
    queued: dict = {}
    for event in list(getattr(tables.changelog_queue, "_queue", ())):
        tp, offset = event.message.tp, event.message.offset
        queued[tp] = max(queued.get(tp, -1), offset)
    expected = {}
    for tp in assignment:
        if tp.topic not in tables.changelog_topics:
            continue
        if tp in recovery.active_tps:
            seen = recovery.active_offsets.get(tp)
        elif tp in recovery.standby_tps:
            seen = recovery.standby_offsets.get(tp)
        else:
            continue
        if seen is not None:
            expected[tp] = max(seen, queued.get(tp, -1)) + 1
    return expected


async def reposition_changelogs(consumer, expected: Mapping) -> None:
    """Fix 4: seek each changelog partition whose fetch position went past the records recovery received back
    to the first one it lacks (aiokafka's consumer, on its own thread)."""
    assigned = consumer.assignment()
    for tp, offset in expected.items():
        if tp not in assigned:
            continue
        position = await consumer.position(tp)
        if position is not None and position > offset:
            (log.info if TRACE else log.debug)(
                "%s: %d changelog record(s) past what table recovery has received (dropped by Faust, or on their "
                "way): fetching them again from offset %d", tp, position - offset, offset,
            )  # fmt: skip
            consumer.seek(tp, offset)


#: Attribute that marks a flow-controlled queue to keep its contents when flow resumes while already on.
KEEP_ON_RESUME_ATTR = "_featurestream_keep_on_redundant_resume"


def keep_changelog_events(app) -> None:
    """Fix 3 for ``app``: its table recovery queue survives a resume of flow that is already on."""
    setattr(app.tables.changelog_queue, KEEP_ON_RESUME_ATTR, True)


def _clear_queues_on_real_resume_only() -> None:
    from mode.utils.queues import FlowControlEvent

    def resume(self) -> None:
        was_suspended = self._suspend.is_set()
        self._suspend.clear()
        self._resume.set()
        for queue in list(self._queues):
            if was_suspended or not getattr(queue, KEEP_ON_RESUME_ATTR, False):
                queue.clear()
            elif TRACE and queue.qsize():
                log.info("trace flow resume: %d queued changelog record(s) kept", queue.qsize())

    resume.__doc__ = "Resume production into the managed queues, clearing them (fix 3: marked ones only if suspended)."
    FlowControlEvent.resume = resume


def _trace_commits() -> None:
    """Log every offset commit (``stream.trace``)."""
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


def finish_fetcher_close() -> None:
    """Fix 5 (idempotent; the replica's plain aiokafka consumer needs it too).

    aiokafka 0.14's ``Fetcher.close`` cancels its pending fetch tasks and awaits each, so one that was
    cancelled (a fetch retrying against a broker that is gone) raises ``CancelledError`` out of ``close``.
    The consumer's stop then fails, Faust's consumer thread dies without signalling that it stopped, and
    the worker waits 60 s for it before it exits. This ``close`` finishes the job instead: it cancels the
    pending tasks and waits for all of them, re-raising only a cancellation of the close itself."""
    import asyncio

    from aiokafka.consumer.fetcher import Fetcher

    close = Fetcher.close
    if hasattr(close, "__wrapped_close__"):
        return  # installed already

    async def finish_close(self) -> None:
        try:
            await close(self)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            pending = list(self._pending_tasks)
            for fetch in pending:
                fetch.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    finish_close.__doc__ = close.__doc__
    finish_close.__wrapped_close__ = close  # aiokafka's own, for the unit test that shows the bug
    Fetcher.close = finish_close
