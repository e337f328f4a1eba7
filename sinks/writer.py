"""Durable, atomic writes of event batches into the dataset layout, and what was written before a crash.

A batch of one Kafka partition becomes one file per event date. Each file is written under a hidden
temporary name in its final directory, flushed and fsynced, renamed into place with ``os.replace``
(atomic on POSIX) and the directory fsynced, so once ``write_batch`` returns the rows survive a
crash, and a reader sees either the whole file or nothing. The sink commits Kafka offsets only after
that, so a crash can leave rows written but not committed, never committed but not written;
``written_offsets`` tells a restarted sink exactly which offsets to skip.

On an object store (no rename, no fsync) the same guarantee comes from the PUT itself: each file is
serialized in memory and uploaded in one go at its final name, which names its (partition, date,
offset range); the object appears whole when the upload completes, or never (a writer killed mid-upload
leaves an incomplete multipart upload, which no listing shows). So the commit protocol is "one committed
object per (partition, date, offset range), Kafka offsets committed after all of a batch's objects".
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aggregations import FeatureSet

from .layout import DAY_MS, date_dir, list_temps, part_name, source_path, temp_path
from .records import events_table
from .snapshot import fsync_dir, live_parts, reading
from .storage import Location, is_local, parquet_bytes, read_parquet

COMPRESSION = "zstd"


def write_parquet_atomic(table: pa.Table, final: Location) -> Location:
    """Write ``table`` to ``final`` atomically and durably: locally through a temporary file (flush, fsync,
    rename, fsync the directory); on an object store as one upload of the whole file."""
    if not is_local(final):
        final.write_bytes(parquet_bytes(table, compression=COMPRESSION))
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression=COMPRESSION)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


def write_batch(
    fs: FeatureSet,
    root: Location,
    partition: int,
    frame: pd.DataFrame,
    offsets: np.ndarray,
    arrivals: np.ndarray,
) -> list[Location]:
    """Write valid events of one Kafka partition under ``root``: one durable file per event date.

    ``frame`` is ``EventValidator.to_frame`` output (event time as int64 epoch ms); ``offsets`` and
    ``arrivals`` (broker timestamps, epoch ms) are row-aligned with it. Returns the files written.
    """
    if len(frame) == 0:
        return []
    offsets = np.asarray(offsets, dtype=np.int64)
    arrivals = np.asarray(arrivals, dtype=np.int64)
    days = frame[fs.timestamp_key].to_numpy(dtype=np.int64) // DAY_MS
    written = []
    for day in np.unique(days).tolist():
        rows = np.flatnonzero(days == day)
        part = frame.iloc[rows].reset_index(drop=True)
        table = events_table(fs, part, partition, offsets[rows], arrivals[rows])
        name = part_name(partition, int(offsets[rows].min()), int(offsets[rows].max()))
        written.append(write_parquet_atomic(table, date_dir(root, day) / name))
    return written


def written_offsets(root: Location, partition: int, from_offset: int = 0) -> np.ndarray:
    """Sorted offsets >= ``from_offset`` of one Kafka partition already in the dataset.

    File names select the candidates (files whose last offset is >= ``from_offset``); their
    ``_offset`` column gives the exact set, so a crash that renamed only some of a batch's files
    (one per date) is handled: the offsets that are missing get written again, the others skipped.
    """
    found = [np.zeros(0, dtype=np.int64)]
    with reading(root):  # a consistent snapshot, even while a compaction commits
        for part in live_parts(root, partition):
            if part.last < from_offset:
                continue
            column = read_parquet(part.path, columns=["_offset"]).column(0).to_numpy()
            found.append(column[column >= from_offset])
    return np.unique(np.concatenate(found))


def remove_temps(root: Location, partition: int) -> int:
    """Delete temporary files that a dead writer of this Kafka partition left behind; returns how many."""
    removed = 0
    for path in list_temps(root, partition):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def claim_source(root: Location, topic: str) -> None:
    """Record that the dataset under ``root`` holds events of ``topic``; refuse another topic.

    Offsets mean nothing across topics: a sink of another topic into the same dataset would take
    that topic's offsets for already-written ones and skip events. The claim is ``_source.json``
    (hidden from readers by its leading ``_``), written atomically on first use.
    """
    path = source_path(root)
    if path.exists():
        claimed = json.loads(path.read_text()).get("topic")
        if claimed != topic:
            raise ValueError(
                f"dataset {root} holds events of topic {claimed!r}, not {topic!r}: its offsets would be "
                f"confused; use another --data-dir for topic {topic!r}"
            )
        return
    write_text_atomic(path, json.dumps({"topic": topic}) + "\n")


def write_text_atomic(path: Location, text: str) -> None:
    """Replace ``path``'s content atomically and durably (temporary file + rename locally; one PUT on a store)."""
    if not is_local(path):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
