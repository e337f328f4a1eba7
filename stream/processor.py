"""One micro-batch of source records -> new per-entity state blobs, dead letters and late events.

Pure of Faust and Kafka, so it is unit-tested without a broker: the agent hands in records
(partition, offset, key, value) and a ``StateLoader`` reading current blobs from the table, and
writes back what this returns. All aggregation math is the ``aggregations`` kernel's; this module
only decides *which* events reach it:

* undecodable / invalid events -> dead letters (never an exception);
* events in another partition than their entity's (``partitioning.entity_partition``), when the
  processor knows the partition count -> ``forward``: the agent sends them to ``<topic>.by-entity``
  keyed by entity, where they come back (with their origin) in the right partition;
* events already applied (``aggregations.bookkeeping``: the highest applied source offset per slot in
  the entity's state meta, and earlier copies in the same batch) -> skipped as duplicates. A replay after
  a crash (Kafka redelivers from the last committed offset) or a second copy of a forwarded event
  therefore never counts twice, and the entity's state is written again so that its changelog record
  is re-sent;
* events older than ``late_cutoff(plan, now)`` -> late (they can no longer change an online read);
* the rest -> ``build_levels`` -> ``merge_levels`` with the stored tiles -> ``expire`` -> encode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd

from aggregations.bookkeeping import (
    OFFSETS_META,
    applied_offsets,
    duplicate_mask,
    forwarded_slot,
    home_partitions,
    tie_seq,
    updated_offsets,
    with_offset,
)
from aggregations.codec import EntityStateCodec, StateMismatch
from aggregations.compute import apply_transforms, fold_into_state
from aggregations.definitions import FeatureSet
from aggregations.kernel import late_cutoff
from aggregations.schema import DEFAULT_MAX_FUTURE, EventValidator, entity_keys

from .envelope import Envelope, envelope

__all__ = [
    "OFFSETS",
    "BatchProcessor",
    "BatchResult",
    "SourceRecord",
    "StateWrite",
    "applied_offsets",
    "duplicate_mask",
    "forwarded_slot",
    "group_entities",
    "updated_offsets",
    "with_offset",
]

log = logging.getLogger(__name__)

#: Reads the current state blobs of ``keys`` in source partition ``partition`` (None = no state yet).
StateLoader = Callable[[int, Sequence[bytes]], Sequence[bytes | None]]

OFFSETS = OFFSETS_META  # state meta entry: {str(source partition): highest applied source offset}


class StateLoadError(RuntimeError):
    """Reading state failed: an infrastructure fault, not bad input. The worker must not go on."""


class SourceLike(Protocol):
    """What the processor reads of a source record: a Faust message as the worker passes it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class SourceRecord:
    """One Kafka record of the source topic, built by hand (tests, tools); a SourceLike.

    A forwarded event is a SourceRecord in its entity's home ``partition`` with its *origin* offset and
    ``origin_partition``: where it was in the source topic (dead letters and late events point there)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    origin_partition: int | None = None


def source_partition(record: SourceLike) -> int:
    """The source-topic partition a record came from (its origin, for a forwarded event)."""
    origin = getattr(record, "origin_partition", None)
    return record.partition if origin is None else origin


class StateWrite(NamedTuple):
    """New state of one entity: table key (entity key bytes) in its source partition."""

    partition: int
    key: bytes
    value: bytes


@dataclass
class BatchResult:
    """What the agent must write and publish for one batch, and what to count."""

    consumed: int = 0
    writes: list[StateWrite] = field(default_factory=list)
    dead: list[Envelope] = field(default_factory=list)
    late: list[Envelope] = field(default_factory=list)
    forward: list[Envelope] = field(default_factory=list)  # key = entity key, value = original bytes
    forward_origins: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) of each
    applied: int = 0
    duplicates: int = 0
    key_mismatches: int = 0  # events forwarded to their entity's partition
    max_event_ts: int | None = None

    @property
    def rejected(self) -> int:
        return len(self.dead)

    def absorb(self, other: BatchResult) -> None:
        """Add another (sub-)batch's outcome to this one."""
        self.consumed += other.consumed
        self.writes.extend(other.writes)
        self.dead.extend(other.dead)
        self.late.extend(other.late)
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.key_mismatches += other.key_mismatches
        self.forward.extend(other.forward)
        self.forward_origins.extend(other.forward_origins)
        if other.max_event_ts is not None:
            self.max_event_ts = max(self.max_event_ts or other.max_event_ts, other.max_event_ts)


@dataclass
class EntityGroups:
    """Rows of a batch grouped by (source partition, entity key): one code per entity."""

    codes: np.ndarray  # entity code of each row
    partitions: np.ndarray  # source partition of each entity
    keys: list[bytes]  # table key of each entity


def group_entities(keys: np.ndarray, partitions: np.ndarray) -> EntityGroups:
    """Factorize rows by entity key; an entity seen in two partitions gets one state per partition."""
    codes, uniques = pd.factorize(keys)
    codes = codes.astype(np.int64, copy=False)
    owner = np.empty(len(uniques), dtype=np.int64)
    owner[codes] = partitions
    if len(codes) and not np.array_equal(owner[codes], partitions):
        # Producers did not key by entity: keep per-partition state (reads will see only one of them).
        pairs = pd.MultiIndex.from_arrays([partitions, keys])
        codes, uniq = pd.factorize(pairs)
        codes = codes.astype(np.int64, copy=False)
        owner = np.asarray(uniq.get_level_values(0), dtype=np.int64)
        uniques = np.asarray(uniq.get_level_values(1), dtype=object)
    return EntityGroups(codes, owner, [str(k).encode() for k in uniques])


class BatchProcessor:
    """Turns batches of one FeatureSet's source records into state writes (see module docstring)."""

    def __init__(
        self,
        feature_set: FeatureSet,
        topic: str,
        max_future: str = DEFAULT_MAX_FUTURE,
        partitions: int | None = None,
    ):
        """``partitions``: the source topic's partition count, to forward misplaced events (None: never)."""
        self.partitions = partitions
        self.feature_set = feature_set
        self.plan = feature_set.plan
        self.topic = topic
        self.validator = EventValidator(feature_set, max_future)
        self.codec = EntityStateCodec(feature_set)

    def process(
        self, records: Sequence[SourceLike], now_ms: int, load: StateLoader, slot: str | None = None
    ) -> BatchResult:
        """Process a batch; an unexpected failure is isolated to the records that cause it.

        ``slot``: the records were forwarded from one source partition (``forwarded_slot``); their
        offsets are their origin offsets, deduplicated in that slot, and they are never forwarded again.

        Only ``StateLoadError`` (the store failed) escapes: bad input is dead-lettered instead.
        """
        try:
            return self._process(records, now_ms, _guarded(load), slot)
        except StateLoadError:
            raise
        except Exception as exc:
            if len(records) == 1:
                r = records[0]
                reason = f"processing failed: {type(exc).__name__}: {str(exc)[:200]}"
                log.warning("dead-lettering %s[%d]@%d: %s", self.topic, source_partition(r), r.offset, reason)
                return BatchResult(consumed=1, dead=[self._dead(r, reason)])
            log.warning("batch of %d failed (%r); retrying record by record", len(records), exc)
        # Record by record; later records must see earlier ones' new state, hence the overlay.
        result = BatchResult()
        overlay: dict[tuple[int, bytes], bytes] = {}

        def load_overlaid(partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
            missing = [k for k in keys if (partition, k) not in overlay]
            loaded = dict(zip(missing, load(partition, missing), strict=True)) if missing else {}
            return [overlay.get((partition, k), loaded.get(k)) for k in keys]

        for record in records:
            part = self.process([record], now_ms, load_overlaid, slot)
            for w in part.writes:
                overlay[(w.partition, w.key)] = w.value
            part.writes = []
            result.absorb(part)
        result.writes = [StateWrite(p, k, v) for (p, k), v in overlay.items()]
        return result

    def _dead(self, record: SourceLike, reason: str) -> Envelope:
        return Envelope(
            record.key, envelope(reason, self.topic, source_partition(record), record.offset, record.value)
        )

    def _process(
        self, records: Sequence[SourceLike], now_ms: int, load: StateLoader, slot: str | None
    ) -> BatchResult:
        fs = self.feature_set
        result = BatchResult(consumed=len(records))
        frame, positions, rejects = self.validator.decode_frame([r.value for r in records], now_ms)
        result.dead = [self._dead(records[rej.index], rej.reason) for rej in rejects]
        if not positions:
            return result

        frame = apply_transforms(fs, frame)
        keys = entity_keys(fs, frame)
        valid = [records[i] for i in positions]
        if self.partitions and slot is None:
            frame, keys, valid = self._forward_misplaced(frame, keys, valid, result)
            if not valid:
                return result
        partitions = np.fromiter((r.partition for r in valid), np.int64, len(valid))
        offsets = np.fromiter((r.offset for r in valid), np.int64, len(valid))
        origins = np.fromiter((source_partition(r) for r in valid), np.int64, len(valid))
        groups = group_entities(keys, partitions)
        codes = groups.codes
        slots = [slot or str(int(p)) for p in groups.partitions.tolist()]

        stored, metas = self._load(groups, load)
        applied = applied_offsets(metas, slots)
        dup = duplicate_mask(offsets, codes, applied)
        ts = np.asarray(frame[fs.timestamp_key], dtype=np.int64)
        cutoff = late_cutoff(self.plan, now_ms)
        seq = tie_seq(origins, offsets)
        state, late = fold_into_state(fs, stored, frame, codes, seq, now_ms, skip=dup)
        keep = ~dup & ~late
        result.duplicates = int(dup.sum())
        result.applied = int(keep.sum())
        for i in np.flatnonzero(late):
            r = valid[i]
            reason = f"late: event time {int(ts[i])} is before {cutoff}, the oldest time online state keeps"
            result.late.append(
                Envelope(r.key, envelope(reason, self.topic, int(origins[i]), r.offset, r.value))
            )
        if result.applied:
            result.max_event_ts = int(ts[keep].max())

        # Every entity of the batch is written back, even when all its rows were late (its applied
        # offset moves on, so a replay does not publish them again) or duplicates. The worker writes
        # the changelog before the store (stream.transaction), so the store cannot be ahead of it;
        # re-sending a replayed entity's state is defence in depth for stores written by other means.
        write_codes = np.arange(len(groups.keys))
        if len(write_codes):
            top = updated_offsets(applied, codes, offsets).tolist()
            parts = groups.partitions.tolist()
            new_metas = [with_offset(metas[c], slots[c], top[c]) for c in range(len(parts))]
            blobs = self.codec.encode_all(state, write_codes, new_metas)
            result.writes = [
                StateWrite(part, key, blob) for part, key, blob in zip(parts, groups.keys, blobs, strict=True)
            ]
        return result

    def _forward_misplaced(self, frame: pd.DataFrame, keys: np.ndarray, valid: list, result: BatchResult):
        """Move events outside their entity's partition to ``result.forward``; return the rest."""
        n = self.partitions
        # Hash each distinct entity once, not each event.
        codes, uniques = pd.factorize(keys)
        encoded = [str(k).encode() for k in uniques]
        home = home_partitions(encoded, n)
        arrived = np.fromiter((r.partition for r in valid), np.int64, len(valid))
        misplaced = arrived != home[codes]
        if not misplaced.any():
            return frame, keys, valid
        for i in np.flatnonzero(misplaced).tolist():
            r = valid[i]
            result.forward.append(Envelope(encoded[codes[i]], r.value))
            result.forward_origins.append((r.partition, r.offset))
        result.key_mismatches = len(result.forward)
        stay = ~misplaced
        kept = [r for r, out in zip(valid, misplaced.tolist(), strict=True) if not out]
        return frame[stay].reset_index(drop=True), keys[stay], kept

    def _load(self, groups: EntityGroups, load: StateLoader):
        blobs: list[bytes | None] = [None] * len(groups.keys)
        for partition in np.unique(groups.partitions).tolist():
            idx = np.flatnonzero(groups.partitions == partition)
            got = load(partition, [groups.keys[i] for i in idx])
            for i, blob in zip(idx.tolist(), got, strict=True):
                blobs[i] = blob
        try:
            return self.codec.decode_many(blobs)
        except StateMismatch:
            return self.codec.decode_many([self._usable(groups.keys[i], b) for i, b in enumerate(blobs)])

    def _usable(self, key: bytes, blob: bytes | None) -> bytes | None:
        if blob is None:
            return None
        try:
            self.codec.decode_meta(blob)
        except (StateMismatch, ValueError) as exc:
            log.error("ignoring unreadable state of %s %r: %s", self.feature_set.name, key, exc)
            return None
        return blob


def _guarded(load: StateLoader) -> StateLoader:
    def guarded(partition: int, keys: Sequence[bytes]) -> Sequence[bytes | None]:
        try:
            blobs = load(partition, keys)
        except StateLoadError:
            raise
        except Exception as exc:
            raise StateLoadError(f"reading state of partition {partition} failed: {exc!r}") from exc
        if len(blobs) != len(keys):
            raise StateLoadError(f"state loader returned {len(blobs)} values for {len(keys)} keys")
        return blobs

    return guarded
