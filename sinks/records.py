"""The Arrow schema of a feature set's stored events, and conversions to and from it.

Stored columns: the feature set's schema (strings, int64, float64, bool; every ``timestamp`` column,
the event time included, as ``timestamp[ms, UTC]``), then three columns that say where each event came
from: ``_partition`` (int32, Kafka partition), ``_offset`` (int64, Kafka offset) and ``_arrival``
(``timestamp[ms, UTC]``, the record's broker timestamp). ``_arrival`` orders events of equal timestamp
(first/last ties) and answers "as known at" reads; partition and offset identify each event exactly
once. Nulls are stored as Parquet nulls (a float NaN from the validator's frame becomes null).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aggregations import FeatureSet

TIMESTAMP = pa.timestamp("ms", tz="UTC")
META_COLUMNS = ("_partition", "_offset", "_arrival")
_META_TYPES = {"_partition": pa.int32(), "_offset": pa.int64(), "_arrival": TIMESTAMP}
_ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": TIMESTAMP,
}


def arrow_schema(fs: FeatureSet) -> pa.Schema:
    """Schema of the stored events of ``fs``: its columns in declaration order, then the meta columns."""
    fields = [pa.field(column, _ARROW_TYPES[dtype]) for column, dtype in fs.schema.items()]
    fields += [pa.field(name, _META_TYPES[name], nullable=False) for name in META_COLUMNS]
    return pa.schema(fields)


def events_table(
    fs: FeatureSet, frame: pd.DataFrame, partition: int, offsets: np.ndarray, arrivals: np.ndarray
) -> pa.Table:
    """Validated events (``EventValidator.to_frame``) plus their Kafka coordinates -> a table of ``arrow_schema``."""
    schema = arrow_schema(fs)
    n = len(frame)
    if len(offsets) != n or len(arrivals) != n:
        raise ValueError(f"{n} events but {len(offsets)} offsets and {len(arrivals)} arrival times")
    arrays = []
    for column, dtype in fs.schema.items():
        series = frame[column]
        if dtype == "timestamp":
            ints = pa.array(series.astype("Int64"), type=pa.int64(), from_pandas=True)
            arrays.append(ints.cast(TIMESTAMP))
        elif dtype == "string":
            arrays.append(pa.array(series.astype(object), type=pa.string(), from_pandas=True))
        else:
            arrays.append(pa.array(series, type=_ARROW_TYPES[dtype], from_pandas=True))
    arrays.append(pa.array(np.full(n, partition, dtype=np.int32)))
    arrays.append(pa.array(np.asarray(offsets, dtype=np.int64)))
    arrays.append(pa.array(np.asarray(arrivals, dtype=np.int64)).cast(TIMESTAMP))
    return pa.Table.from_arrays(arrays, schema=schema)


def timestamps_as_ms(table: pa.Table) -> pa.Table:
    """Every timestamp column of ``table`` as int64 epoch milliseconds."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            ms = pc.cast(table.column(i), pa.timestamp("ms", tz=field.type.tz)).cast(pa.int64())
            table = table.set_column(i, pa.field(field.name, pa.int64(), field.nullable), ms)
    return table


def table_to_frame(fs: FeatureSet, table: pa.Table) -> pd.DataFrame:
    """Stored events -> a frame like the validator's (``to_frame``): timestamps as int64 ms, meta columns int64.

    The event time and the meta columns are never null, so they become plain int64; other timestamp
    and int64 columns are nullable ``Int64``, bools ``boolean``; strings keep pandas' ``str`` dtype.
    """
    table = timestamps_as_ms(table)
    nullable_ints = {  # converted apart: to_pandas makes an int column with nulls float (ints > 2**53 lost)
        column: table.column(column).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        for column, dtype in fs.schema.items()
        if dtype in ("int64", "timestamp") and column != fs.timestamp_key and column in table.column_names
    }
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    for column in frame.columns:
        dtype = fs.schema.get(column)
        if column in nullable_ints:
            frame[column] = nullable_ints[column].array
        elif dtype == "bool":
            frame[column] = frame[column].astype("boolean")
        elif column == fs.timestamp_key or column in META_COLUMNS:
            frame[column] = frame[column].astype(np.int64)
    return frame
