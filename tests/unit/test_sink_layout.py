"""The dataset layout: names, parsing, atomic durable writes, and what a restarted sink finds written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregations import Aggregation, Entity, EventValidator, FeatureSet
from sinks import layout
from sinks.records import arrow_schema
from sinks.writer import claim_source, remove_temps, write_batch, write_parquet_atomic, written_offsets

DAY = layout.DAY_MS
FS = FeatureSet(
    "payments",
    [Entity("user_id")],
    "ts",
    "payments",
    {
        "user_id": "string",
        "ts": "timestamp",
        "amount": "float64",
        "n": "int64",
        "ok": "bool",
        "at": "timestamp",
    },
    [Aggregation("amount", ["count", "sum"], windows=["1h"])],
)


def frame(rows):
    return EventValidator(FS).to_frame(rows)


def test_names_roundtrip():
    name = layout.part_name(3, 10, 42)
    assert name == "part-p3-o10-42.parquet"
    assert layout.parse_part(name) == (3, 10, 42)
    assert layout.date_label(0) == "1970-01-01"
    assert layout.date_label(19_000) == "2022-01-08"
    assert layout.parse_day("date=2022-01-08") == 19_000
    assert (
        layout.date_dir(layout.dataset_dir("/d", "payments"), 1).as_posix() == "/d/payments/date=1970-01-02"
    )


@pytest.mark.parametrize(
    "name",
    [
        "part-p3-o10-42.parquet.tmp",
        ".tmp-x-part-p3-o1-2.parquet",
        "part-p3-o42-10.parquet",
        "part-p-o1-2.parquet",
    ],
)
def test_non_data_names_are_ignored(name):
    assert layout.parse_part(name) is None


@pytest.mark.parametrize("bad", ["date=2022-13-01", "date=22-01-01", "dt=2022-01-01", "date=2022-01-01x"])
def test_bad_date_dirs_are_ignored(bad):
    assert layout.parse_day(bad) is None


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "1abc", "x" * 200])
def test_dataset_dir_rejects_unsafe_names(name):
    with pytest.raises(ValueError):
        layout.dataset_dir("/d", name)


@pytest.mark.parametrize("args", [(-1, 0, 0), (0, 5, 4), (0, "1; rm", 3), (1.5, 0, 1)])
def test_part_name_rejects_bad_numbers(args):
    with pytest.raises(ValueError):
        layout.part_name(*args)


def test_write_batch_splits_by_date_and_roundtrips(tmp_path):
    root = layout.dataset_dir(tmp_path, FS.name)
    rows = [
        {"user_id": "a", "ts": DAY - 1, "amount": 1.5, "n": 1, "ok": True, "at": 5},
        {"user_id": "b", "ts": DAY, "amount": None, "n": None, "ok": None, "at": None},
        {"user_id": "a", "ts": 3 * DAY + 7, "amount": 2.0, "n": -4, "ok": False, "at": 9},
    ]
    files = write_batch(FS, root, 2, frame(rows), np.array([10, 11, 13]), np.array([100, 101, 102]))
    names = sorted(p.relative_to(root).as_posix() for p in files)
    assert names == [
        "date=1970-01-01/part-p2-o10-10.parquet",
        "date=1970-01-02/part-p2-o11-11.parquet",
        "date=1970-01-04/part-p2-o13-13.parquet",
    ]
    table = pq.read_table(root / names[1])
    assert table.schema.equals(arrow_schema(FS))
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("_arrival").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("_partition").type == pa.int32()
    row = table.to_pylist()[0]
    assert row["amount"] is None and row["n"] is None and row["ok"] is None and row["at"] is None
    assert row["_offset"] == 11 and row["_partition"] == 2
    assert [p.partition for p in layout.list_parts(root)] == [2, 2, 2]
    assert not list(root.rglob(".tmp-*"))


def test_batch_across_dates_names_each_file_by_its_own_offsets(tmp_path):
    root = layout.dataset_dir(tmp_path, FS.name)
    rows = [{"user_id": "a", "ts": d * DAY, "amount": 1.0} for d in (0, 1, 0, 1, 0)]
    write_batch(FS, root, 0, frame(rows), np.array([5, 6, 7, 8, 9]), np.zeros(5))
    parts = {(p.day, p.first, p.last) for p in layout.list_parts(root)}
    assert parts == {(0, 5, 9), (1, 6, 8)}


def test_written_offsets_reads_exact_offsets_of_candidate_files(tmp_path):
    root = layout.dataset_dir(tmp_path, FS.name)
    rows = [{"user_id": "a", "ts": d * DAY, "amount": 1.0} for d in (0, 1, 0, 1, 0)]
    write_batch(FS, root, 0, frame(rows), np.array([5, 6, 7, 8, 9]), np.zeros(5))
    write_batch(FS, root, 1, frame(rows[:2]), np.array([5, 6]), np.zeros(2))
    # Simulate a crash that renamed only the date-0 file of a later batch (offsets 20, 22): 21 is missing.
    write_batch(FS, root, 0, frame([rows[0], rows[0]]), np.array([20, 22]), np.zeros(2))
    assert written_offsets(root, 0, 0).tolist() == [5, 6, 7, 8, 9, 20, 22]
    assert written_offsets(root, 0, 8).tolist() == [8, 9, 20, 22]
    assert written_offsets(root, 0, 23).tolist() == []
    assert written_offsets(root, 1, 0).tolist() == [5, 6]
    assert written_offsets(root, 7, 0).tolist() == []
    assert written_offsets(tmp_path / "missing", 0, 0).tolist() == []


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "date=1970-01-01" / "part-p0-o0-0.parquet"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_parquet_atomic(pa.table({"x": [1]}), target)
    assert list(target.parent.iterdir()) == []


def test_leftover_temp_files_are_hidden_and_removed(tmp_path):
    root = layout.dataset_dir(tmp_path, FS.name)
    final = layout.date_dir(root, 0) / layout.part_name(1, 0, 3)
    final.parent.mkdir(parents=True)
    stale = layout.temp_path(final)
    stale.write_bytes(b"partial")
    other = layout.temp_path(layout.date_dir(root, 0) / layout.part_name(2, 0, 3))
    other.write_bytes(b"partial")
    assert layout.list_parts(root) == []
    assert layout.list_temps(root, 1) == [stale]
    assert remove_temps(root, 1) == 1
    assert not stale.exists() and other.exists()


def test_to_frame_of_validator_is_what_write_batch_takes():
    rows = [{"user_id": "a", "ts": 1, "amount": 1.0}]
    f = frame(rows)
    assert f["ts"].dtype == np.int64
    assert isinstance(f, pd.DataFrame)


def test_a_dataset_belongs_to_one_topic(tmp_path):
    root = layout.dataset_dir(tmp_path, FS.name)
    claim_source(root, "payments")
    claim_source(root, "payments")
    with pytest.raises(ValueError, match="holds events of topic 'payments'"):
        claim_source(root, "other")
    assert layout.list_parts(root) == []


def test_a_sink_waits_for_a_broker_that_is_not_up_yet_then_gives_up(tmp_path):
    """Pure retry logic (the consumer class is a stand-in): a broker down at start is retried, not fatal."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    from aggregations.loading import load_registry
    from sinks.parquet_sink import ParquetSink

    fs = load_registry("examples/transactions/features.py").feature_set("transactions")
    sink = ParquetSink(fs, tmp_path, "127.0.0.1:1")
    sink.connect_retry_s = 0.01
    attempts = []

    def flaky(**config):
        attempts.append(config)
        if len(attempts) < 3:
            raise KafkaConnectionError("refused")
        return "consumer"

    assert sink._connect(flaky, {"bootstrap_servers": ["127.0.0.1:1"]}, timeout_s=5) == "consumer"
    assert len(attempts) == 3

    def down(**config):
        raise KafkaTimeoutError("Unable to bootstrap")

    with pytest.raises(KafkaTimeoutError):
        sink._connect(down, {}, timeout_s=0.05)
