"""Reading a feature set's offline dataset: whole, or one entity-hash partition and time range at a time.

Offline work is split by entity: a 64-bit hash of an event's entity key string (``entity_keys`` of
the kernel, so composite keys join the same way everywhere) modulo P gives its partition, and every
partition is an independent task that needs only its own entities' events. ``read_events`` reads the
data files that can hold the requested time range (file dates prune whole days), lets pyarrow filter
rows by event time and arrival time, then keeps the rows of the requested partitions batch by batch.
``PartitionedEvents`` does the same for all partitions in one pass, spilling each to an Arrow IPC
file, so that P partitions cost one decode of the Parquet files rather than P.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from aggregations import FeatureSet
from aggregations.schema import entity_keys

from .layout import DAY_MS, dataset_dir
from .records import META_COLUMNS, TIMESTAMP, arrow_schema, table_to_frame
from .snapshot import live_parts, reading
from .storage import arrow_files

BATCH_ROWS = 1 << 20


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def hash_strings(values) -> np.ndarray:
    """64-bit hash of each string's UTF-8 bytes (FNV-1a, then murmur3's finalizer), vectorized with numpy.

    Accepts an Arrow string array (hashed from its buffers, no Python objects) or any sequence of str.
    Deterministic across processes, machines and library versions, so partitions are reproducible.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(np.asarray(values, dtype=object), type=pa.large_string())
    values = values.cast(pa.large_string())
    if values.null_count:
        values = values.fill_null("")
    n = len(values)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    offsets_buf, data_buf = values.buffers()[1:3]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[values.offset : values.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    shortest, longest = int(lengths.min()), int(lengths.max())
    for j in range(shortest):  # every string has a j-th byte
        h = (h ^ data[starts + j]) * _FNV_PRIME
    for j in range(shortest, longest):
        active = np.flatnonzero(lengths > j)
        h[active] = (h[active] ^ data[starts[active] + j]) * _FNV_PRIME
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def entity_partitions(keys, partitions: int) -> np.ndarray:
    """Entity-hash partition (0 .. partitions-1) of each entity key string (``hash_strings`` mod partitions)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if partitions == 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    return (hash_strings(keys) % np.uint64(partitions)).astype(np.int64)


def data_files(fs: FeatureSet, store: str | Path, start_ms: int | None = None, end_ms: int | None = None):
    """Data files of the dataset whose date can hold events with ``start_ms <= ts < end_ms``.

    The live files of the current snapshot (``snapshot.live_parts``); hold ``snapshot.reading`` while
    listing and reading them so that no compaction or retention is applied in between.
    """
    first_day = None if start_ms is None else int(start_ms) // DAY_MS
    last_day = None if end_ms is None else (int(end_ms) - 1) // DAY_MS
    return [
        part
        for part in live_parts(dataset_dir(store, fs.name))
        if (first_day is None or part.day >= first_day) and (last_day is None or part.day <= last_day)
    ]


def count_events(
    fs: FeatureSet,
    store: str | Path,
    start_ms: int | None = None,
    end_ms: int | None = None,
    offsets_upto: Mapping[int, int] | None = None,
) -> int:
    """Number of stored events in the files that can hold the time range (from Parquet footers; an upper bound).

    With ``offsets_upto`` (a snapshot: Kafka partition -> highest offset), the exact number of events of
    the whole dataset within that snapshot (the time range is then ignored).
    """
    with reading(dataset_dir(store, fs.name)):
        files = data_files(fs, store) if offsets_upto is not None else data_files(fs, store, start_ms, end_ms)
        if not files:
            return 0
        filesystem, paths = arrow_files([f.path for f in files])
        dataset = ds.dataset(paths, format="parquet", filesystem=filesystem)
        if offsets_upto is None:
            return dataset.count_rows()
        return dataset.count_rows(filter=_offsets_filter(offsets_upto))


def _single_string_entity(fs: FeatureSet) -> str | None:
    names = fs.entity_names
    return names[0] if len(names) == 1 and fs.schema[names[0]] == "string" else None


def _scan_schema(fs: FeatureSet) -> pa.Schema:
    """The stored schema, with a single string entity read dictionary-encoded (hashing its distinct values only)."""
    schema = arrow_schema(fs)
    entity = _single_string_entity(fs)
    if entity is not None:
        schema = schema.set(
            schema.get_field_index(entity), pa.field(entity, pa.dictionary(pa.int32(), pa.string()))
        )
    return schema


def batch_partitions(fs: FeatureSet, batch: pa.RecordBatch, partitions: int) -> np.ndarray:
    entity = _single_string_entity(fs)
    if entity is not None:
        column = batch.column(entity)
        if pa.types.is_dictionary(column.type):
            per_value = entity_partitions(column.dictionary, partitions)
            return per_value[column.indices.to_numpy(zero_copy_only=False)]
        return entity_partitions(column, partitions)
    keys = entity_keys(fs, batch.select(list(fs.entity_names)).to_pandas())
    return entity_partitions(keys, partitions)


def _offsets_filter(offsets_upto: Mapping[int, int]):
    """Rows of a snapshot: in one of its Kafka partitions, at or below that partition's highest offset."""
    expr = ds.field("_partition") < pa.scalar(0, type=pa.int32())  # an empty snapshot holds nothing
    for partition, last in sorted(offsets_upto.items()):
        part = (ds.field("_partition") == pa.scalar(int(partition), type=pa.int32())) & (
            ds.field("_offset") <= pa.scalar(int(last), type=pa.int64())
        )
        expr = expr | part
    return expr


def _filter(fs: FeatureSet, start_ms, end_ms, arrival_until_ms, offsets_upto=None):
    expr = None if offsets_upto is None else _offsets_filter(offsets_upto)
    ts = ds.field(fs.timestamp_key)
    for cond in (
        None if start_ms is None else ts >= pa.scalar(int(start_ms), type=TIMESTAMP),
        None if end_ms is None else ts < pa.scalar(int(end_ms), type=TIMESTAMP),
        None
        if arrival_until_ms is None
        else ds.field("_arrival") <= pa.scalar(int(arrival_until_ms), type=TIMESTAMP),
    ):
        if cond is not None:
            expr = cond if expr is None else expr & cond
    return expr


def scan_columns(fs: FeatureSet, columns, with_entities: bool) -> tuple[pa.Schema, list[str]]:
    """(output schema, columns to read) of a scan: the requested columns (+ the entity columns)."""
    wanted_columns = _columns(fs, columns)
    schema = arrow_schema(fs)
    out_schema = pa.schema([schema.field(c) for c in wanted_columns])
    read_columns = list(wanted_columns)
    if with_entities:
        read_columns += [e for e in fs.entity_names if e not in read_columns]
    return out_schema, read_columns


def _scan(
    fs: FeatureSet, store, columns, start_ms, end_ms, arrival_until_ms, with_entities: bool, offsets_upto=None
):
    """(output schema, iterator of record batches) over the files that can hold the time range.

    Batches carry the requested columns (+ the entity columns if ``with_entities``), entity columns
    dictionary-encoded; ``plain(batch.select(...), schema)`` gives the output form.
    """
    out_schema, read_columns = scan_columns(fs, columns, with_entities)
    return out_schema, _batches(fs, store, read_columns, start_ms, end_ms, arrival_until_ms, offsets_upto)


def _batches(fs: FeatureSet, store, read_columns, start_ms, end_ms, arrival_until_ms, offsets_upto=None):
    """Non-empty record batches of one consistent snapshot (the snapshot lock is held until exhausted)."""
    with reading(dataset_dir(store, fs.name)):
        files = data_files(fs, store, start_ms, end_ms)
        yield from scan_files(
            fs, [f.path for f in files], read_columns, start_ms, end_ms, arrival_until_ms, offsets_upto
        )


def scan_files(fs: FeatureSet, paths: list, read_columns, start_ms, end_ms, arrival_until_ms, offsets_upto=None):
    """Non-empty record batches of the given data files: rows of the time range, arrival bound and snapshot,
    entity columns dictionary-encoded (each distinct key hashed once). Runs wherever the files are reachable:
    in this process, or in a Spark task."""
    if not paths:
        return
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(fs.entity_names)))
    filesystem, where = arrow_files(list(paths))
    dataset = ds.dataset(where, format=fmt, schema=_scan_schema(fs), filesystem=filesystem)
    scanner = dataset.scanner(
        columns=read_columns,
        filter=_filter(fs, start_ms, end_ms, arrival_until_ms, offsets_upto),
        batch_size=BATCH_ROWS,
    )
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield batch


def read_table(
    fs: FeatureSet,
    store: str | Path,
    *,
    columns: Collection[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    arrival_until_ms: int | None = None,
    partitions: int = 1,
    only: Collection[int] | int | None = None,
    offsets_upto: Mapping[int, int] | None = None,
) -> pa.Table:
    """Stored events as an Arrow table (see ``read_events``); entity columns come back as plain strings."""
    selected = None
    if only is not None:
        selected = np.asarray(sorted({only} if isinstance(only, int) else set(only)), dtype=np.int64)
        if partitions < 1 or ((selected < 0) | (selected >= partitions)).any():
            raise ValueError(f"partitions to read {selected.tolist()} are not all in 0..{partitions - 1}")
    filtering = selected is not None and partitions > 1
    out_schema, batches = _scan(
        fs, store, columns, start_ms, end_ms, arrival_until_ms, filtering, offsets_upto
    )
    pieces = []
    for batch in batches:
        if filtering:
            keep = np.isin(batch_partitions(fs, batch, partitions), selected)
            if not keep.any():
                continue
            batch = batch.filter(pa.array(keep))
        pieces.append(plain(batch.select(out_schema.names), out_schema))
    return pa.Table.from_batches(pieces, schema=out_schema)


class PartitionedEvents:
    """A time range of a dataset split into entity-hash partitions in one pass, spilled to Arrow IPC files.

    Reading each partition with ``read_events(only=p)`` decodes every file once per partition; this
    decodes them once in all, writes each partition's rows to ``<tmp>/p<p>.arrow`` and maps them back
    one at a time (``frame(p)``). ``offsets_upto`` (Kafka partition -> highest offset) reads a snapshot:
    only events at or below those offsets (a versioned training set's data, reproducible later). Memory holds one batch while splitting, then one partition. Use as a
    context manager: the spill directory is removed on exit.
    """

    def __init__(
        self,
        fs: FeatureSet,
        store: str | Path,
        *,
        partitions: int,
        needed: Collection[int] | None = None,
        columns: Collection[str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        arrival_until_ms: int | None = None,
        spill_dir: str | Path | None = None,
        offsets_upto: Mapping[int, int] | None = None,
    ):
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.fs = fs
        self.partitions = partitions
        self._tmp = tempfile.TemporaryDirectory(prefix="featurestream-partitions-", dir=spill_dir)
        self.dir = Path(self._tmp.name)
        self.rows = np.zeros(partitions, dtype=np.int64)
        wanted = np.zeros(partitions, dtype=bool)
        wanted[list(range(partitions)) if needed is None else list(needed)] = True
        self.schema, batches = _scan(
            fs, store, columns, start_ms, end_ms, arrival_until_ms, partitions > 1, offsets_upto
        )
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        try:
            for batch in batches:
                part = (
                    batch_partitions(fs, batch, partitions)
                    if partitions > 1
                    else np.zeros(batch.num_rows, dtype=np.int64)
                )
                small = part.astype(np.uint16) if partitions <= 65_536 else part
                order = np.argsort(small, kind="stable")  # radix sort for 16-bit keys: O(n)
                part = part[order]
                batch = plain(batch.select(self.schema.names), self.schema).take(pa.array(order))
                bounds = np.searchsorted(part, np.arange(partitions + 1))
                for p in np.flatnonzero(wanted & (bounds[1:] > bounds[:-1])).tolist():
                    if p not in writers:
                        writers[p] = pa.ipc.new_file(str(self.path(p)), self.schema)
                    writers[p].write_batch(batch.slice(bounds[p], bounds[p + 1] - bounds[p]))
                    self.rows[p] += bounds[p + 1] - bounds[p]
        except BaseException:
            self.close()
            raise
        finally:
            for writer in writers.values():
                writer.close()

    def path(self, p: int) -> Path:
        """Partition p's spill file (Arrow IPC; absent while the partition is empty)."""
        return self.dir / f"p{int(p)}.arrow"

    def table(self, p: int) -> pa.Table:
        """Partition p's events as an Arrow table (memory-mapped)."""
        if not 0 <= p < self.partitions:
            raise ValueError(f"partition {p} is not in 0..{self.partitions - 1}")
        if not self.rows[p]:
            return self.schema.empty_table()
        return pa.ipc.open_file(pa.memory_map(str(self.path(p)))).read_all()

    def frame(self, p: int) -> pd.DataFrame:
        """Partition p's events as ``read_events`` returns them."""
        return table_to_frame(self.fs, self.table(p))

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> PartitionedEvents:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_events(
    fs: FeatureSet,
    store: str | Path,
    *,
    columns: Collection[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    arrival_until_ms: int | None = None,
    partitions: int = 1,
    only: Collection[int] | int | None = None,
    offsets_upto: Mapping[int, int] | None = None,
) -> pd.DataFrame:
    """Stored events of ``fs`` under ``store`` as a DataFrame, event time and ``_arrival`` as int64 epoch ms.

    ``columns``: schema columns to return (default all); ``_partition``, ``_offset`` and ``_arrival``
    are always included. Rows are restricted to ``start_ms <= ts < end_ms``, ``_arrival <=
    arrival_until_ms`` and, with ``only``, to the given entity-hash partitions out of ``partitions``;
    with ``offsets_upto`` (Kafka partition -> highest offset) to that snapshot of the dataset.
    Temporary and unrecognised files are ignored. Row order is unspecified.
    """
    table = read_table(
        fs,
        store,
        columns=columns,
        start_ms=start_ms,
        end_ms=end_ms,
        arrival_until_ms=arrival_until_ms,
        partitions=partitions,
        only=only,
        offsets_upto=offsets_upto,
    )
    return table_to_frame(fs, table)


def _columns(fs: FeatureSet, columns: Collection[str] | None) -> list[str]:
    if columns is None:
        wanted = list(fs.schema)
    else:
        unknown = [c for c in columns if c not in fs.schema and c not in META_COLUMNS]
        if unknown:
            raise KeyError(f"feature set {fs.name!r} stores no column(s) {unknown}")
        wanted = [c for c in fs.schema if c in columns]
    return wanted + list(META_COLUMNS)


def plain(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Dictionary-encoded columns back to their stored type."""
    arrays = [
        pc.cast(col, schema.field(i).type) if pa.types.is_dictionary(col.type) else col
        for i, col in enumerate(batch.columns)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
