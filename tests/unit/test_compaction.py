"""Compaction is invisible to readers: same (_partition, _offset) set, killed at any step included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregations import Aggregation, Entity, EventValidator, FeatureSet
from sinks import read_events
from sinks.compaction import compact, plan
from sinks.layout import DAY_MS, dataset_dir, list_parts
from sinks.snapshot import JOURNAL, STAGED_PREFIX, live_parts, read_journal
from sinks.writer import write_batch, written_offsets

FS = FeatureSet(
    "pay",
    [Entity("user_id")],
    "ts",
    "pay",
    {"user_id": "string", "ts": "timestamp", "amount": "float64"},
    [Aggregation("amount", ["count", "sum"], windows=["1h"])],
)
T0 = 20_000 * DAY_MS


def fill(store, batches=12, size=40, seed=0):
    """Small files over two days and two Kafka partitions, offsets of a batch interleaving the days."""
    rng = np.random.default_rng(seed)
    root = dataset_dir(store, FS.name)
    validator = EventValidator(FS, max_future="100000d")
    next_offset = {0: 0, 1: 0}
    for b in range(batches):
        p = b % 2
        offsets = np.arange(next_offset[p], next_offset[p] + size)
        next_offset[p] += size
        rows = [
            {
                "user_id": f"u{int(rng.integers(0, 7))}",
                "ts": T0 + int(rng.integers(0, 2 * DAY_MS)),
                "amount": 1.0 * i,
            }
            for i in range(size)
        ]
        write_batch(FS, root, p, validator.to_frame(rows), offsets, offsets + T0)
    return root


def keys(store):
    data = read_events(FS, store)
    got = list(zip(data["_partition"].tolist(), data["_offset"].tolist(), strict=True))
    return got


def snapshot_rows(store) -> pd.DataFrame:
    data = read_events(FS, store)
    return data.sort_values(["_partition", "_offset"]).reset_index(drop=True)


def test_compaction_keeps_every_event_once_and_sorts(tmp_path):
    root = fill(tmp_path)
    before = snapshot_rows(tmp_path)
    n_before = len(list_parts(root))
    stats = compact(FS, tmp_path, target_bytes=1 << 20)
    after = snapshot_rows(tmp_path)
    pd.testing.assert_frame_equal(before, after)
    parts = list_parts(root)
    assert len(parts) == 4 and n_before > 4  # one per (day, partition)
    assert stats.files_in == n_before and stats.files_out == 4 and stats.rows == len(before)
    for part in parts:
        frame = pd.read_parquet(part.path)
        assert frame.equals(frame.sort_values(["user_id", "ts", "_arrival", "_partition", "_offset"]))
        assert (part.first, part.last) == (frame["_offset"].min(), frame["_offset"].max())
    assert not read_journal(root) and not [f for f in root.rglob(f"{STAGED_PREFIX}*")]
    # the sink's accounting: the same offsets are known as written
    assert written_offsets(root, 0).tolist() == sorted(before.loc[before["_partition"] == 0, "_offset"])
    assert compact(FS, tmp_path, target_bytes=1 << 20).files_in == 0  # nothing left to do


def test_target_size_bins():
    class P:
        def __init__(self, first, size):
            self.first, self.last, self.day, self.partition = first, first, 0, 0
            self.path = type("S", (), {"stat": lambda _s, size=size: type("st", (), {"st_size": size})()})()

    parts = [P(i, 30) for i in range(10)] + [P(100, 1000)]
    bins = plan(parts, target_bytes=100)
    assert [[p.first for p in b] for b in bins] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # 9 alone; 100 is big


class Crash(BaseException):
    pass


def steps_of_one_run(tmp_path) -> list[str]:
    names = []
    fill(tmp_path / "count")
    compact(FS, tmp_path / "count", target_bytes=1 << 20, step=names.append)
    return names


def test_killed_at_any_step_every_event_once(tmp_path):
    """Die after each durable step in turn: readers see each event once; the next run finishes the job."""
    steps = steps_of_one_run(tmp_path)
    assert {"staged", "committed", "rename", "unlink", "journal-removed"} <= set(steps)
    first_tx = steps.index("journal-removed") + 1  # every step of one transaction (the others repeat it)
    for k in [*range(first_tx), first_tx + 1]:
        store = tmp_path / f"k{k}"
        fill(store)
        expected = snapshot_rows(store)
        calls = []

        def step(name, calls=calls, k=k):
            calls.append(name)
            if len(calls) == k + 1:
                raise Crash(name)

        with pytest.raises(Crash):
            compact(FS, store, target_bytes=1 << 20, step=step)
        got = keys(store)
        assert len(got) == len(set(got)), f"duplicates after a crash at {steps[k]}"
        pd.testing.assert_frame_equal(snapshot_rows(store), expected)
        for p in (0, 1):
            want = sorted(expected.loc[expected["_partition"] == p, "_offset"])
            assert written_offsets(dataset_dir(store, FS.name), p).tolist() == want
        compact(FS, store, target_bytes=1 << 20)  # recovers, then compacts what is left
        pd.testing.assert_frame_equal(snapshot_rows(store), expected)
        root = dataset_dir(store, FS.name)
        assert not (root / JOURNAL).exists() and len(list_parts(root)) == 4
        assert live_parts(root) == list_parts(root)


def test_kill_9_in_a_subprocess(tmp_path):
    """A real SIGKILL right after the commit point (journal written, nothing applied)."""
    fill(tmp_path)
    expected = snapshot_rows(tmp_path)
    code = (
        "import os, signal, sys; sys.path.insert(0, os.getcwd());"
        "from tests.unit.test_compaction import FS; from sinks.compaction import compact;"
        "kill = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == 'committed' else None;"
        f"compact(FS, {str(tmp_path)!r}, target_bytes=1 << 20, step=kill)"
    )
    root_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root_dir, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    root = dataset_dir(tmp_path, FS.name)
    assert read_journal(root) is not None  # died committed but unapplied
    pd.testing.assert_frame_equal(snapshot_rows(tmp_path), expected)
    compact(FS, tmp_path, target_bytes=1 << 20)
    pd.testing.assert_frame_equal(snapshot_rows(tmp_path), expected)
    assert read_journal(root) is None


def test_cli_compact_and_prune(tmp_path, capsys):
    from aggregations.loading import load_registry
    from featurestream.cli import main

    definitions = str(Path(__file__).resolve().parents[2] / "examples" / "transactions" / "features.py")
    fs = load_registry(definitions).feature_set("transactions")
    root = dataset_dir(tmp_path, fs.name)
    validator = EventValidator(fs, max_future="100000d")
    for b in range(3):
        rows = [{"user_id": f"u{i % 3}", "ts": T0 + i, "amount": 1.0} for i in range(10)]
        write_batch(fs, root, 0, validator.to_frame(rows), np.arange(b * 10, b * 10 + 10), np.full(10, T0))
    old = [{"user_id": "u0", "ts": T0 - 200 * DAY_MS, "amount": 1.0}]
    write_batch(fs, root, 0, validator.to_frame(old), np.array([30]), np.array([T0]))
    common = ["--definitions", definitions, "--data-dir", str(tmp_path)]
    assert main(["compact", *common]) == 0
    assert "3 files" in capsys.readouterr().out and len(list_parts(root)) == 2
    assert main(["prune", *common, "--keep-days", "1", "--dry-run"]) == 0
    assert "would delete 1 day(s)" in capsys.readouterr().out and len(list_parts(root)) == 2
    assert main(["retention", *common, "--keep-days", "1"]) == 0  # the alias
    assert [p.day for p in list_parts(root)] == [T0 // DAY_MS]  # the newest day stays (longest window)
