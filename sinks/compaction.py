"""Compaction: many small files of a low-rate stream -> files of about a target size, sorted by entity then time.

Work is per (event date, Kafka partition), so a compacted file keeps the layout's name
``part-p<partition>-o<first>-<last>.parquet`` (first/last over the union of its inputs) and the sink's
offset accounting (names select candidate files, ``_offset`` gives the exact set) stays valid. Files
smaller than half the target are packed, in offset order, into bins of at most ``target_bytes`` on
disk; a bin of at least ``min_files`` files becomes one file whose rows are sorted by the entity
columns, then event time, arrival, offset. Files are never modified, only replaced.

Each bin is one transaction (see ``snapshot``): read inputs, write the output under a hidden staged
name and fsync it, check that it holds exactly the inputs' ``(_partition, _offset)`` set, commit by
writing the journal (atomic rename), apply (rename output, delete inputs, delete journal) under the
exclusive snapshot lock. Killed anywhere, the dataset shows every event exactly once: before the
journal exists the staged output is invisible; after, readers apply the journal and the next
maintenance run finishes it. On an object store the staged output is one upload, the journal one PUT
per bin, and the replaced inputs are deleted after the grace period (see ``snapshot``); files named by
a transaction still in its grace period are left out of planning.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from aggregations import FeatureSet

from .layout import PartFile, dataset_dir, part_name
from .progress import progress_bar
from .records import arrow_schema
from .snapshot import (
    STAGED_PREFIX,
    apply_journal,
    fsync_dir,
    involved,
    live_parts,
    maintenance,
    rewriting,
    write_journal,
)
from .storage import Location, arrow_files, is_local, parquet_bytes, read_parquet
from .writer import COMPRESSION

DEFAULT_TARGET_BYTES = 64 << 20
ROW_GROUP_ROWS = 256 * 1024


@dataclass
class CompactStats:
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    files_seen: int = 0  # live data files of the dataset
    small: int = 0  # of them, under half the target size (the merge candidates)
    target_bytes: int = DEFAULT_TARGET_BYTES
    min_files: int = 2
    dataset: str = ""

    def summary(self) -> str:
        if self.files_in == 0:
            return self.nothing_to_do()
        return (
            f"{self.files_in} files ({self.bytes_in / 1e6:.1f} MB) -> {self.files_out} files "
            f"({self.bytes_out / 1e6:.1f} MB), {self.rows} events, {self.seconds:.1f}s"
        )

    def nothing_to_do(self) -> str:
        """Why nothing was merged, in words."""
        if self.files_seen == 0:
            return f"nothing to compact: no data files under {self.dataset} (has the sink written any?)"
        files = f"{self.files_seen} file{'s' if self.files_seen != 1 else ''}"
        target_mb = self.target_bytes / (1 << 20)
        return (
            f"nothing to merge: {files}, {self.small} of them under {target_mb / 2:g} MB (half of --target-mb "
            f"{target_mb:g}); a merge needs at least {max(2, self.min_files)} such files of one date and Kafka "
            "partition"
        )


def plan(parts: list[PartFile], target_bytes: int, min_files: int = 2) -> list[list[PartFile]]:
    """Bins of small files to merge: per (day, partition), in offset order, each at most ``target_bytes``."""
    groups: dict[tuple[int, int], list[tuple[PartFile, int]]] = defaultdict(list)
    for part in parts:
        size = part.path.stat().st_size
        if size < target_bytes // 2:
            groups[(part.day, part.partition)].append((part, size))
    bins = []
    for key in sorted(groups):
        current, total = [], 0
        for part, size in sorted(groups[key], key=lambda ps: (ps[0].first, ps[0].last)):
            if current and total + size > target_bytes:
                bins.append(current)
                current, total = [], 0
            current.append(part)
            total += size
        bins.append(current)
    return [b for b in bins if len(b) >= max(2, min_files)]


def _sort_keys(fs: FeatureSet) -> list[tuple[str, str]]:
    keys = [*list(fs.entity_names), fs.timestamp_key, "_arrival", "_partition", "_offset"]
    return [(k, "ascending") for k in keys]


def compact(
    fs: FeatureSet,
    store: str | Path | Location,
    *,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    min_files: int = 2,
    progress: bool = False,
    step=None,
) -> CompactStats:
    """Compact the dataset of ``fs`` under ``store`` (safe while the sink, backfill and readers run).

    ``step`` (tests) is called with a step name after every durable step, e.g. to simulate a crash there.
    """
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be >= 1, got {target_bytes}")
    step = step or (lambda name: None)
    root = dataset_dir(store, fs.name)
    stats = CompactStats(target_bytes=target_bytes, min_files=min_files, dataset=str(root))
    started = time.monotonic()
    if not root.is_dir():
        return stats
    schema = arrow_schema(fs)
    with maintenance(root):  # also rolls forward / cleans up after a killed run
        parts = live_parts(root)
        if not is_local(root):  # files of a transaction in its grace period wait for it to retire
            busy = involved(root)
            parts = [p for p in parts if p.path.relative_to(root).as_posix() not in busy]
        bins = plan(parts, target_bytes, min_files)
        stats.files_seen = len(parts)
        stats.small = sum(p.path.stat().st_size < target_bytes // 2 for p in parts)
        bar = progress_bar(sum(len(b) for b in bins), "file", f"compact {fs.name}", enabled=progress and bool(bins))
        for inputs in bins:
            _compact_bin(root, schema, _sort_keys(fs), inputs, stats, step)
            bar.update(len(inputs))
        bar.close()
    stats.seconds = time.monotonic() - started
    return stats


def _compact_bin(root: Location, schema: pa.Schema, sort_keys, inputs: list[PartFile], stats, step) -> None:
    filesystem, paths = arrow_files([p.path for p in inputs])
    table = ds.dataset(paths, format="parquet", schema=schema, filesystem=filesystem).to_table()
    table = table.sort_by(sort_keys)
    offsets = table.column("_offset").to_numpy()
    partitions = np.unique(table.column("_partition").to_numpy())
    if len(partitions) != 1 or len(np.unique(offsets)) != len(offsets):
        raise RuntimeError(
            f"refusing to compact {[p.path.name for p in inputs]}: not one partition's unique offsets"
        )
    day_dir = inputs[0].path.parent
    final = day_dir / part_name(int(partitions[0]), int(offsets.min()), int(offsets.max()))
    tx = uuid.uuid4().hex[:16]
    staged = day_dir / f"{STAGED_PREFIX}{tx}-{final.name}"
    if is_local(root):
        with open(staged, "wb") as handle:
            pq.write_table(table, handle, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(day_dir)
    else:
        staged.write_bytes(parquet_bytes(table, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS))
    step("staged")
    check = read_parquet(staged, columns=["_offset"]).column(0).to_numpy()
    if not np.array_equal(np.sort(check), np.sort(offsets)):
        staged.unlink()
        raise RuntimeError(f"compacted file {staged} does not read back the inputs' offsets")
    rel = lambda path: path.relative_to(root).as_posix()  # noqa: E731
    journal = {"tx": tx, "inputs": [rel(p.path) for p in inputs], "outputs": [[rel(staged), rel(final)]]}
    stats.bytes_in += sum(p.path.stat().st_size for p in inputs)
    stats.bytes_out += staged.stat().st_size
    with rewriting(root):  # waits for current readers; new ones wait for the apply (renames and unlinks)
        write_journal(root, journal)
        step("committed")
        apply_journal(root, journal, step)
    stats.files_in += len(inputs)
    stats.files_out += 1
    stats.rows += len(offsets)
