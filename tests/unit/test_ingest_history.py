"""History ingest (``featurestream.ingest(..., offline_only=True)``) on real Parquet, broker-free.

Rows go through the stream's validator (rejects reported with reasons), land in the dataset under an ingest
partition that no Kafka topic has, are computed offline like sink-written events (checked against the
oracle), and a second run, or the completion of an interrupted one, writes nothing twice.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pandas as pd
import pytest

from aggregations.loading import load_registry
from featurestream import ingest
from featurestream.cli import main
from sinks import get_offline_features, read_events
from sinks.ingest_records import INGEST_PARTITION_BASE, IngestRecords
from sinks.layout import dataset_dir, list_parts
from sinks.writer import write_text_atomic
from tests import oracle

REGISTRY = load_registry("examples/transactions/features.py")
TX = REGISTRY.feature_set("transactions")
T0 = 1_767_225_600_000


def _history(n: int = 500, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{int(i)}" for i in rng.integers(0, 10, n)],
            "ts": pd.to_datetime(T0 + rng.integers(0, 20 * 86_400_000, n), unit="ms", utc=True),
            "amount": np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(3, 1, n).round(2)),
        }
    )


def test_history_is_validated_written_once_and_computed_like_the_stream(tmp_path):
    history = _history()
    bad = pd.DataFrame({"user_id": ["u1", None], "ts": [pd.Timestamp("2100-01-01", tz="UTC"), history["ts"][0]],
                        "amount": [1.0, 2.0]})  # fmt: skip
    result = ingest(
        TX,
        pd.concat([history, bad], ignore_index=True),
        data_dir=tmp_path,
        offline_only=True,
        arrival="event",
    )
    assert (result.rows, result.valid, result.rejected, result.written) == (502, 500, 2, 500)
    assert "in the future" in result.reasons[0] and "missing entity key 'user_id'" in result.reasons[1]
    assert result.partition == IngestRecords(dataset_dir(tmp_path, "transactions")).partition(result.ingest_id, 500)
    assert result.partition == INGEST_PARTITION_BASE  # the first history ingest of this dataset
    other = ingest(TX, history.iloc[:10], data_dir=tmp_path, offline_only=True)
    assert other.partition == INGEST_PARTITION_BASE + 1  # another ingest, its own partition
    for part in list_parts(dataset_dir(tmp_path, "transactions"), partition=other.partition):
        part.path.unlink()
    stored = read_events(TX, tmp_path)
    assert len(stored) == 500 and set(stored["_partition"]) == {result.partition}
    assert (stored["_arrival"] == stored["ts"]).all()  # arrival="event": known when it happened

    again = ingest(
        TX,
        pd.concat([history, bad], ignore_index=True),
        data_dir=tmp_path,
        offline_only=True,
        arrival="event",
    )
    assert (again.ingest_id, again.written, again.skipped) == (result.ingest_id, 0, 500)
    assert len(read_events(TX, tmp_path)) == 500

    rows = pd.DataFrame({"user_id": [f"u{i}" for i in range(10)], "ts": T0 + 21 * 86_400_000})
    got = get_offline_features("fraud", rows, tmp_path, registry=REGISTRY, as_known_at=True)
    events = [
        {"key": u, "ts": int(t.value // 1_000_000), "seq": i, "value": None if np.isnan(a) else a}
        for i, (u, t, a) in enumerate(zip(history["user_id"], history["ts"], history["amount"], strict=True))
    ]
    for i, user in enumerate(rows["user_id"]):
        w = TX.plan.features[[f.name for f in TX.plan.features].index("amount_sum_1d")].window
        assert got["amount_sum_1d"][i] == pytest.approx(
            oracle.feature_at(events, user, int(rows["ts"][i]), "sum", w.length, w.period), rel=1e-12
        )


def test_an_interrupted_history_ingest_is_completed(tmp_path):
    history = _history(300, seed=2)
    first = ingest(TX, history, data_dir=tmp_path, offline_only=True)
    parts = list_parts(dataset_dir(tmp_path, "transactions"))
    lost = sum(len(pd.read_parquet(p.path)) for p in parts[::3])
    for part in parts[::3]:  # as if killed before these files were renamed into place
        part.path.unlink()
    resumed = ingest(TX, history, data_dir=tmp_path, offline_only=True)
    assert resumed.ingest_id == first.ingest_id and (resumed.written, resumed.skipped) == (lost, 300 - lost)
    stored = read_events(TX, tmp_path)
    assert sorted(stored["_offset"]) == list(range(300))


def test_cli_reads_csv_and_directories(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    history = _history(40, seed=3)
    history.iloc[:20].to_csv(src / "a.csv", index=False)
    history.iloc[20:].to_parquet(src / "b.parquet")
    (src / "bad.csv").write_text("user_id,ts,amount\nu1,2026-01-01T00:00:00Z,abc\n")
    args = [
        "ingest",
        "--set",
        "transactions",
        str(src),
        "--offline-only",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    assert main(args) == 1  # a rejected row: reported, exit 1
    out = capsys.readouterr().out
    assert "41 rows, 40 valid, 1 rejected; 40 written" in out and "amount must be a number" in out
    assert len(read_events(TX, tmp_path / "data")) == 40
    assert main(["ingest", "--set", "transactions", str(tmp_path / "nope.csv"), "--offline-only"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_history_ingests_at_the_same_moment_keep_distinct_partitions(tmp_path):
    """Six ingests start together (one of them twice): each distinct ingest keeps its own reserved partition,
    the duplicate run shares its twin's, and every row is stored exactly once."""
    batches = [_history(60 + 10 * i, seed=20 + i) for i in range(6)]
    runs = [*batches, batches[0]]
    start = threading.Barrier(len(runs))
    results: list = [None] * len(runs)

    def run(i: int) -> None:
        start.wait()
        results[i] = ingest(TX, runs[i], data_dir=tmp_path, offline_only=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    partitions = [r.partition for r in results]
    assert len(set(partitions[:6])) == 6 and partitions[6] == partitions[0]
    assert min(partitions) == INGEST_PARTITION_BASE and max(partitions) == INGEST_PARTITION_BASE + 5
    stored = read_events(TX, tmp_path)
    assert len(stored) == sum(len(b) for b in batches)
    for r, batch in zip(results, batches, strict=False):
        offsets = stored.loc[stored["_partition"] == r.partition, "_offset"]
        assert sorted(offsets) == list(range(len(batch)))
    records = IngestRecords(dataset_dir(tmp_path, "transactions"))
    assert {records.get(r.ingest_id)["partition"] for r in results} == set(partitions)


def test_a_claim_that_meets_another_is_withdrawn(tmp_path):
    """The race the claims guard against: another ingest writes its claim on the same partition between this
    one's claim and its check. This one withdraws and takes the next partition; the other keeps its own."""
    root = dataset_dir(tmp_path, "transactions")
    mine, theirs = "a" * 64, "b" * 64

    class Racing(IngestRecords):
        checks = 0

        def claims(self):
            found = super().claims()
            if any(owner == mine for _, owner, _ in found) and not self.checks:
                self.checks += 1  # the other ingest claims 60000 right now, before this check lists
                write_text_atomic(root / "_ingests" / f"p{INGEST_PARTITION_BASE}.{theirs}.0000beef.claim", "{}")
                found = super().claims()
            return found

    assert Racing(root).partition(mine, 10, rng=random.Random(0)) == INGEST_PARTITION_BASE + 1
    claims = sorted((p, owner) for p, owner, _ in IngestRecords(root).claims())
    assert claims == [(INGEST_PARTITION_BASE, theirs), (INGEST_PARTITION_BASE + 1, mine)]
    assert IngestRecords(root).partition(theirs, 10) == INGEST_PARTITION_BASE  # its check finds it alone


def test_the_same_rows_are_not_ingested_both_ways(tmp_path):
    history = _history(20, seed=9)
    done = ingest(TX, history, data_dir=tmp_path, offline_only=True)
    with pytest.raises(ValueError, match=r"already ingested history \(partition 60000\); a live ingest of them would store them twice"):
        ingest(TX, history, data_dir=tmp_path, broker="127.0.0.1:1")
    assert IngestRecords(dataset_dir(tmp_path, "transactions")).get(done.ingest_id)["mode"] == "history"


def test_a_dead_runs_claim_on_a_partition_another_ingest_kept_is_cleared(tmp_path):
    """A run killed between its claim and its check leaves the claim; if another ingest kept that partition
    meanwhile, the next run of the same ingest deletes the dead claim (it can never be kept) and goes on."""
    root = dataset_dir(tmp_path, "transactions")
    mine, theirs = "c" * 64, "d" * 64
    # The other ingest checked alone and kept 60000; the dead run listed before that claim, wrote its own after.
    write_text_atomic(root / "_ingests" / f"p{INGEST_PARTITION_BASE}.{theirs}.0000beef.claim", "{}")
    IngestRecords(root).put(theirs, {"mode": "history", "partition": INGEST_PARTITION_BASE})
    write_text_atomic(root / "_ingests" / f"p{INGEST_PARTITION_BASE}.{mine}.0000dead.claim", "{}")
    assert IngestRecords(root).partition(mine, 5) == INGEST_PARTITION_BASE + 1
    assert (INGEST_PARTITION_BASE, mine) not in {(p, owner) for p, owner, _ in IngestRecords(root).claims()}
