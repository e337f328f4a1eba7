"""Bootstrap then hand-over, end to end: Parquet history -> changelog -> a fresh worker -> live stream.

History (three days, out of order) is produced to a fresh topic and written to Parquet by the sink;
``featurestream bootstrap`` (the CLI, a subprocess) writes the online state to the changelog; more
events follow, some for the same users, that the sink never wrote (it lags). A worker then starts on
a fresh state dir and a fresh group reading the topic from the beginning: it must recover the
bootstrapped state, skip every stored event and apply every later one. Its HTTP answers must equal
the brute-force oracle over the whole history at the response's ``at``; a second bootstrap is refused.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from aggregations.naming import changelog_topic
from sinks import ParquetSink
from sinks.bootstrap import BootstrapRefused, bootstrap
from tests.integration.test_worker import REPO_ROOT, TX, Events, Worker, assert_oracle

pytestmark = pytest.mark.integration

HOUR = 3_600_000
PARTITIONS = 3


def events_over(users: list[str], n: int, max_age_ms: int, seed: int) -> list[dict]:
    """n events with distinct timestamps up to ``max_age_ms`` old (most within a day), out of order."""
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    ages = np.where(
        rng.random(n) < 0.5, rng.integers(1_000, 24 * HOUR, n), rng.integers(1_000, max_age_ms, n)
    )
    ages = np.unique(ages)
    return [
        {
            "user_id": users[int(rng.integers(len(users)))],
            "ts": int(now - age),
            "amount": None if rng.random() < 0.05 else float(np.round(rng.lognormal(3, 1), 2)),
        }
        for age in rng.permutation(ages)
    ]


def commit_to_end(bootstrap: str, group: str, topic: str) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    ends = consumer.end_offsets(tps)
    consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
    consumer.close()


def cli_bootstrap(bootstrap: str, data_dir, app_id: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "featurestream.cli", "bootstrap", "--feature-set", "transactions",
        "--broker", bootstrap, "--data-dir", str(data_dir), "--app-id", app_id, "--no-progress",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_bootstrap_then_live_stream_equals_the_oracle(kafka_bootstrap, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"bs-{run_id}-", f"fs-bs-{run_id}"
    topic = f"{prefix}{TX.source}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    admin.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    admin.close()
    users = [f"user-{run_id}-{i}" for i in range(8)]
    events = Events(kafka_bootstrap, topic)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path)
    try:
        events.send(events_over(users[:6], 500, 3 * 24 * HOUR, seed=3))
        history = len(events.rows)
        sink = ParquetSink(TX, tmp_path / "data", kafka_bootstrap, group=f"sink-{run_id}", topic=topic)
        assert sink.run(once=True).written == history

        done = cli_bootstrap(kafka_bootstrap, tmp_path / "data", app_id)
        assert done.returncode == 0, done.stderr
        assert f"from {history:,} events" in done.stdout and changelog_topic(TX, app_id) in done.stdout
        again = cli_bootstrap(kafka_bootstrap, tmp_path / "data", app_id)
        assert again.returncode == 1 and "refused" in again.stderr and "already holds state" in again.stderr

        # Live traffic the sink never wrote: the same users, two new ones, within the last hour.
        events.send(events_over(users[3:], 120, HOUR, seed=4))
        live = len(events.rows) - history
        worker.start()
        worker.wait_consumed(len(events.rows))
        for user in users:
            assert_oracle(events, worker.features(user), user)
        assert worker.metric("featurestream_events_duplicate_total") == history
        assert worker.metric("featurestream_events_applied_total") == live

        # A group that already consumed past the dataset (the live events) would skip them: refused.
        lagging_app = f"{app_id}-ahead"
        commit_to_end(kafka_bootstrap, lagging_app, topic)
        with pytest.raises(BootstrapRefused, match="beyond what the dataset holds"):
            bootstrap(TX, tmp_path / "data", kafka_bootstrap, app_id=lagging_app, progress=False)
        assert (
            changelog_topic(TX, lagging_app)
            not in KafkaAdminClient(bootstrap_servers=kafka_bootstrap).list_topics()
        )
    finally:
        worker.stop()
        events.producer.close()
