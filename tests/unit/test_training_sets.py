"""Versioned training sets (sinks.training_sets) on real Parquet: versions, manifests, snapshots and rebuilds.

A dataset is written the way the sink writes it (two Kafka partitions, several files each); training sets
are exported through ``get_offline_features(name=...)`` and the CLI, then the data moves under them
(compaction, newer events, a pruned file, an older backfill, a changed definition) and ``rebuild`` must give
identical values or refuse with the reason.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregations import Aggregation, Entity, EventValidator, FeatureSet, FeatureVector, Registry
from featurestream.cli import main
from sinks import get_offline_features
from sinks.compaction import compact
from sinks.layout import dataset_dir, list_parts
from sinks.training_sets import (
    RebuildRefused,
    differences,
    list_versions,
    read_manifest,
    rebuild,
    rows_digest,
    stored,
    write_version,
)
from sinks.writer import write_batch

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "examples" / "transactions" / "features.py")
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01


def _tx() -> FeatureSet:
    return FeatureSet(
        name="transactions",
        entities=[Entity("user_id")],
        timestamp_key="ts",
        source="transactions",
        schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
        aggregations=[Aggregation("amount", ["count", "sum", "last"], windows=["1d", "7d"])],
    )


TX = _tx()
REGISTRY = Registry(
    [TX], [FeatureVector("fraud", ["transactions.amount_sum_7d", "transactions.amount_last_1d"])]
)


def _events(n: int, seed: int, start: int = T0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{int(i)}" for i in rng.integers(0, 12, n)],
            "ts": start + np.sort(rng.integers(0, 10 * DAY, n)),
            "amount": rng.lognormal(3, 1, n).round(2),
        }
    )


def _write(store: Path, events: pd.DataFrame, partition: int, first_offset: int, per_file: int = 100) -> None:
    frame = EventValidator(TX).to_frame(events.to_dict("records"))
    for lo in range(0, len(frame), per_file):
        chunk = frame.iloc[lo : lo + per_file].reset_index(drop=True)
        offsets = np.arange(first_offset + lo, first_offset + lo + len(chunk))
        write_batch(
            TX, dataset_dir(store, "transactions"), partition, chunk, offsets, chunk["ts"].to_numpy() + 7
        )


@pytest.fixture
def store(tmp_path) -> Path:
    _write(tmp_path, _events(400, 1), partition=0, first_offset=0)
    _write(tmp_path, _events(400, 2), partition=1, first_offset=0)
    return tmp_path


def _rows() -> pd.DataFrame:
    rng = np.random.default_rng(9)
    return pd.DataFrame(
        {
            "user_id": [f"u{int(i)}" for i in rng.integers(0, 14, 300)],
            "ts": pd.to_datetime(T0 + rng.integers(0, 12 * DAY, 300), unit="ms", utc=True),
            "label": rng.integers(0, 2, 300),
        }
    )


def test_versions_are_numbered_and_the_manifest_says_what_produced_them(store):
    rows = _rows()
    first, manifest = get_offline_features(
        "fraud", rows, store, registry=REGISTRY, name="fraud", return_manifest=True
    )
    second = get_offline_features("fraud", rows, store, registry=REGISTRY, name="fraud", as_known_at=True)
    assert [v["version"] for v in list_versions(store, "fraud")] == [1, 2]
    assert second.attrs["manifest"]["version"] == 2 and second.attrs["manifest"]["as_known_at"] is True
    on_disk = read_manifest(store, "fraud", "v1")
    assert on_disk == json.loads(json.dumps(manifest)) and on_disk["version"] == 1
    assert on_disk["feature_sets"]["transactions"]["fingerprint"] == TX.fingerprint()
    assert on_disk["feature_sets"]["transactions"]["definition"]["aggregations"][0]["ops"] == [
        "count",
        "sum",
        "last",
    ]
    assert any("def _tx()" in d["text"] for d in on_disk["definitions"])  # this file defined the set
    snap = on_disk["snapshot"]["transactions"]
    assert snap["offsets"] == {"0": 399, "1": 399} and snap["events"] == 800
    assert sum(f["rows"] for f in snap["files"]) == 800 and len(snap["files"]) == len(
        list_parts(dataset_dir(store, "transactions"))
    )
    assert on_disk["rows"] == {
        "source": "DataFrame", "count": 300, "columns": ["user_id", "ts", "label"], "timestamp_column": "ts",
        "sha256": rows_digest(rows),
    }  # fmt: skip
    assert on_disk["output"]["rows"] == 300 and on_disk["output"]["columns"] == list(first.columns)
    assert not differences(stored(store, "fraud", 1), first)


def test_rows_digest_survives_parquet_and_sees_changes(tmp_path):
    rows = _rows()
    rows.to_parquet(tmp_path / "rows.parquet")
    assert rows_digest(pd.read_parquet(tmp_path / "rows.parquet")) == rows_digest(rows)
    assert rows_digest(rows.astype({"user_id": object})) == rows_digest(rows)
    changed = rows.copy()
    changed.loc[7, "label"] = 1 - changed.loc[7, "label"]
    assert rows_digest(changed) != rows_digest(rows)


def test_rebuild_is_identical_after_compaction_and_newer_data(store):
    get_offline_features("fraud", _rows(), store, registry=REGISTRY, name="fraud", as_known_at=True)
    before = {p.path.name for p in list_parts(dataset_dir(store, "transactions"))}
    compact(TX, store, min_files=2)
    after = {p.path.name for p in list_parts(dataset_dir(store, "transactions"))}
    assert len(after) < len(before) and after - before  # files merged into new ones
    _write(store, _events(300, 3, start=T0 + DAY), partition=0, first_offset=400)  # later offsets: not in v1
    rebuilt, manifest = rebuild(store, "fraud", registry=REGISTRY)
    assert manifest["version"] == 1
    assert differences(rebuilt, stored(store, "fraud", 1)) == []
    fresh = get_offline_features("fraud", _rows(), store, registry=REGISTRY, as_known_at=True)
    assert differences(
        fresh, stored(store, "fraud", 1)
    )  # today's data gives other values: the snapshot mattered


def test_rebuild_refuses_when_the_snapshot_changed(store):
    get_offline_features("fraud", _rows(), store, registry=REGISTRY, name="fraud")
    _write(store, _events(5, 4), partition=1, first_offset=1000)
    (victim, *_) = list_parts(dataset_dir(store, "transactions"), partition=1)
    backup, lost = victim.path.read_bytes(), len(pd.read_parquet(victim.path))
    victim.path.unlink()  # as retention would
    with pytest.raises(
        RebuildRefused, match=f"now holds {800 - lost} events within this version's snapshot, 800"
    ):
        rebuild(store, "fraud", registry=REGISTRY)
    victim.path.write_bytes(backup)
    _write(store, _events(5, 5), partition=1, first_offset=800)  # above the snapshot
    assert not differences(rebuild(store, "fraud", registry=REGISTRY)[0], stored(store, "fraud", 1))
    _write(store, _events(3, 6), partition=0, first_offset=50)  # a backfill below the recorded offsets
    with pytest.raises(RebuildRefused, match="backfilled"):
        rebuild(store, "fraud", registry=REGISTRY)


def test_rebuild_uses_the_recorded_definitions_when_they_changed(store):
    get_offline_features("fraud", _rows(), store, registry=REGISTRY, name="fraud")
    changed = FeatureSet(
        name="transactions", entities=[Entity("user_id")], timestamp_key="ts", source="transactions",
        schema={"user_id": "string", "ts": "timestamp", "amount": "float64"},
        aggregations=[Aggregation("amount", ["count", "sum", "last"], windows=["1d", "7d"], periods="20m")],
    )  # fmt: skip
    other = Registry([changed], [FeatureVector("fraud", ["transactions.amount_sum_7d"])])
    rebuilt, _ = rebuild(store, "fraud", registry=other)  # falls back to this file's recorded text
    assert not differences(rebuilt, stored(store, "fraud", 1))
    manifest_path = store / "datasets" / "fraud" / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["definitions"] = []
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RebuildRefused, match=r"definitions of \['transactions'\] changed"):
        rebuild(store, "fraud", registry=other)


def test_concurrent_writers_get_distinct_versions(tmp_path):
    frame = pd.DataFrame({"a": [1, 2]})
    manifest = {"output": {"rows": 2, "columns": ["a"]}}
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda: got.append(write_version(tmp_path, "t", frame, dict(manifest))[0]))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert not [p for p in (tmp_path / "datasets" / "t").iterdir() if p.name.startswith(".")]


def test_cli_training_set_by_feature_set_then_list_show_rebuild(tmp_path, capsys):
    from aggregations.loading import load_registry

    tx = load_registry(EXAMPLE).feature_set("transactions")
    frame = EventValidator(tx).to_frame(_events(300, 7).to_dict("records"))
    write_batch(tx, dataset_dir(tmp_path, "transactions"), 0, frame, np.arange(300), frame["ts"].to_numpy())
    common = ["--definitions", EXAMPLE, "--data-dir", str(tmp_path)]
    assert main(["training-set", *common, "--feature-set", "transactions", "--name", "everything"]) == 0
    assert main(["training-set", *common, "--vector", "fraud", "--name", "everything", "--as-known-at"]) == 0
    out = capsys.readouterr().out
    assert "everything v1: 300 rows, 22 columns" in out and "everything v2: 300 rows, 7 columns" in out
    assert main(["datasets", "list", *common]) == 0
    listing = capsys.readouterr().out
    assert "everything" in listing and "v2" in listing and "(as known at)" in listing
    assert main(["datasets", "show", "everything", "1", *common, "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert (
        manifest["vector"]["features"] == ["transactions.*"]
        and manifest["rows"]["source"] == "the stored events of transactions"
    )
    assert (
        manifest["command"][-4:] == ["--feature-set", "transactions", "--name", "everything"]
        or manifest["command"]
    )
    assert main(["datasets", "show", "everything", *common]) == 0
    assert "everything v2" in capsys.readouterr().out
    assert (
        main(["datasets", "rebuild", "everything", "v1", *common, "--out", str(tmp_path / "again.parquet")])
        == 0
    )
    assert "identical to the stored data" in capsys.readouterr().out
    assert not differences(pd.read_parquet(tmp_path / "again.parquet"), stored(tmp_path, "everything", 1))
    assert main(["datasets", "show", "nothing", *common]) == 2
    assert "no training set named 'nothing'" in capsys.readouterr().err
    shutil.rmtree(dataset_dir(tmp_path, "transactions"))
    assert main(["datasets", "rebuild", "everything", *common]) == 1
    assert "refused" in capsys.readouterr().err
