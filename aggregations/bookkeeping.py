"""Effectively-once bookkeeping: where an entity's online state lives, which events it has applied, and
how events of equal timestamp are ordered. The worker, bootstrap, backfill and batch ingestion all use
this module, so a state built by any of them can be resumed by any other.

* **Home partition.** An entity's state lives in the partition Kafka's default partitioner (murmur2 of
  the entity key) gives it; HTTP reads are routed with the same hash. An event that arrived in another
  partition is forwarded there (``<topic>.by-entity``) and applied by the home partition's owner.
* **Applied offsets.** Each entity's state meta keeps, per *slot*, the highest source offset applied:
  slot ``"<p>"`` for events read from the home partition p itself, ``"f<p>"`` for events forwarded from
  source partition p (offset = their origin offset), ``"b<p>"`` for records produced to the
  ``.by-entity`` topic by hand (their own offset there). An event at or below its slot's offset is a
  duplicate: a replay after a crash, or a second copy of a forward. Within a batch, a row is also a
  duplicate of an earlier row of the same entity and slot with an equal or higher offset (two copies of
  one forwarded event can arrive in one fetch).
* **Ties.** Events of one entity with equal timestamps are ordered by source offset, then source
  partition (``tie_seq``): arrival order within a partition; a fixed, documented order across partitions
  (Kafka has no arrival order across partitions). ``first``/``last`` use it online and offline alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: State meta entry: {slot: highest source offset applied to the entity}.
OFFSETS_META = "offsets"

_PARTITION_BITS = 16
MAX_PARTITIONS = 1 << _PARTITION_BITS  # tie_seq packs the partition in the low bits


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), as unsigned 32 bits."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    words = length // 4
    for k in np.frombuffer(data, dtype="<u4", count=words).tolist() if words else ():
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & ~3
    extra = length & 3
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """``murmur2`` of every key (uint32), vectorized over the keys of each length."""
    lengths = np.fromiter(map(len, keys), np.int64, len(keys))
    out = np.empty(len(keys), dtype=np.uint32)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        data = np.frombuffer(b"".join([keys[i] for i in rows.tolist()]), dtype=np.uint8).reshape(len(rows), length)
        h = np.full(len(rows), (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
        words = length // 4
        if words:
            blocks = np.ascontiguousarray(data[:, : 4 * words]).view("<u4")
            for j in range(words):
                k = blocks[:, j] * _M
                k ^= k >> np.uint32(24)
                k *= _M
                h = (h * _M) ^ k
        tail, extra = 4 * words, length & 3
        if extra == 3:
            h ^= data[:, tail + 2].astype(np.uint32) << np.uint32(16)
        if extra >= 2:
            h ^= data[:, tail + 1].astype(np.uint32) << np.uint32(8)
        if extra >= 1:
            h ^= data[:, tail].astype(np.uint32)
            h *= _M
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
        out[rows] = h
    return out


def home_partitions(keys: Sequence[bytes], partitions: int) -> np.ndarray:
    """``home_partition`` of every key (int64), vectorized."""
    return ((murmur2_many(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int64)


def home_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``: the entity's home."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def slot_of(source_partition: int, home: int) -> str:
    """The applied-offset slot of an event read from ``source_partition`` for an entity homed at ``home``."""
    return str(int(source_partition)) if source_partition == home else forwarded_slot(source_partition)


def forwarded_slot(origin_partition: int) -> str:
    """The slot of events forwarded from source partition ``origin_partition``."""
    return f"f{int(origin_partition)}"


def by_entity_slot(partition: int) -> str:
    """The slot of records found in the ``.by-entity`` topic without an origin (produced there by hand)."""
    return f"b{int(partition)}"


def tie_seq(partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The tie-break key of events with equal timestamps: source offset, then source partition (int64)."""
    partitions = np.asarray(partitions, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(partitions) and (partitions.min() < 0 or partitions.max() >= MAX_PARTITIONS):
        raise ValueError(f"source partitions must be in [0, {MAX_PARTITIONS})")
    return (offsets << _PARTITION_BITS) | partitions


def applied_offsets(metas: Sequence[dict], slots: Sequence[str]) -> np.ndarray:
    """Per entity, the highest offset its state has applied in its slot (-1 if none)."""
    out = np.full(len(metas), -1, dtype=np.int64)
    for i, (meta, slot) in enumerate(zip(metas, slots, strict=True)):
        offsets = meta.get(OFFSETS_META)
        if offsets:
            out[i] = offsets.get(slot, -1)
    return out


def duplicate_mask(offsets: np.ndarray, codes: np.ndarray, applied: np.ndarray) -> np.ndarray:
    """Rows (in arrival order) already applied: at or below their entity's applied offset, or at or below an
    earlier row of the same entity in this batch. ``codes`` index ``applied``; one slot per code."""
    offsets = np.asarray(offsets, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    if len(offsets) == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(codes, kind="stable")  # each entity's rows together, in arrival order
    grouped, ordered = codes[order], offsets[order]
    running = pd.Series(ordered).groupby(grouped).cummax().to_numpy(dtype=np.int64)
    before = np.empty_like(running)
    before[0] = -1
    before[1:] = running[:-1]
    before[np.r_[True, grouped[1:] != grouped[:-1]]] = -1  # nothing earlier in the batch
    dup_sorted = ordered <= np.maximum(before, applied[grouped])
    dup = np.empty(len(offsets), dtype=bool)
    dup[order] = dup_sorted
    return dup


def updated_offsets(applied: np.ndarray, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per entity, the highest offset among what was applied before and this batch's rows."""
    out = np.asarray(applied, dtype=np.int64).copy()
    np.maximum.at(out, np.asarray(codes, dtype=np.int64), np.asarray(offsets, dtype=np.int64))
    return out


def with_offset(meta: dict, slot: str, offset: int) -> dict:
    """The entity's meta (changed in place) with ``slot``'s applied offset set to ``offset``."""
    meta.pop("fp", None)
    offsets = meta.get(OFFSETS_META)
    if offsets is None:
        offsets = meta[OFFSETS_META] = {}
    offsets[slot] = int(offset)
    return meta


def slot_offsets(home: int, source_partitions: np.ndarray, offsets: np.ndarray) -> dict[str, int]:
    """The applied-offset meta of one entity homed at ``home`` that has applied exactly these events."""
    frame = pd.DataFrame({"p": np.asarray(source_partitions, np.int64), "o": np.asarray(offsets, np.int64)})
    top = frame.groupby("p", sort=True)["o"].max()
    return {slot_of(int(p), home): int(o) for p, o in top.items()}


#: Table key of a partition's checkpoint record. Not valid UTF-8, so no entity key (always UTF-8) equals it.
CHECKPOINT_KEY = b"\xff\xfefeaturestream.checkpoint"


def is_internal_key(key: bytes) -> bool:
    """Whether a table key is bookkeeping (a checkpoint), not an entity."""
    return key[:1] == b"\xff"


@dataclass
class Checkpoint:
    """How far one partition's state has processed its inputs: every source record of the partition below
    ``source`` and every ``.by-entity`` record below ``by_entity`` has been applied, counted late,
    forwarded or dead-lettered. Written to the changelog (key ``CHECKPOINT_KEY``) as the last record of
    every transaction that touches the partition, so the newest record of a changelog partition says how
    far its state goes; records below it are skipped whole on a replay."""

    source: int = 0
    by_entity: int = 0

    def encode(self) -> bytes:
        return json.dumps({"v": 1, "source": int(self.source), "by_entity": int(self.by_entity)}).encode()

    @classmethod
    def decode(cls, blob: bytes | None) -> Checkpoint:
        """The checkpoint in ``blob``; an empty one for None or anything unreadable (nothing is skipped)."""
        if not blob:
            return cls()
        try:
            body = json.loads(blob)
            return cls(int(body.get("source", 0)), int(body.get("by_entity", 0)))
        except (ValueError, TypeError, AttributeError):
            return cls()


def moves_back(stored: dict[str, int] | None, incoming: dict[str, int] | None) -> bool:
    """Whether a state record with applied offsets ``incoming`` is older than the stored one: no slot ahead
    and some slot behind. A legitimate sequence of one entity's records never moves back; a record that
    does is a late write of an owner that lost its partitions, and must not replace the newer state."""
    if not stored or not incoming:
        return False
    if any(offset > stored.get(slot, -1) for slot, offset in incoming.items()):
        return False
    return any(offset > incoming.get(slot, -1) for slot, offset in stored.items())


def checkpoint_moves_back(stored: Checkpoint, incoming: Checkpoint) -> bool:
    """``moves_back`` for checkpoint records."""
    return moves_back(
        {"s": stored.source, "b": stored.by_entity}, {"s": incoming.source, "b": incoming.by_entity}
    )
