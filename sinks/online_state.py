"""Online tile state rebuilt from a feature set's Parquet history: what an always-on worker would hold at ``now``.

For each entity this yields the state blob the worker's table would hold after consuming every stored
event: in the entity's home partition, built by the same kernel with the same tie order
(``aggregations.bookkeeping.tie_seq``, so ``first``/``last`` ties and later merges with live events
compare like for like), expired at ``now``, with the applied offset of every source partition its
events came from (its own slot, or the forwarded slot ``f<p>`` of a partition it was not keyed to), which
makes the worker skip every source event at or below it, forwarded or not.

Events older than ``late_cutoff(plan, now)`` are left out of the tiles: they could only land in tiles
that ``expire`` drops (the worker would have dropped them as expired, or as late). Their offsets still
count, and entities whose events are all that old still get a (tile-less) state, so that a worker
replaying the topic from the beginning skips them instead of publishing them again as late events.

Work is split by entity-hash partition (``PartitionedEvents``): memory holds one partition at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aggregations import FeatureSet
from aggregations.bookkeeping import OFFSETS_META, home_partition, slot_of, tie_seq
from aggregations.codec import EntityStateCodec
from aggregations.compute import apply_transforms, fold_into_state
from aggregations.schema import entity_keys

from .dataset import PartitionedEvents, count_events
from .offline import TARGET_EVENTS_PER_PARTITION
from .records import META_COLUMNS


@dataclass(frozen=True)
class EntityState:
    """One entity's rebuilt state: where it goes (source partition, table key) and the blob."""

    partition: int
    key: bytes
    value: bytes


@dataclass(frozen=True)
class PartitionStates:
    """The states of one entity-hash partition, and what they were built from."""

    states: list[EntityState]
    events: int  # stored events read
    applied: int  # of which in the tiles (not older than the late cut-off)
    max_offsets: dict[int, int]  # highest stored offset per source partition


def _columns(fs: FeatureSet) -> list[str] | None:
    if fs.transforms:
        return None  # a transform may read any column
    return list(dict.fromkeys([*fs.entity_names, fs.timestamp_key, *fs.plan.columns]))


def entity_hash_partitions(fs: FeatureSet, store: str | Path, partitions: int | None = None) -> int:
    """How many entity-hash partitions to split the dataset into (default: ~1M events each, as offline)."""
    if partitions is not None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        return partitions
    return max(1, math.ceil(count_events(fs, store) / TARGET_EVENTS_PER_PARTITION))


def partition_states(
    fs: FeatureSet, events: pd.DataFrame, now: int, codec: EntityStateCodec, source_partitions: int
) -> PartitionStates:
    """States of every entity among ``events`` (stored rows, meta columns included), each in its home
    partition among ``source_partitions`` with the applied offsets of every source partition its events
    came from (``aggregations.bookkeeping``), exactly as the worker would hold it."""
    source_part = events["_partition"].to_numpy(dtype=np.int64)
    offsets = events["_offset"].to_numpy(dtype=np.int64)
    # Transforms see what the worker's see: the validated event columns, no storage columns.
    frame = apply_transforms(fs, events.drop(columns=list(META_COLUMNS)).reset_index(drop=True))
    keys = entity_keys(fs, frame)
    codes, uniques = pd.factorize(keys)
    codes = codes.astype(np.int64, copy=False)
    encoded = [str(k).encode() for k in uniques]
    homes = [home_partition(k, source_partitions) for k in encoded]

    levels, late = fold_into_state(fs, None, frame, codes, tie_seq(source_part, offsets), now)

    tops = pd.DataFrame({"e": codes, "p": source_part, "o": offsets}).groupby(["e", "p"], sort=True)["o"].max()
    applied: list[dict[str, int]] = [{} for _ in encoded]
    for (e, p), o in zip(tops.index.tolist(), tops.tolist(), strict=True):
        applied[e][slot_of(p, homes[e])] = int(o)
    metas = [{OFFSETS_META: slots} for slots in applied]
    blobs = codec.encode_all(levels, np.arange(len(encoded)), metas)
    states = [EntityState(h, k, blob) for h, k, blob in zip(homes, encoded, blobs, strict=True)]
    max_offsets = pd.Series(offsets).groupby(source_part).max().astype(np.int64).to_dict()
    return PartitionStates(
        states, len(events), int(len(late) - late.sum()), {int(p): int(o) for p, o in max_offsets.items()}
    )


def rebuild_states(
    fs: FeatureSet,
    store: str | Path,
    now: int,
    source_partitions: int,
    *,
    partitions: int | None = None,
    spill_dir: str | Path | None = None,
) -> Iterator[PartitionStates]:
    """Every entity's rebuilt state, one entity-hash partition at a time (see the module docstring).

    ``source_partitions``: the source topic's partition count (it decides each entity's home)."""
    codec = EntityStateCodec(fs)
    n = entity_hash_partitions(fs, store, partitions)
    with PartitionedEvents(fs, store, partitions=n, columns=_columns(fs), spill_dir=spill_dir) as split:
        for p in range(n):
            if split.rows[p]:
                yield partition_states(fs, split.frame(p), now, codec, source_partitions)
