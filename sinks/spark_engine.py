"""The offline side on Apache Spark: training-set partitions and bootstrap states computed by Spark tasks.

The work is the local engine's, split the same way and computed by the same kernel; Spark only distributes it:

1. The driver lists the data files of one consistent snapshot (``snapshot.live_parts``: a compaction's
   journal applied; on a local store the shared snapshot lock is held until the job ends, on an object
   store deletion waits for the grace period). Spark tasks read those files through pyarrow's filesystem
   layer (a local path or ``s3://``: the same code, filters and credentials as the local engine), and tag
   each event with its entity-hash partition (``dataset.batch_partitions``, the local engine's hash).
2. Query rows get the same partition on the driver (``entity_partitions`` of their entity keys).
3. Events and query rows are co-partitioned by that partition number and each partition is one group of
   ``cogroup(...).applyInArrow``, computed by ``offline._partition_features`` (training sets) or
   ``online_state.partition_states`` (bootstrap): the kernel of ``aggregations/``, no formula in Spark SQL.
4. Each group's result travels back as one binary value (the kernel's numpy arrays, pickled) and the driver
   places it exactly as the local engine does, so both engines give the same columns and values.

A definitions file loaded by path is not importable on executors: its module is pickled by value.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from aggregations import FeatureSet
from aggregations.loading import loaded_definition_files

from .dataset import batch_partitions, data_files, plain, scan_columns, scan_files
from .layout import dataset_dir
from .records import timestamps_as_ms
from .snapshot import reading

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
BYTES_PER_READ_TASK = 64 << 20
_SPARK_TYPES = {
    pa.string(): "string",
    pa.large_string(): "string",
    pa.int64(): "bigint",
    pa.int32(): "int",
    pa.float64(): "double",
    pa.bool_(): "boolean",
}


def spark_session(master: str | None = None, conf: dict[str, str] | None = None):
    """The active SparkSession, else a new one on ``master`` (default ``FEATURESTREAM_SPARK_MASTER`` or local[*]).

    A new session runs Python tasks with this interpreter unless ``PYSPARK_PYTHON`` says otherwise (on a
    real cluster, set it to a Python that has featurestream installed), and passes this process's ``AWS_*``
    variables to executors so that they reach the same object store.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ImportError(f"the Spark engine needs pyspark: pip install 'featurestream[spark]' ({exc})") from None

    # PySpark warns on every Arrow call under pandas 3; this engine hands pyspark Arrow only, never pandas.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    active = SparkSession.getActiveSession()
    if active is not None:
        if master is not None and active.sparkContext.master != master:
            raise ValueError(
                f"a Spark session on {active.sparkContext.master} is already running in this process (one per "
                f"process): stop it, or pass spark=<that session> instead of master {master!r}"
            )
        return active
    master = master or os.environ.get("FEATURESTREAM_SPARK_MASTER") or DEFAULT_MASTER
    # pyspark takes the executors' Python from the environment when the context starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # a local driver listens on loopback only
    builder = (
        SparkSession.builder.master(master)
        .appName("featurestream")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .config("spark.driver.memory", os.environ.get("FEATURESTREAM_SPARK_DRIVER_MEMORY", "2g"))
    )
    for key, value in os.environ.items():
        if key.startswith("AWS_"):
            builder = builder.config(f"spark.executorEnv.{key}", value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("FEATURESTREAM_SPARK_LOG_LEVEL", "WARN"))
    return session


def _pickle_definitions_by_value(fs: FeatureSet) -> None:
    """Modules executors cannot import (definitions files loaded by path, test modules) travel by value."""
    from pyspark import cloudpickle

    names = set(loaded_definition_files())
    for fn in [*fs.transforms, *(o.fn for o in fs.on_read)]:
        module = getattr(fn, "__module__", None)
        if module and module not in ("__main__",) and module.split(".")[0] not in ("aggregations", "sinks"):
            names.add(module)
    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            with contextlib.suppress(ValueError):
                cloudpickle.register_pickle_by_value(module)


def _read_tasks(spark, files) -> int:
    total = sum(int(f.path.stat().st_size) for f in files)
    parallelism = spark.sparkContext.defaultParallelism
    return max(1, min(len(files), max(parallelism, math.ceil(total / BYTES_PER_READ_TASK))))


def buckets(spark, events: int) -> int:
    """Entity-hash partitions of a Spark job: about 1M events each, and at least two per core."""
    from .offline import TARGET_EVENTS_PER_PARTITION

    return max(2 * spark.sparkContext.defaultParallelism, math.ceil(events / TARGET_EVENTS_PER_PARTITION))


def event_frame(spark, fs: FeatureSet, files, partitions: int, columns, start_ms, end_ms, arrival_until_ms, offsets_upto):
    """A Spark DataFrame of the events in ``files`` (rows filtered as the local engine filters them), each
    with its entity-hash partition ``_bucket``; timestamps as int64 epoch ms."""
    out_schema, read_columns = scan_columns(fs, columns, partitions > 1)
    paths = [f.path for f in files]
    ms_schema = pa.schema(
        [pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in out_schema]
    )
    ddl = ", ".join(f"`{f.name}` {_SPARK_TYPES[f.type]}" for f in ms_schema) + ", `_bucket` int"

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for ids in batches:
            mine = [paths[i] for i in ids.column(0).to_pylist()]
            for batch in scan_files(fs, mine, read_columns, start_ms, end_ms, arrival_until_ms, offsets_upto):
                part = (
                    batch_partitions(fs, batch, partitions)
                    if partitions > 1
                    else np.zeros(batch.num_rows, dtype=np.int64)
                )
                table = timestamps_as_ms(pa.Table.from_batches([plain(batch.select(out_schema.names), out_schema)]))
                table = table.append_column("_bucket", pa.array(part.astype(np.int32)))
                yield from table.to_batches()

    ids = spark.range(len(paths), numPartitions=_read_tasks(spark, files))
    return ids.mapInArrow(read, ddl)


def query_frame(spark, keys: np.ndarray, ts: np.ndarray, bucket_of_row: np.ndarray):
    """Query rows as a Spark DataFrame: position, entity key, time (epoch ms) and entity-hash partition."""
    table = pa.table(
        {
            "_row": pa.array(np.arange(len(keys), dtype=np.int64)),
            "_key": pa.array(np.asarray(keys, dtype=object), type=pa.string()),
            "_ts": pa.array(np.asarray(ts, dtype=np.int64)),
            "_bucket": pa.array(np.asarray(bucket_of_row, dtype=np.int32)),
        }
    )
    return spark.createDataFrame(table)


def _events_of(fs: FeatureSet, table: pa.Table):
    from .records import table_to_frame

    return table_to_frame(fs, table.drop_columns(["_bucket"]))


def training_partitions(task, query_ts: np.ndarray, store, as_known_at: bool, spark) -> Iterator[tuple[np.ndarray, dict]]:
    """(row positions, features) of each entity-hash partition of a training-set task, computed on Spark."""
    from .offline import _partition_features

    fs = task.fs
    _pickle_definitions_by_value(fs)
    with reading(dataset_dir(store, fs.name)):  # a local store: no compaction is applied until the job ends
        files = data_files(fs, store, task.start_ms, task.end_ms)
        events = event_frame(
            spark, fs, files, task.partitions, _columns_needed(fs), task.start_ms, task.end_ms,
            task.end_ms if as_known_at else None, task.offsets_upto,
        )  # fmt: skip
        queries = query_frame(spark, task.keys, query_ts, task.partition_of_row)
        light = _without_rows(task)

        def compute(left: pa.Table, right: pa.Table) -> pa.Table:
            if right.num_rows == 0:
                return pa.table({"_bucket": pa.array([], pa.int32()), "payload": pa.array([], pa.binary())})
            events_of_bucket = _events_of(fs, left)
            keys = right.column("_key").to_numpy(zero_copy_only=False).astype(object)
            ts = right.column("_ts").to_numpy()
            values = _partition_features(light, events_of_bucket, keys, ts, as_known_at)
            rows = right.column("_row").to_numpy()
            payload = pickle.dumps((rows, values), protocol=pickle.HIGHEST_PROTOCOL)
            bucket = int(right.column("_bucket")[0].as_py())
            return pa.table({"_bucket": pa.array([bucket], pa.int32()), "payload": pa.array([payload], pa.binary())})

        n = task.partitions
        grouped = events.repartition(n, "_bucket").groupBy("_bucket").cogroup(
            queries.repartition(n, "_bucket").groupBy("_bucket")
        )
        result = grouped.applyInArrow(compute, "_bucket int, payload binary")
        # collect, not toLocalIterator: every partition computes in parallel; what comes back is the
        # training set itself (the rows' features), never the history.
        for row in result.collect():
            rows, values = pickle.loads(row["payload"])
            yield rows, values


def _without_rows(task):
    from dataclasses import replace

    return replace(task, keys=np.zeros(0, dtype=object), partition_of_row=np.zeros(0, dtype=np.int64))


def _columns_needed(fs: FeatureSet) -> list[str] | None:
    from .offline import _needed_columns

    return _needed_columns(fs)


def bootstrap_partitions(
    fs: FeatureSet, store, now: int, partitions: int | None, spark, source_partitions: int
) -> Iterator[Any]:
    """``online_state.PartitionStates`` of each entity-hash partition of the dataset, computed on Spark
    (``source_partitions``: the source topic's partition count, which decides each entity's home)."""
    from aggregations.codec import EntityStateCodec

    from .dataset import count_events
    from .online_state import _columns, partition_states

    _pickle_definitions_by_value(fs)
    n = partitions or buckets(spark, count_events(fs, store))
    with reading(dataset_dir(store, fs.name)):
        files = data_files(fs, store)
        events = event_frame(spark, fs, files, n, _columns(fs), None, None, None, None)

        def compute(batches: pa.Table) -> pa.Table:
            states = partition_states(fs, _events_of(fs, batches), now, EntityStateCodec(fs), source_partitions)
            payload = pickle.dumps(states, protocol=pickle.HIGHEST_PROTOCOL)
            return pa.table({"payload": pa.array([payload], pa.binary())})

        result = events.repartition(n, "_bucket").groupBy("_bucket").applyInArrow(compute, "payload binary")
        for row in result.collect():  # in parallel; the states are what bootstrap produces anyway
            yield pickle.loads(row["payload"])
