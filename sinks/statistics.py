"""Statistics of a feature set's stored events, kept next to the dataset as ``<dataset>/_statistics.json``.

``refresh_statistics`` scans one consistent snapshot of the dataset (the shared snapshot lock is held,
so no compaction or retention is applied in between) in record batches, twice: pass 1 for counts,
moments, min/max and a bounded sample, pass 2 for exact histograms (``aggregations.stats``). Memory is
bounded by the batch size and the sample, not by the history. ``featurestream compact`` runs it after
compacting; ``featurestream describe SET`` prints the file.

The columns are those the feature set stores (its schema: the inputs of its features), so the file says
what the features were computed from; statistics of computed features come from ``preview`` or
``featurestream describe FILE.parquet`` on a training set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from aggregations import FeatureSet
from aggregations.stats import DEFAULT_SAMPLE_SIZE, StatisticsBuilder

from .dataset import data_files
from .layout import dataset_dir
from .records import arrow_schema
from .snapshot import reading
from .storage import arrow_files
from .writer import write_text_atomic

STATISTICS_FILE = "_statistics.json"
BATCH_ROWS = 256 * 1024


def statistics_path(fs: FeatureSet, store: str | Path) -> Path:
    return dataset_dir(store, fs.name) / STATISTICS_FILE


def compute_statistics(fs: FeatureSet, store: str | Path, sample_size: int = DEFAULT_SAMPLE_SIZE) -> dict[str, Any]:
    """Statistics of every stored column of ``fs`` (see the module docstring); zero rows if no data."""
    builder = StatisticsBuilder(sample_size=sample_size)
    columns = list(fs.schema)
    root = dataset_dir(store, fs.name)
    files: list = []
    with reading(root):
        files = data_files(fs, store)
        if files:
            filesystem, paths = arrow_files([f.path for f in files])
            dataset = ds.dataset(paths, format="parquet", schema=arrow_schema(fs), filesystem=filesystem)
            for fold in (builder.add, builder.add_histogram):
                for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
                    if batch.num_rows:
                        fold(batch.to_pandas())
    result = builder.result()
    for column in columns:  # columns of an empty dataset still appear
        result["features"].setdefault(column, {"type": _declared_kind(fs.schema[column]), "count": 0, "nulls": 0})
    return {
        "feature_set": fs.name,
        "source": "dataset",
        "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": len(files),
        "sample_size": sample_size,
        "entities": list(fs.entity_names),
        "timestamp_key": fs.timestamp_key,
        **result,
    }


def _declared_kind(dtype: str) -> str:
    if dtype == "timestamp":
        return "timestamp"
    if dtype in ("string",):
        return "string"
    return "bool" if dtype == "bool" else "numeric"


def write_statistics(fs: FeatureSet, store: str | Path, statistics: dict[str, Any]) -> Path:
    """Write ``_statistics.json`` atomically (temp file, fsync, rename)."""
    path = statistics_path(fs, store)
    write_text_atomic(path, json.dumps(statistics, indent=1, allow_nan=False))
    return path


def refresh_statistics(fs: FeatureSet, store: str | Path, sample_size: int = DEFAULT_SAMPLE_SIZE) -> dict[str, Any]:
    """Compute and write the statistics of ``fs``'s dataset; returns them."""
    statistics = compute_statistics(fs, store, sample_size)
    write_statistics(fs, store, statistics)
    return statistics


def read_statistics(fs: FeatureSet, store: str | Path) -> dict[str, Any] | None:
    """The stored statistics, or None if none were written yet."""
    try:
        return json.loads(statistics_path(fs, store).read_text())
    except FileNotFoundError:
        return None
