"""History ingest (``featurestream.ingest(..., offline_only=True)``) on real Parquet, broker-free.

Rows go through the stream's validator (rejects reported with reasons), land in the dataset under an ingest
partition that no Kafka topic has, are computed offline like sink-written events (checked against the
oracle), and a second run, or the completion of an interrupted one, writes nothing twice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregations.loading import load_registry
from featurestream import ingest
from featurestream.cli import main
from featurestream.ingest import INGEST_PARTITION_BASE, ingest_partition
from sinks import get_offline_features, read_events
from sinks.layout import dataset_dir, list_parts
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
    assert result.partition == ingest_partition(dataset_dir(tmp_path, "transactions"), result.ingest_id, 500)
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
