"""Batched delivery of source-topic messages, in place of Faust's one-message-at-a-time consumer loop.

Faust's consumer loop (``Consumer._drain_messages``) awaits each fetched message in its own pair of
asyncio tasks (``wait_first``), then passes it through a channel queue and a Stream as an Event: about
110 µs per message here, which capped a worker near 9,000 events/s before any work was done. This
module installs a loop that, for the topics registered with ``register``, collects each fetch's
messages and hands them to a batch handler in one call; messages of other topics still go Faust's
way. Faust keeps everything else: group membership, partition assignment, table recovery,
changelogs, standbys, offset commits.

The contract with Faust's acking: a collected message is tracked (pending ack) when collected, and
its transaction (``stream.transaction``) acks it once its effects are durable, or releases it (Faust
commits only acked offsets). Messages fetched in an older consumer generation (each records its own),
or all of a fetch while flow control is off (a rebalance is under way), are released unprocessed,
their partitions' read offsets forgotten (else the messages fetched again would look delivered
already): the rebalance seeks the partitions back to their committed offsets and whoever owns them
gets those messages again; checkpoints and per-entity applied offsets make any repeat a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .ports import release

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]

_HANDLERS_ATTR = "_featurestream_batch_handlers"
_INSTALLED = False


def register(app, topic: str, handler: BatchHandler) -> None:
    """Deliver ``topic``'s messages of ``app`` to ``handler`` in batches (Faust Message objects)."""
    install()
    handlers = getattr(app, _HANDLERS_ATTR, None)
    if handlers is None:
        handlers = {}
        setattr(app, _HANDLERS_ATTR, handlers)
    handlers[topic] = handler


def handlers_of(app) -> dict[str, BatchHandler]:
    return getattr(app, _HANDLERS_ATTR, None) or {}


def install() -> None:
    """Replace ``Consumer._drain_messages`` of Faust's aiokafka driver (idempotent, process-wide)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.transport.drivers.aiokafka import Consumer

    Consumer._drain_messages = _drain_messages
    _INSTALLED = True


def _drop_stale(consumer, app, topic: str, messages: list) -> list:
    """The messages of a fetch still to process: none while a rebalance is under way, else those fetched
    in the current consumer generation (each message records its own; a fetch can straddle a rebalance).

    Dropped messages are untracked and their partitions' read offsets forgotten: the rebalance seeks the
    partitions back to their committed offsets, and the messages fetched again must not look delivered.
    """
    if app.flow_control.is_active():
        current = app.consumer_generation_id
        stale = [m for m in messages if m.generation_id != current]
    else:
        stale = messages
    if not stale:
        return messages
    log.info("rebalance: %d fetched message(s) of %s left for their owner", len(stale), topic)
    release(consumer, stale)
    if len(stale) == len(messages):
        return []
    keep = {id(m) for m in stale}
    return [m for m in messages if id(m) not in keep]


def mark_inbound(app, batches: dict[str, list]) -> None:
    """Tell Faust's monitor that these partitions' events reached processing (what a Faust Stream records
    per event): its live-lock check otherwise logs "Stream has not started processing" for every source
    partition of a healthy worker once ``stream_processing_timeout`` has passed."""
    inbound = getattr(getattr(app, "monitor", None), "stream_inbound_time", None)
    if inbound is None:
        return
    now = time.monotonic()
    for messages in batches.values():
        for tp in {m.tp for m in messages}:
            inbound[tp] = now


async def deliver(consumer, app, batches: dict[str, list], handlers: dict[str, BatchHandler]) -> None:
    """Hand each topic's batch of one fetch to its handler, stale messages dropped first. On cancellation
    (the worker stops) or an error, the batches not handed over yet are released: fetched again later."""
    pending = list(batches.items())
    try:
        while pending:
            topic, messages = pending.pop(0)
            messages = _drop_stale(consumer, app, topic, messages)
            if messages:
                await app.producer.buffer.wait_until_ebb()
                await handlers[topic](messages)
    except BaseException:
        for _, messages in pending:
            release(consumer, messages)
        raise


async def _drain_messages(self, fetcher) -> None:
    """Faust 0.15.3's loop, except that registered topics' messages are delivered per fetch, batched."""
    from faust.transport.consumer import CONSUMER_FETCHING

    app = self.app
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = app.topics.acks_enabled_for
    # Consumer.track_message minus its sensor callbacks (Faust's monitor, unused here): pending ack.
    add_unacked = self._unacked_messages.add
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            handlers = handlers_of(app)
            set_flag(CONSUMER_FETCHING)
            batches: dict[str, list] = {}
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                redelivered: dict = {}
                async for tp, message in ait:
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset and tp.topic in handlers:
                        # Fetched again after a seek. Faust would skip it as delivered; but a message
                        # delivered before the seek may not have been applied (its batch abandoned), so it
                        # goes to its transaction, which skips what its checkpoint says is done.
                        redelivered[tp] = redelivered.get(tp, 0) + 1
                    elif not (r_offset is None or offset >= r_offset):
                        continue  # Faust's own topics: fetched again after a seek, already delivered
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    batch = batches.get(tp.topic) if handlers else None
                    if batch is None and tp.topic in handlers:
                        batch = batches[tp.topic] = []
                    if batch is not None:
                        message.tracked = True
                        add_unacked(message)
                        batch.append(message)
                    else:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
                mark_inbound(app, batches)
                for tp, n in redelivered.items():
                    log.info("%d message(s) of %s redelivered below its read offset after a seek", n, tp)
            try:
                await deliver(self, app, batches, handlers)
            except Exception as exc:
                # The state store or producer failed: stop the worker rather than fetch past unacked
                # events; a restart replays them, deduplicated by the checkpoints and applied offsets.
                log.critical("processing a batch failed: stopping the worker", exc_info=True)
                await app.crash(exc)
                raise
            await sleep(0)
    except self.consumer_stopped_errors:
        if app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)
