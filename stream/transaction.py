"""The partition transaction: one batch of fetched messages taken to durable, acknowledged online state.

Every batch the worker applies goes through ``PartitionTransaction.run``, the one place that orders the
steps which make online state effectively once. Each step, and what a crash or a rebalance there leaves:

1. **started**: the fence holds (the messages belong to the current consumer generation and no
   rebalance is under way), else the batch is *abandoned* with nothing written: the messages are
   released (never acked) and their partitions replay from the committed offsets. A batch that begins
   past its partition's checkpoint (records in between never reached this state: messages fetched
   before a seek and delivered after it) is abandoned too, with the gap, for the caller to rewind.
2. **processed** (pure, ``BatchProcessor``; the worker runs it on a thread of its own so that reads are
   answered meanwhile): records below their partition's checkpoint were handled before a crash: their
   side records (dead letters, late events, forwards) are not produced again, and each entity's applied
   offsets decide whether their events are still missing from its state (a state record written from an
   older state can follow a checkpoint in the changelog: a late write of an expelled owner, then a crash
   of the new owner between its state and its checkpoint); the rest become state writes, dead letters,
   late events and forwards. The fence is checked again; a rebalance begun meanwhile abandons the batch, nothing written.
3. **prepared**: state writes and side records (dead letters, late events, forwards) are produced;
   once the side records are acknowledged, each touched partition's checkpoint is produced after its
   state writes, and every changelog record is acknowledged. A crash here leaves some records in the
   changelog and nothing acked at the source: the replay skips whatever reached the changelog (table
   recovery restores it; per-entity applied offsets and the checkpoint say so) and applies the rest.
   A checkpoint is written only after its side records are durable, so skipping never loses one.
4. **stored**: if the consumer generation is still the batch's, the local store gets the same records,
   with the partition's highest changelog offset, in one atomic write per partition. A rebalance under
   way waits for this batch (Faust's ``wait_empty`` waits for its tracked messages), so it completes. If
   the group moved on without this worker (it was expelled), nothing more is done: the changelog holds
   the records and whoever owns the partitions now replays them, deduplicated.
5. **complete**: the source messages are acked; Faust commits acked offsets, and the broker refuses a
   commit from an older generation.

Any exception makes the batch **failed**: its messages are released and the error propagates (the
worker stops rather than fetch past unacked messages; a restart replays them). The module knows Kafka,
Faust and RocksDB only through the small ports below, so every step is unit-tested with in-memory fakes.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from aggregations.bookkeeping import CHECKPOINT_KEY, Checkpoint

from .forwarding import forwarded_groups
from .processor import BatchProcessor, BatchResult, StateWrite
from .trace import TRACE

log = logging.getLogger(__name__)


class TxState(enum.Enum):
    STARTED = "started"
    PROCESSED = "processed"
    PREPARED = "prepared"
    STORED = "stored"
    COMPLETE = "complete"
    ABANDONED = "abandoned"
    FAILED = "failed"


class BatchKind(enum.Enum):
    SOURCE = "source"  # messages of the source topic
    FORWARDED = "forwarded"  # messages of <topic>.by-entity


class Fence(Protocol):
    """Whether this worker may still act on messages fetched in consumer generation ``token``."""

    def may_start(self, token: int) -> bool:
        """Start (or keep preparing) a batch: same generation, and no rebalance under way."""

    def owns(self, token: int) -> bool:
        """Store and ack a prepared batch: the group has not moved past the generation."""


class Changelog(Protocol):
    """Produces table records; ``send_batch`` hands over records of one partition, in order, and returns an
    awaitable of the last one's offset (it fails if any record was refused)."""

    async def send_batch(self, records: Sequence[tuple[bytes, bytes]], partition: int) -> Awaitable[int]: ...


class SideOutputs(Protocol):
    """Dead letters, late events and forwards of a batch: ``send`` hands them all over and returns an
    awaitable that completes once every one is acknowledged."""

    async def send(self, result: BatchResult) -> Awaitable[None]: ...


class Store(Protocol):
    """The local tile store, per source partition."""

    def load(self, partition: int, keys: Sequence[bytes]) -> Sequence[bytes | None]: ...

    def write(self, partition: int, items: Sequence[tuple[bytes, bytes]], changelog_offset: int) -> None:
        """Write ``items`` and the changelog offset they reach, atomically."""


class Source(Protocol):
    """The fetched messages' consumer: ``ack`` lets their offsets be committed; ``release`` forgets them
    so that they are fetched again from the committed offset (never committed past)."""

    def ack(self, messages: Sequence) -> None: ...

    def release(self, messages: Sequence) -> None: ...


@dataclass
class Ports:
    fence: Fence
    changelog: Changelog
    side: SideOutputs
    store: Store
    source: Source


@dataclass
class TxOutcome:
    """What a transaction did: its final state, the processed result, and how many messages it skipped
    as already handled (below their partition's checkpoint). ``gaps``: partitions whose batch began past
    their checkpoint, {partition: (checkpoint position, first offset)}: the batch was abandoned so that
    the caller rewinds them."""

    state: TxState
    result: BatchResult = field(default_factory=BatchResult)
    skipped: int = 0
    reason: str = ""
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)


#: A batch may begin this many offsets past its partition's checkpoint without being a gap: transaction
#: markers of transactional producers take offsets that are never delivered.
GAP_TOLERANCE = 2


class PartitionTransaction:
    """One batch of one feature set: ``run`` takes it through the steps of the module docstring."""

    def __init__(
        self,
        processor: BatchProcessor,
        kind: BatchKind,
        messages: Sequence,
        token: int,
        ports: Ports,
        now_ms: Callable[[], int],
        on_step: Callable[[TxState], Any] | None = None,
        accept_gaps: Mapping[int, int] | None = None,
        executor: Executor | None = None,
    ):
        """``accept_gaps``: {partition: first offset} of gaps already found to be real (the offsets do not
        exist in the topic any more: retention, compaction), so a batch starting there proceeds.
        ``executor``: where the pure processing step runs (None: inline, as the worker runs it: its reads are
        served on another thread). The worker-life simulation folds on a thread to strike while it folds."""
        self.processor = processor
        self.executor = executor
        self.accept_gaps = dict(accept_gaps or {})
        self.kind = kind
        self.messages = list(messages)
        self.token = token
        self.ports = ports
        self.now_ms = now_ms
        self.state = TxState.STARTED
        self._on_step = on_step
        self._before: dict[int, int] = {}  # each partition's checkpoint position when the batch began (trace)

    def _step(self, state: TxState) -> None:
        self.state = state
        if self._on_step is not None:
            self._on_step(state)

    def _abandon(self, reason: str, result: BatchResult | None = None) -> TxOutcome:
        self.ports.source.release(self.messages)
        self._step(TxState.ABANDONED)
        log.info("batch of %d message(s) abandoned: %s", len(self.messages), reason)
        return TxOutcome(TxState.ABANDONED, result or BatchResult(), reason=reason)

    async def run(self) -> TxOutcome:
        self._unawaited: list = []
        try:
            outcome = await self._run()
            if TRACE:
                self._trace(outcome)
            return outcome
        except BaseException:
            for pending in self._unawaited:  # acknowledgements nobody will wait for now
                if inspect.iscoroutine(pending):
                    pending.close()
            if self.state not in (TxState.COMPLETE, TxState.ABANDONED):
                self.ports.source.release(self.messages)
                self._step(TxState.FAILED)
            raise

    async def _run(self) -> TxOutcome:
        ports = self.ports
        if not ports.fence.may_start(self.token):
            return self._abandon("a rebalance began before the batch started")
        checkpoints, present = self._checkpoints()
        if TRACE:
            self._before = {p: self._position(c) for p, c in checkpoints.items()}
        gaps = self._gaps(checkpoints, present)
        if gaps:
            outcome = self._abandon(f"the batch begins past its checkpoint {gaps}")
            outcome.gaps = gaps
            return outcome
        fresh = [m for m in self.messages if m.offset >= self._position(checkpoints[m.partition])]
        replayed = [m for m in self.messages if m.offset < self._position(checkpoints[m.partition])]
        skipped = len(replayed)
        if self.executor is None:
            result, writes = self._process(fresh, replayed)
        else:
            result, writes = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._process, fresh, replayed
            )
        for m in self.messages:
            self._advance(checkpoints[m.partition], m.offset + 1)
        self._step(TxState.PROCESSED)
        if not ports.fence.may_start(self.token):
            return self._abandon("a rebalance began while the batch was processed", result)

        items: dict[int, list[tuple[bytes, bytes]]] = {}
        for w in writes:
            items.setdefault(w.partition, []).append((w.key, w.value))
        state_acks = []
        for partition, batch in sorted(items.items()):
            ack = await ports.changelog.send_batch(batch, partition)
            self._unawaited.append(ack)
            state_acks.append((partition, ack))
        side_acks = await ports.side.send(result)
        self._unawaited.append(side_acks)
        await side_acks  # side records durable before any checkpoint that covers them
        check_acks = []
        for partition, checkpoint in sorted(checkpoints.items()):
            ack = await ports.changelog.send_batch([(CHECKPOINT_KEY, checkpoint.encode())], partition)
            self._unawaited.append(ack)
            check_acks.append((partition, ack))
        top: dict[int, int] = {}
        for partition, ack in state_acks + check_acks:
            top[partition] = max(top.get(partition, -1), await ack)
        self._step(TxState.PREPARED)

        if not ports.fence.owns(self.token):
            return self._abandon("the group moved on while the changelog was written", result)
        for partition, checkpoint in checkpoints.items():
            items.setdefault(partition, []).append((CHECKPOINT_KEY, checkpoint.encode()))
        for partition, batch in sorted(items.items()):
            ports.store.write(partition, batch, top[partition])
        self._step(TxState.STORED)
        ports.source.ack(self.messages)
        self._step(TxState.COMPLETE)
        return TxOutcome(TxState.COMPLETE, result, skipped)

    def _trace(self, outcome: TxOutcome) -> None:
        spans: dict[int, list[int]] = {}
        for m in self.messages:
            span = spans.setdefault(m.partition, [m.offset, m.offset, 0])
            span[0], span[1], span[2] = min(span[0], m.offset), max(span[1], m.offset), span[2] + 1
        log.info(
            "trace tx %s gen %s %s: %s skipped %d applied %d%s", self.kind.value, self.token, outcome.state.value,
            " ".join(f"p{p}[{a}..{b} n{n} cp{self._before.get(p)}]" for p, (a, b, n) in sorted(spans.items())), outcome.skipped,
            outcome.result.applied, f" ({outcome.reason})" if outcome.reason else "",
        )  # fmt: skip

    def _checkpoints(self) -> tuple[dict[int, Checkpoint], set[int]]:
        """Each partition's checkpoint, and the partitions that have one (a state that never ran has none)."""
        partitions = sorted({m.partition for m in self.messages})
        blobs = {p: self.ports.store.load(p, [CHECKPOINT_KEY])[0] for p in partitions}
        return {p: Checkpoint.decode(b) for p, b in blobs.items()}, {p for p, b in blobs.items() if b}

    def _gaps(self, checkpoints: dict[int, Checkpoint], present: set[int]) -> dict[int, tuple[int, int]]:
        """Partitions whose messages begin past their checkpoint: records in between were never applied
        to this state. Messages delivered out of order after a seek are the known cause; a rewind to the
        checkpoint fetches what is missing."""
        first: dict[int, int] = {}
        for m in self.messages:
            first[m.partition] = min(first.get(m.partition, m.offset), m.offset)
        gaps = {}
        for p, offset in first.items():
            position = self._position(checkpoints[p])
            if p in present and offset > position + GAP_TOLERANCE and self.accept_gaps.get(p) != offset:
                gaps[p] = (position, offset)
        return gaps

    def _position(self, checkpoint: Checkpoint) -> int:
        return checkpoint.source if self.kind is BatchKind.SOURCE else checkpoint.by_entity

    def _advance(self, checkpoint: Checkpoint, next_offset: int) -> None:
        if self.kind is BatchKind.SOURCE:
            checkpoint.source = max(checkpoint.source, next_offset)
        else:
            checkpoint.by_entity = max(checkpoint.by_entity, next_offset)

    def _process(self, messages: Sequence, replayed: Sequence = ()) -> tuple[BatchResult, list[StateWrite]]:
        """The processor's result over every group of the batch, each group seeing the earlier ones' writes.

        ``replayed`` (below their checkpoint, handled before) go first; of them only the state writes of
        events their entities' applied offsets say are missing are kept, and they count as duplicates
        otherwise: their side records were produced before the checkpoint was."""
        if not messages and not replayed:
            return BatchResult(), []
        now = self.now_ms()
        overlay: dict[tuple[int, bytes], bytes] = {}
        store = self.ports.store

        def load(partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
            missing = [k for k in keys if (partition, k) not in overlay]
            loaded = dict(zip(missing, store.load(partition, missing), strict=True)) if missing else {}
            return [overlay.get((partition, k), loaded.get(k)) for k in keys]

        total, recovered = BatchResult(), 0
        for is_replay, batch in ((True, replayed), (False, messages)):
            if not batch:
                continue
            groups = [(None, batch)] if self.kind is BatchKind.SOURCE else list(forwarded_groups(batch))
            for slot, records in groups:
                part = self.processor.process(records, now, load, slot)
                for w in part.writes:
                    overlay[(w.partition, w.key)] = w.value
                part.writes = []
                if slot is not None:
                    part.consumed = 0  # counted when consumed from the source topic
                if is_replay:
                    recovered += part.applied
                else:
                    total.absorb(part)
        if replayed:
            total.applied += recovered
            total.duplicates += len(replayed) - recovered
            if self.kind is BatchKind.SOURCE:
                total.consumed += len(replayed)
        if recovered:
            log.warning(
                "%d event(s) below their partition's checkpoint were missing from their entities' state "
                "(a changelog record written from an older state): applied now", recovered,
            )  # fmt: skip
        writes = [StateWrite(p, k, v) for (p, k), v in overlay.items()]
        return total, writes
