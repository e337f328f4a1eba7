"""Point-in-time correct training sets from the offline datasets: ``get_offline_features``.

For each query row (entity keys, t) and each feature set of the vector, the set's features are read
at t per the window contract (events with ``floor((t - W) / P) * P <= ts < t``), by the same kernel
as preview and the online worker (``aggregations.compute.features_at``). Events of equal timestamp
are ordered as the worker orders them: by source offset, then source partition (``tie_rank``).

Work is split by entity-hash partition (``dataset.entity_partitions``): one pass over the files that
can hold the rows' time range splits their events into P partitions spilled to disk
(``dataset.PartitionedEvents``); then each partition's events and rows are computed on their own, in
process or in worker processes (``parallel``), and the results put back at the rows' original positions. Memory is
bounded by one partition's events (per worker) plus the rows and the outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from aggregations import FeatureSet, FeatureVector, Registry
from aggregations.bookkeeping import tie_seq
from aggregations.compute import apply_on_read, feature_frame, features_at
from aggregations.schema import entity_keys, to_epoch_ms

from .dataset import PartitionedEvents, count_events, entity_partitions
from .known_at import known_at
from .parallel import portable, run_partitions
from .progress import progress_bar
from .records import table_to_frame
from .storage import open_location
from .writer import write_parquet_atomic

log = logging.getLogger(__name__)

# Events per entity-hash partition when ``partitions`` is not given. Measured (benchmarks/offline.py,
# 10M events, 1M rows, 18 features): ~1 GiB peak RSS at 1M events per partition, 2 GiB at 2.5M; and
# smaller partitions are no slower (fewer page faults, better cache use) until per-call overheads show.
TARGET_EVENTS_PER_PARTITION = 1_000_000

Sets = Registry | Mapping[str, FeatureSet] | Iterable[FeatureSet]


@dataclass
class _SetTask:
    fs: FeatureSet
    requested: list[str]  # the vector's features of this set, in order
    aggregated: list[str]  # aggregated features to compute (all of them if an on-read one is requested)
    keys: np.ndarray  # entity key of each row
    partition_of_row: np.ndarray
    partitions: int
    start_ms: int
    end_ms: int
    offsets_upto: Mapping[int, int] | None = None  # a data snapshot: Kafka partition -> highest offset


def tie_rank(events: pd.DataFrame) -> np.ndarray:
    """Rank of each event in the tie order of equal timestamps (``aggregations.bookkeeping.tie_seq``:
    source offset, then source partition), the order the worker uses for ``first``/``last``."""
    seq = tie_seq(events["_partition"].to_numpy(dtype=np.int64), events["_offset"].to_numpy(dtype=np.int64))
    order = np.argsort(seq, kind="stable")
    rank = np.empty(len(seq), dtype=np.int64)
    rank[order] = np.arange(len(seq), dtype=np.int64)
    return rank


def get_offline_features(
    vector: FeatureVector | str,
    rows: pd.DataFrame,
    store: str | Path,
    *,
    registry: Sets | None = None,
    timestamp_column: str = "ts",
    partitions: int | None = None,
    out: str | Path | None = None,
    as_known_at: bool = False,
    progress: bool = False,
    workers: int = 1,
    name: str | None = None,
    return_manifest: bool = False,
    snapshot: Mapping[str, Mapping[int, int]] | None = None,
    rows_source: str = "DataFrame",
    engine: str = "local",
    spark=None,
    spark_master: str | None = None,
):
    """The vector's features at each row's (entities, timestamp), point-in-time correct, across feature sets.

    ``rows`` holds every entity column the vector's sets need and ``timestamp_column`` (datetimes, ISO
    strings or epoch ms). ``store`` is the data dir holding ``<feature set>/`` datasets. ``registry``
    (a Registry, or the FeatureSets) resolves the vector; a vector given by name needs a Registry.
    Returns ``rows``' columns (same index and order) followed by the features, named as in the vector,
    or ``set.feature`` where two sets (or a row column) share a name. ``partitions``: entity-hash
    partitions (default: from the data size). ``as_known_at``: use only events that had arrived by
    each row's t. ``out``: also write the result to this Parquet file. ``progress``: a bar on a terminal, lines otherwise (``sinks.progress``).
    ``workers``: partitions computed in parallel by that many worker processes (default 1: in process).

    Versioned training sets: ``name`` also writes the result as a new version under
    ``<store>/datasets/<name>/v<N>/`` with a manifest (``sinks.training_sets``); ``return_manifest``
    returns ``(frame, manifest)``. Either reads a snapshot of the data taken first (the files, and the
    highest Kafka offset per partition of each set), so the manifest names exactly the data used.
    ``snapshot`` (set -> {partition: highest offset}) reads that snapshot instead of the current data.

    ``engine="spark"`` computes the partitions as Spark tasks (``sinks.spark_engine``): on ``spark`` (a
    SparkSession), else on the active session or a new one on ``spark_master`` (default local[*]). Same
    kernel, same partitioning, same result; ``partitions`` then defaults to ~1M events each and at least
    two per core, and ``workers`` is ignored.
    """
    if engine not in ("local", "spark"):
        raise ValueError(f"engine must be 'local' or 'spark', got {engine!r}")
    if name is not None or return_manifest:
        from .training_sets import versioned_training_set

        return versioned_training_set(
            vector, rows, store, name=name, return_manifest=return_manifest, registry=registry,
            timestamp_column=timestamp_column, partitions=partitions, out=out, as_known_at=as_known_at,
            progress=progress, workers=workers, snapshot=snapshot, rows_source=rows_source, engine=engine,
            spark=spark, spark_master=spark_master,
        )  # fmt: skip
    sets, vector = _resolve(vector, registry)
    by_set = vector.resolve(sets)
    order = _vector_order(vector, sets)
    if not isinstance(rows, pd.DataFrame):
        raise TypeError(f"rows must be a pandas DataFrame, got {type(rows).__name__}")
    if timestamp_column not in rows.columns:
        raise KeyError(f"rows have no timestamp column {timestamp_column!r}; pass timestamp_column=...")
    missing = sorted({e for name in by_set for e in sets[name].entity_names if e not in rows.columns})
    if missing:
        raise KeyError(f"rows lack entity column(s) {missing} needed by feature vector {vector.name!r}")
    if rows[timestamp_column].isna().any():
        raise ValueError(f"rows have null timestamps in {timestamp_column!r}")
    query_ts = to_epoch_ms(rows[timestamp_column]) if len(rows) else np.zeros(0, dtype=np.int64)

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if engine == "spark":
        from .spark_engine import spark_session

        spark = spark or spark_session(spark_master)
    tasks = [
        _plan(sets[set_name], names, rows, query_ts, store, partitions, workers, spark)
        for set_name, names in by_set.items()
    ]
    if snapshot is not None:
        for task in tasks:
            task.offsets_upto = _snapshot_of(snapshot, task.fs.name)
    bar = _progress(sum(t.partitions for t in tasks), progress)
    computed: dict[tuple[str, str], pd.Series] = {}
    try:
        for task in tasks:
            frame = _compute_set(task, rows, query_ts, store, as_known_at, bar, workers, spark)
            for feature in task.requested:
                computed[(task.fs.name, feature)] = frame[feature]
    finally:
        bar.close()

    result = rows.copy()
    counts = pd.Series([f for _, f in order]).value_counts()
    for set_name, feature in order:
        clash = counts[feature] > 1 or feature in rows.columns
        column = f"{set_name}.{feature}" if clash else feature
        result[column] = computed[(set_name, feature)].array  # an extension array keeps Int64/boolean
    if out is not None:
        write_parquet_atomic(pa.Table.from_pandas(result, preserve_index=False), open_location(out))
    return result


def _resolve(vector, registry) -> tuple[dict[str, FeatureSet], FeatureVector]:
    if isinstance(registry, Registry):
        sets = dict(registry.feature_sets)
    elif isinstance(registry, Mapping):
        sets = dict(registry)
    elif registry is not None:
        sets = {fs.name: fs for fs in registry}
    else:
        sets = {}
    if isinstance(vector, str):
        if not isinstance(registry, Registry):
            raise ValueError(
                f"feature vector {vector!r} given by name: pass registry=<the project's Registry>"
            )
        vector = registry.vector(vector)
    if not isinstance(vector, FeatureVector):
        raise TypeError(f"vector must be a FeatureVector or its name, got {type(vector).__name__}")
    if not sets:
        raise ValueError(
            f"feature vector {vector.name!r}: pass registry= (a Registry or the FeatureSets) to resolve its features"
        )
    return sets, vector


def _snapshot_of(snapshot: Mapping[str, Mapping[int, int]], set_name: str) -> dict[int, int]:
    if set_name not in snapshot:
        raise KeyError(f"the data snapshot has no offsets of feature set {set_name!r}")
    return {int(p): int(o) for p, o in snapshot[set_name].items()}


def _vector_order(vector: FeatureVector, sets: Mapping[str, FeatureSet]) -> list[tuple[str, str]]:
    order: list[tuple[str, str]] = []
    for ref in vector.features:
        set_name, feature = ref.split(".")
        names = sets[set_name].feature_names() if feature == "*" else [feature]
        order.extend((set_name, f) for f in names if (set_name, f) not in order)
    return order


def _plan(fs: FeatureSet, requested, rows, query_ts, store, partitions, workers, spark=None) -> _SetTask:
    on_read = {o.name for o in fs.on_read}
    aggregated = [f.name for f in fs.plan.features] + [f.name for f in fs.plan.latest]
    if not any(name in on_read for name in requested):
        aggregated = [name for name in aggregated if name in requested]
    keys = entity_keys(fs, rows)
    if len(rows):
        reach = fs.plan.reach_ms  # None: a plain feature without ttl may read any earlier event
        start_ms = 0 if reach is None else int(query_ts.min()) - reach
        end_ms = int(query_ts.max())
    else:
        start_ms = end_ms = 0
    if partitions is None:
        events = count_events(fs, store, start_ms, end_ms) if len(rows) else 0
        if spark is not None:
            from .spark_engine import buckets

            partitions = buckets(spark, events)
        else:  # workers hold a partition each at the same time: smaller partitions keep the total bounded
            partitions = max(1, math.ceil(events * workers / TARGET_EVENTS_PER_PARTITION))
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return _SetTask(
        fs,
        list(requested),
        aggregated,
        keys,
        entity_partitions(keys, partitions),
        partitions,
        start_ms,
        end_ms,
    )


def _needed_columns(fs: FeatureSet) -> list[str] | None:
    if fs.transforms:
        return None  # a transform may read any column
    return list(dict.fromkeys([*fs.entity_names, fs.timestamp_key, *fs.plan.columns]))


def _compute_set(
    task: _SetTask, rows, query_ts, store, as_known_at: bool, bar, workers: int, spark=None
) -> pd.DataFrame:
    fs, n = task.fs, len(rows)
    values: dict[str, np.ndarray] = {}
    needed = np.unique(task.partition_of_row).tolist()
    bar.update(task.partitions - len(needed))  # partitions without rows: nothing to do
    for idx, part in _partition_results(task, query_ts, store, as_known_at, workers, spark, needed):
        for name, column in part.items():
            target = values.get(name)
            if target is None:
                target = values[name] = np.empty(n, dtype=column.dtype)
            elif target.dtype != column.dtype:
                target = values[name] = target.astype(object)
            target[idx] = column
        bar.update(1)
    frame = feature_frame(fs, values, task.aggregated, n)
    if n == 0:
        frame = feature_frame(
            fs, {name: np.zeros(0, dtype=object) for name in task.aggregated}, task.aggregated, 0
        )
    return apply_on_read(fs, rows, frame)


def _partition_results(task: _SetTask, query_ts, store, as_known_at, workers, spark, needed):
    """(row positions, features) of each entity-hash partition that has rows: on Spark, or here."""
    if spark is not None:
        from .spark_engine import training_partitions

        yield from training_partitions(task, query_ts, store, as_known_at, spark)
        return
    with PartitionedEvents(
        task.fs,
        store,
        partitions=task.partitions,
        needed=needed,
        columns=_needed_columns(task.fs),
        start_ms=task.start_ms,
        end_ms=task.end_ms,
        arrival_until_ms=task.end_ms if as_known_at else None,
        offsets_upto=task.offsets_upto,
    ) as split:
        job = _Job(task, split, query_ts, as_known_at)
        for p, part in _run(job, needed, workers):
            yield job.rows_of(p), part


@dataclass
class _Job:
    """Everything one feature set's partitions need; each partition runs in process or as a _PartitionWork."""

    task: _SetTask
    split: PartitionedEvents
    query_ts: np.ndarray
    as_known_at: bool

    def rows_of(self, p: int) -> np.ndarray:
        return np.flatnonzero(self.task.partition_of_row == p)

    def __call__(self, p: int) -> tuple[int, dict[str, np.ndarray]]:
        idx = self.rows_of(p)
        events = self.split.frame(p)
        return p, _partition_features(
            self.task, events, self.task.keys[idx], self.query_ts[idx], self.as_known_at
        )

    def work(self, p: int) -> _PartitionWork:
        idx = self.rows_of(p)
        path = str(self.split.path(p)) if self.split.rows[p] else None
        # Only this partition's rows travel, not the task's arrays over all rows.
        task = replace(
            self.task, keys=np.zeros(0, dtype=object), partition_of_row=np.zeros(0, dtype=np.int64)
        )
        return _PartitionWork(
            task, self.split.schema, path, self.task.keys[idx], self.query_ts[idx], self.as_known_at
        )


@dataclass
class _PartitionWork:
    """One partition's work as it travels to a worker process: its spill file's path, not its events."""

    task: _SetTask
    schema: pa.Schema
    events_path: str | None
    keys: np.ndarray
    ts: np.ndarray
    as_known_at: bool


def _compute_partition(work: _PartitionWork) -> dict[str, np.ndarray]:
    """Runs in a worker process: read the partition's spilled events and compute its rows' features."""
    table = (
        pa.ipc.open_file(pa.memory_map(work.events_path)).read_all()
        if work.events_path
        else work.schema.empty_table()
    )
    events = table_to_frame(work.task.fs, table)
    return _partition_features(work.task, events, work.keys, work.ts, work.as_known_at)


def _run(job: _Job, partitions: list[int], workers: int):
    """(partition, features) for each partition: in process, or in ``workers`` worker processes.

    Worker processes need the feature set pickled; one that cannot be (a lambda transform) is computed
    in process, with a warning.
    """
    if workers <= 1 or len(partitions) <= 1:
        yield from map(job, partitions)
        return
    if not portable(job.task.fs):
        log.warning(
            "feature set %r cannot be pickled (a lambda or a nested function?): computing it in one "
            "process; define its functions at module level to use workers",
            job.task.fs.name,
        )
        yield from map(job, partitions)
        return
    works = {p: job.work(p) for p in partitions}
    yield from run_partitions(_compute_partition, works, workers, lambda p: job(p)[1])


def _partition_features(task: _SetTask, events: pd.DataFrame, keys, ts, as_known_at: bool) -> dict:
    """One entity-hash partition: its rows' features from its events, through the shared kernel."""
    seq = tie_rank(events)
    values = features_at(task.fs, events, keys, ts, seq=seq, features=task.aggregated)
    if as_known_at:
        values = known_at(task.fs, events, seq, keys, ts, values, task.aggregated)
    return values


def _progress(total: int, enabled: bool):
    return progress_bar(total, "partition", "training set", enabled=enabled)
