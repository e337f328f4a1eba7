"""Batch ingestion without writing a producer: ``featurestream.ingest(feature_set, df)`` and ``featurestream ingest``.

Two paths, one decoder (``aggregations.EventValidator``: the same types, timestamps and future bound as the
stream); rows that fail it are reported with their reasons and never written:

* **live** (default): the rows are produced to the feature set's source topic, keyed by entity, each with a
  header ``featurestream-ingest: <ingest id>:<row>``. The worker applies them to online state and the sink
  writes them to the offline store like any event, so both sides stay effectively once and ``verify``
  passes. Rows older than what online state keeps are late online (offline only), as any late event.
* **history** (``offline_only``): the rows are written straight to the Parquet dataset, under a partition
  number no source topic uses (60000 and up: each ingest id claims its own, safely even when several ingests
  run at once, see ``sinks.ingest_records``; offsets are row numbers), for history older than any live state
  or than the topic's retention. Then ``featurestream bootstrap`` builds online state from the dataset.

The data dir may be a local directory or an object store (``s3://bucket/prefix``, through ``sinks.storage``).
Re-running the same ingest does nothing twice. The ingest id is a hash of the feature set and the validated
rows; ``<dataset>/_ingests/<id>.json`` records each ingest. History: the rows already in the dataset under the
ingest's partition are skipped (and a run killed half-way is completed). Live: the record says when the ingest
started and finished; a re-run of a finished one is skipped, and one that was interrupted scans the topic from
its start for the rows already produced (their headers) and produces only the rest. The same rows cannot be
ingested both ways (they would be in the dataset twice: once through the sink, once as history).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from aggregations import EventValidator, FeatureSet
from aggregations.schema import DEFAULT_MAX_FUTURE, InvalidValue, entity_keys

HEADER = "featurestream-ingest"
MAX_REASONS = 20
HISTORY_BLOCK = 100_000  # rows per write: files are per (block, day), so every run names them alike
STALE_TEMP_S = 3600.0  # a history ingest's temporary file older than this was left by a killed run


@dataclass
class IngestResult:
    """What an ingest did: rows read, valid, rejected (with the first reasons), written or produced, skipped."""

    feature_set: str
    ingest_id: str
    mode: str
    rows: int = 0
    valid: int = 0
    rejected: int = 0
    written: int = 0
    skipped: int = 0  # already ingested by an earlier run
    reasons: list[str] = field(default_factory=list)
    partition: int | None = None  # history: the dataset partition of this ingest

    def summary(self) -> str:
        done = "written to the dataset" if self.mode == "history" else "produced to the source topic"
        text = (
            f"ingest {self.ingest_id[:16]} of {self.feature_set}: {self.rows} rows, {self.valid} valid, "
            f"{self.rejected} rejected; {self.written} {done}, {self.skipped} already ingested"
        )
        if self.reasons:
            text += "\n  rejected: " + "\n  rejected: ".join(self.reasons)
        return text


# -- reading and validating -------------------------------------------------------------------------------


def read_source(path: str | Path) -> pd.DataFrame:
    """A Parquet or CSV file, or a directory of them (read in name order), as one frame."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".csv") and p.is_file())
        if not files:
            raise FileNotFoundError(f"no .parquet or .csv files under {str(path)!r}")
        return pd.concat([read_source(f) for f in files], ignore_index=True)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raise ValueError(f"{str(path)!r}: ingest reads .parquet and .csv files")


def _python(value, dtype: str | None):
    """A frame cell as the JSON value an event would carry (CSV cells arrive as strings)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp | datetime):
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.value // 1_000_000)
    if isinstance(value, date):
        return int(pd.Timestamp(value, tz="UTC").value // 1_000_000)
    if isinstance(value, str) and dtype not in (None, "string"):
        return _from_text(value, dtype)
    return value


def _from_text(text: str, dtype: str):
    """A CSV cell for a typed column: numbers and booleans parsed, anything else left for the validator."""
    try:
        if dtype == "int64":
            return int(text)
        if dtype == "float64":
            return float(text)
        if dtype == "timestamp":
            return int(text) if text.lstrip("-").isdigit() else text
    except ValueError:
        return text
    if dtype == "bool":
        return {"true": True, "false": False, "1": True, "0": False}.get(text.strip().lower(), text)
    return text


def validate(fs: FeatureSet, frame: pd.DataFrame, now_ms: int, max_future: str = DEFAULT_MAX_FUTURE):
    """Rows of ``frame`` through the shared validator: (valid typed rows, their row numbers, reasons)."""
    validator = EventValidator(fs, max_future=max_future)
    columns = [c for c in frame.columns if c in fs.schema]
    missing = [c for c in (*fs.entity_names, fs.timestamp_key) if c not in frame.columns]
    if missing:
        raise KeyError(f"ingest rows lack column(s) {missing} of feature set {fs.name!r}")
    dtypes = [fs.schema[c] for c in columns]
    valid, numbers, reasons = [], [], []
    for i, values in enumerate(zip(*(frame[c].tolist() for c in columns), strict=True)):
        obj = {c: _python(v, d) for c, v, d in zip(columns, values, dtypes, strict=True)}
        try:
            valid.append(validator.validate(obj, now_ms))
            numbers.append(i)
        except InvalidValue as exc:
            reasons.append(f"row {i}: {exc}")
    return valid, numbers, reasons


def ingest_id(fs: FeatureSet, rows: list[dict]) -> str:
    """A hash of the feature set and the validated rows: the same data ingests under the same id."""
    digest = hashlib.sha256(fs.name.encode())
    for row in rows:
        digest.update(json.dumps([row.get(c) for c in fs.schema], default=str).encode())
    return digest.hexdigest()


# -- the two paths -------------------------------------------------------------------------------------------


def ingest(
    feature_set: FeatureSet,
    data: pd.DataFrame | str | Path,
    *,
    data_dir: str | Path = "data",
    broker: str | None = None,
    topic: str | None = None,
    offline_only: bool = False,
    arrival: str = "now",
    max_future: str = DEFAULT_MAX_FUTURE,
    progress: bool | None = None,
    client_config: dict | None = None,
) -> IngestResult:
    """Ingest a DataFrame, or a Parquet/CSV file or directory (see the module docstring).

    Live (default): produced to ``topic`` (default the set's source) on ``broker``; the sink writes them
    to ``data_dir``. ``offline_only``: written to ``data_dir`` directly, then run ``featurestream
    bootstrap``; ``arrival``: what ``_arrival`` (as-known-at) the rows get: ``"now"`` or ``"event"`` (their
    own timestamp: history that was known when it happened). ``progress``: a bar (default: on a terminal).
    """
    frame = data if isinstance(data, pd.DataFrame) else read_source(data)
    now_ms = int(time.time() * 1000)
    rows, _, reasons = validate(feature_set, frame, now_ms, max_future)
    result = IngestResult(
        feature_set.name, ingest_id(feature_set, rows), "history" if offline_only else "live"
    )
    result.rows, result.valid, result.rejected = len(frame), len(rows), len(reasons)
    result.reasons = reasons[:MAX_REASONS]
    if progress is None:
        progress = sys.stderr.isatty()
    if not rows:
        return result
    if offline_only:
        if arrival not in ("now", "event"):
            raise ValueError(f"arrival must be 'now' or 'event', got {arrival!r}")
        _write_history(feature_set, rows, result, data_dir, now_ms, arrival, progress)
    else:
        if broker is None:
            raise ValueError(
                "a live ingest needs the Kafka broker (broker=...); offline_only=True writes history"
            )
        _produce(feature_set, rows, result, data_dir, broker, topic, progress, client_config or {})
    return result


def _records(data_dir, fs: FeatureSet):
    from sinks.ingest_records import IngestRecords
    from sinks.layout import dataset_dir

    return IngestRecords(dataset_dir(data_dir, fs.name))


def _refuse_other_mode(record: dict | None, mode: str, ingest: str) -> None:
    """The same rows ingested live and as history would be in the dataset twice."""
    if not record:
        return
    other = "history" if "partition" in record else "live" if "topic" in record else None
    if other is not None and other != mode:
        where = f"partition {record['partition']}" if other == "history" else f"topic {record['topic']!r}"
        raise ValueError(
            f"ingest {ingest[:16]}: these rows were already ingested {other} ({where}); a {mode} ingest of them "
            "would store them twice"
        )


def _write_history(fs, rows, result, data_dir, now_ms, arrival, progress) -> None:
    from sinks.writer import write_batch, written_offsets

    records = _records(data_dir, fs)
    _refuse_other_mode(records.get(result.ingest_id), "history", result.ingest_id)
    root = records.root
    partition = result.partition = records.partition(result.ingest_id, len(rows))
    _remove_stale_temps(root, partition)
    done = written_offsets(root, partition)
    todo = np.setdiff1d(np.arange(len(rows), dtype=np.int64), done)
    result.skipped = len(rows) - len(todo)
    validator = EventValidator(fs)
    bar = _bar(len(todo), progress, f"ingest {fs.name}")
    try:
        # Whole blocks of row numbers, so a re-run (or a concurrent run of the same ingest) writes the same
        # (block, day) files under the same names: a file is either there with all its rows, or written again.
        for _, chunk in pd.Series(todo).groupby(todo // HISTORY_BLOCK):
            chunk = chunk.to_numpy(dtype=np.int64)
            frame = validator.to_frame([rows[i] for i in chunk])
            ts = frame[fs.timestamp_key].to_numpy(dtype=np.int64)
            arrivals = ts if arrival == "event" else np.full(len(chunk), now_ms, dtype=np.int64)
            write_batch(fs, root, partition, frame, chunk, arrivals)
            result.written += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()


def _remove_stale_temps(root, partition: int) -> None:
    """Temporary files a killed run of this ingest left (local disks only: a store has none), old enough not
    to be a concurrent run's file in progress."""
    from sinks.layout import list_temps

    for path in list_temps(root, partition):
        try:
            if time.time() - path.stat().st_mtime > STALE_TEMP_S:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue


def _produce(fs, rows, result, data_dir, broker, topic, progress, client_config) -> None:
    from kafka import KafkaProducer

    topic = topic or fs.source
    records = _records(data_dir, fs)
    entry = records.get(result.ingest_id)
    _refuse_other_mode(entry, "live", result.ingest_id)
    if entry and entry.get("finished_at_ms"):
        result.skipped = len(rows)
        return
    already: set[int] = set()
    if entry:  # interrupted: find what it produced
        already = _produced_rows(broker, topic, result.ingest_id, entry["started_at_ms"], client_config)
    else:
        entry = {"mode": "live", "topic": topic, "rows": len(rows), "started_at_ms": int(time.time() * 1000)}
        records.put(result.ingest_id, entry)
    keys = entity_keys(fs, EventValidator(fs).to_frame(rows))
    producer = KafkaProducer(
        bootstrap_servers=broker, acks="all", enable_idempotence=True, linger_ms=20,
        max_in_flight_requests_per_connection=1, **client_config,
    )  # fmt: skip
    bar = _bar(len(rows) - len(already), progress, f"ingest {fs.name}")
    try:
        for i, row in enumerate(rows):
            if i in already:
                continue
            header = [(HEADER, f"{result.ingest_id}:{i}".encode())]
            value = json.dumps(row, separators=(",", ":")).encode()
            producer.send(topic, key=str(keys[i]).encode(), value=value, headers=header)
            result.written += 1
            bar.update(1)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
        bar.close()
    result.skipped = len(already)
    records.put(result.ingest_id, {**entry, "finished_at_ms": int(time.time() * 1000)})


def _produced_rows(broker: str, topic: str, ingest: str, since_ms: int, client_config: dict) -> set[int]:
    """Row numbers of ``ingest`` already on ``topic`` (records since ``since_ms`` carrying its header)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=broker, enable_auto_commit=False, group_id=None, **client_config
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        end = consumer.end_offsets(parts)
        start = consumer.offsets_for_times({tp: max(0, since_ms - 60_000) for tp in parts})
        todo = {tp: end[tp] for tp in parts if start.get(tp) is not None and start[tp].offset < end[tp]}
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, start[tp].offset)
        prefix, found = f"{ingest}:".encode(), set()
        while todo:
            for tp, records in consumer.poll(timeout_ms=1000, max_records=5000).items():
                for r in records:
                    for name, value in r.headers or []:
                        if name == HEADER and value.startswith(prefix):
                            found.add(int(value[len(prefix) :]))
                if consumer.position(tp) >= todo.get(tp, 0):
                    todo.pop(tp, None)
            for tp in list(todo):
                if consumer.position(tp) >= todo[tp]:
                    todo.pop(tp)
        return found
    finally:
        consumer.close()


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="row", desc=desc, disable=not enabled, leave=False)


def ingest_files(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Several files or directories as one frame (``featurestream ingest A.csv B.parquet``)."""
    return pd.concat([read_source(p) for p in paths], ignore_index=True)
