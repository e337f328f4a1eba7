"""History ingest, then bootstrap, then live traffic, end to end against the session broker.

History that is older than the topic (its records were on the topic once and retention removed them; an export
file kept them) goes to the dataset with ``featurestream ingest --offline-only`` (under a reserved ingest
partition, 60000 and up); ``featurestream bootstrap`` builds online state from it; live events follow. A worker
on a fresh state dir must serve the brute-force oracle over history + live, having applied every live event
once and no gap; a second worker on another fresh state dir, its group rewound to the topic's start, must
recover that state from the changelog and apply none of the replayed events again, but a new one; after the
sink has written the live events next to the history, ``featurestream verify`` exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import OffsetSpec
from kafka.structs import TopicPartition

from aggregations.bookkeeping import home_partition
from sinks import ParquetSink, read_events
from sinks.ingest_records import INGEST_PARTITION_BASE
from sinks.parquet_sink import default_group
from tests.integration.test_worker import REPO_ROOT, TX, Events, Worker, assert_oracle, http

pytestmark = pytest.mark.integration

HOUR, DAY = 3_600_000, 86_400_000
PARTITIONS = 3


def users_covering_every_partition(run_id: str, n: int = 8) -> list[str]:
    """``n`` user ids whose first six (the history's users) have their home in every partition, two each: with
    random ids a partition got none of the history one run in four, and the test expects a retention line for
    each partition."""
    firsts: list[str] = []
    i = 0
    while len(firsts) < 6:
        name = f"user-{run_id}-{i}"
        if home_partition(name.encode(), PARTITIONS) == len(firsts) % PARTITIONS:
            firsts.append(name)
        i += 1
    return firsts + [f"user-{run_id}-x{j}" for j in range(n - 6)]


def events_aged(users: list[str], n: int, lo_ms: int, hi_ms: int, seed: int) -> list[dict]:
    """Up to n events of ``users`` with distinct ages in [lo_ms, hi_ms) before now, out of order."""
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    ages = rng.permutation(np.unique(rng.integers(lo_ms, hi_ms, n)))
    return [
        {
            "user_id": users[int(rng.integers(len(users)))],
            "ts": int(now - age),
            "amount": None if rng.random() < 0.05 else float(np.round(rng.lognormal(3, 1), 2)),
        }
        for age in ages
    ]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "featurestream.cli", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def gap_count(worker: Worker) -> float:
    """featurestream_source_gaps_total of the worker, every kind summed (0 if none was ever counted)."""
    _, text = http("GET", f"{worker.url}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("featurestream_source_gaps_total{") and 'feature_set="transactions"' in line
    )


def test_history_ingest_then_bootstrap_serves_the_oracle(kafka_bootstrap, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"hb-{run_id}-", f"fs-hb-{run_id}"
    topic = f"{prefix}{TX.source}"
    data = tmp_path / "data"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    admin.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    users = users_covering_every_partition(run_id)
    events = Events(kafka_bootstrap, topic)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path)
    replay = Worker(kafka_bootstrap, tmp_path / "state-replay", prefix, app_id, tmp_path, name="replay")
    try:
        # History, 1 to 100 days old: on the topic once, then removed by retention; an export kept it.
        history = events_aged(users[:6], 400, DAY, 100 * DAY, seed=21)
        events.send(history)
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
        ends = consumer.end_offsets(tps)
        admin.delete_records({tp: ends[tp] for tp in tps}, timeout_ms=30_000)
        assert consumer.beginning_offsets(tps) == ends  # the topic holds none of it any more
        consumer.close()
        pd.DataFrame(history).to_parquet(tmp_path / "history.parquet")

        done = cli("ingest", "--set", "transactions", str(tmp_path / "history.parquet"), "--offline-only",
                   "--data-dir", str(data))  # fmt: skip
        assert done.returncode == 0 and f"{len(history)} written to the dataset" in done.stdout, done.stderr
        stored = read_events(TX, data)
        assert len(stored) == len(history) and set(stored["_partition"]) == {INGEST_PARTITION_BASE}

        done = cli("bootstrap", "--feature-set", "transactions", "--broker", kafka_bootstrap, "--data-dir",
                   str(data), "--topic", topic, "--app-id", app_id, "--no-progress")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"from {len(history):,} events" in done.stdout, done.stdout
        for tp in tps:  # the removed offsets are reported, and no worker waits for them
            assert f"partition {tp.partition}: offsets 0..{ends[tp] - 1} are neither" in done.stdout, done.stdout

        # Live events (the last hour: no timestamp equals a history one), for old users and new ones.
        events.send(events_aged(users[4:], 120, 1_000, HOUR, seed=22))
        live = len(events.rows) - len(history)
        worker.start()
        worker.wait_consumed(live)
        for user in users:
            assert_oracle(events, worker.features(user), user)
        assert worker.metric("featurestream_events_applied_total") == live
        assert worker.metric("featurestream_events_duplicate_total") == 0
        assert gap_count(worker) == 0, worker.log_tail()
        worker.stop()

        # Replay: the group back at the topic's start, a fresh state dir (the changelog is the state).
        admin.reset_group_offsets(app_id, {tp: OffsetSpec.EARLIEST for tp in tps})
        replay.start()
        replay.wait_consumed(live)
        assert replay.metric("featurestream_events_duplicate_total") == live
        assert replay.metric("featurestream_events_applied_total") == 0
        events.send(events_aged(users[-1:], 1, 1, 500, seed=23))
        replay.wait_consumed(live + 1)
        assert replay.metric("featurestream_events_applied_total") == 1
        for user in users:
            assert_oracle(events, replay.features(user), user)

        # The sink writes the live events next to the history; verify compares the worker with the dataset.
        sink = ParquetSink(TX, data, kafka_bootstrap, group=default_group(TX, app_id), topic=topic)
        assert sink.run(once=True).written == live + 1
        done = cli("verify", "--broker", kafka_bootstrap, "--data-dir", str(data), "--url", replay.url,
                   "--app-id", app_id, "--topic-prefix", prefix, "--feature-set", "transactions", "--json")  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (report,) = json.loads(done.stdout)["feature_sets"]
        assert report["compared_entities"] == len(users), report
    finally:
        worker.stop()
        replay.stop()
        events.producer.close()
        admin.close()
