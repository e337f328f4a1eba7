"""History ingest into an object store (``--data-dir s3://...``) on the session's real S3 server (S3Proxy).

The rows land under a reserved ingest partition like on a local disk, the ingest's record and claim are objects
under ``_ingests/``, a re-run writes nothing, a run killed half-way is completed, offline features equal the
oracle, and ingests started at the same moment each keep a partition of their own.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from aggregations import FeatureVector
from featurestream import ingest
from featurestream.cli import main
from sinks import get_offline_features, read_events
from sinks.ingest_records import INGEST_PARTITION_BASE, IngestRecords
from sinks.layout import dataset_dir, list_parts
from tests import oracle
from tests.unit.test_ingest_history import REGISTRY, TX, _history

pytestmark = pytest.mark.integration


def test_history_ingest_into_an_object_store(s3_store, tmp_path, capsys):
    history = _history(300, seed=31)
    history.to_parquet(tmp_path / "history.parquet")
    args = ["ingest", "--set", "transactions", str(tmp_path / "history.parquet"), "--offline-only",
            "--arrival", "event", "--data-dir", s3_store]  # fmt: skip
    assert main(args) == 0
    assert "300 valid, 0 rejected; 300 written to the dataset" in capsys.readouterr().out
    root = dataset_dir(s3_store, "transactions")
    stored = read_events(TX, s3_store)
    assert sorted(stored["_offset"]) == list(range(300)) and set(stored["_partition"]) == {INGEST_PARTITION_BASE}
    ((partition, ingest_id, _run),) = IngestRecords(root).claims()  # objects under <dataset>/_ingests/
    record = IngestRecords(root).get(ingest_id)
    assert partition == record["partition"] == INGEST_PARTITION_BASE and record["mode"] == "history"

    assert main(args) == 0  # again: nothing written twice
    assert "0 written to the dataset, 300 already ingested" in capsys.readouterr().out
    parts = list_parts(root)
    for part in parts[::2]:  # as if killed before these uploads completed
        part.path.unlink()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "already ingested" in out and len(read_events(TX, s3_store)) == 300, out

    rows = pd.DataFrame({"user_id": [f"u{i}" for i in range(10)], "ts": int(history["ts"].max().value // 10**6) + 1})
    got = get_offline_features(FeatureVector("all", ["transactions.*"]), rows, s3_store, registry=REGISTRY)
    events = [
        {"key": u, "ts": int(t.value // 1_000_000), "seq": i, "value": None if np.isnan(a) else a}
        for i, (u, t, a) in enumerate(zip(history["user_id"], history["ts"], history["amount"], strict=True))
    ]
    for f in TX.plan.features:
        for i, user in enumerate(rows["user_id"]):
            want = oracle.feature_at(events, user, int(rows["ts"][i]), f.op, f.window.length, f.window.period)
            value = got[f.name][i]
            assert pd.isna(value) if want is None else value == pytest.approx(want, rel=1e-12), (f.name, user)


def test_history_ingests_at_the_same_moment_on_an_object_store(s3_store):
    batches = [_history(40 + 5 * i, seed=40 + i) for i in range(4)]
    start = threading.Barrier(len(batches))
    results: list = [None] * len(batches)

    def run(i: int) -> None:
        start.wait()
        results[i] = ingest(TX, batches[i], data_dir=s3_store, offline_only=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    partitions = sorted(r.partition for r in results)
    assert partitions == list(range(INGEST_PARTITION_BASE, INGEST_PARTITION_BASE + len(batches)))
    stored = read_events(TX, s3_store)
    for r, batch in zip(results, batches, strict=True):
        assert sorted(stored.loc[stored["_partition"] == r.partition, "_offset"]) == list(range(len(batch)))



def _claim_at_once(root, ingest_ids: list[str]) -> list[int]:
    """The partitions that ingests with these ids claim, all released at the same moment."""
    start = threading.Barrier(len(ingest_ids))
    got: list = [None] * len(ingest_ids)

    def claim(i: int) -> None:
        start.wait()
        got[i] = IngestRecords(root).partition(ingest_ids[i], rows=1)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(ingest_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_racing_claims_on_an_object_store_never_share_a_partition(s3_store):
    """The claim-then-check protocol under contention, many rounds: four ingests at once, each its own partition."""
    for r in range(25):
        root = dataset_dir(f"{s3_store}/round-{r}", "transactions")
        got = _claim_at_once(root, [f"{i:08x}{r:08x}" for i in range(4)])
        assert sorted(got) == list(range(INGEST_PARTITION_BASE, INGEST_PARTITION_BASE + 4)), (r, got)
