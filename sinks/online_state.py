"""Online tile state rebuilt from a feature set's Parquet history: what an always-on worker would hold at ``now``.

For each entity (per Kafka source partition, as the worker keeps it) this yields the state blob the
worker's table would hold after consuming every stored event: the same kernel (``build_levels`` with
seq = the source offset, as the worker does, so ``first``/``last`` ties and later merges with live events
compare like for like), ``expire`` at ``now``, and the meta entry ``offsets`` = {partition: highest
stored offset of the entity}, which makes the worker skip every source event at or below it.

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
from aggregations.codec import EntityStateCodec
from aggregations.compute import apply_transforms, fold_into_state
from aggregations.naming import OFFSETS_META
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
    fs: FeatureSet, events: pd.DataFrame, now: int, codec: EntityStateCodec
) -> PartitionStates:
    """States of every (source partition, entity) among ``events`` (stored rows, meta columns included)."""
    source_part = events["_partition"].to_numpy(dtype=np.int64)
    offsets = events["_offset"].to_numpy(dtype=np.int64)
    # Transforms see what the worker's see: the validated event columns, no storage columns.
    frame = apply_transforms(fs, events.drop(columns=list(META_COLUMNS)).reset_index(drop=True))
    keys = entity_keys(fs, frame)
    key_codes, uniques = pd.factorize(keys)
    n_parts = int(source_part.max()) + 1 if len(source_part) else 1
    # One state per (source partition, entity), as the worker keeps it; codes sorted by that pair.
    pair = key_codes.astype(np.int64) * n_parts + source_part
    groups, codes = np.unique(pair, return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    group_key = groups // n_parts
    group_part = groups % n_parts
    top = pd.Series(offsets).groupby(codes, sort=True).max().to_numpy(dtype=np.int64)

    levels, late = fold_into_state(fs, None, frame, codes, offsets, now)

    metas = [{OFFSETS_META: {str(int(p)): int(o)}} for p, o in zip(group_part, top, strict=True)]
    blobs = codec.encode_all(levels, np.arange(len(groups)), metas)
    states = [
        EntityState(int(p), str(uniques[k]).encode(), blob)
        for p, k, blob in zip(group_part.tolist(), group_key.tolist(), blobs, strict=True)
    ]
    max_offsets = pd.Series(offsets).groupby(source_part).max().astype(np.int64).to_dict()
    return PartitionStates(
        states, len(events), int(len(late) - late.sum()), {int(p): int(o) for p, o in max_offsets.items()}
    )


def rebuild_states(
    fs: FeatureSet,
    store: str | Path,
    now: int,
    *,
    partitions: int | None = None,
    spill_dir: str | Path | None = None,
) -> Iterator[PartitionStates]:
    """Every entity's rebuilt state, one entity-hash partition at a time (see the module docstring)."""
    codec = EntityStateCodec(fs)
    n = entity_hash_partitions(fs, store, partitions)
    with PartitionedEvents(fs, store, partitions=n, columns=_columns(fs), spill_dir=spill_dir) as split:
        for p in range(n):
            if split.rows[p]:
                yield partition_states(fs, split.frame(p), now, codec)
