"""kill -9 of the Parquet sink mid-commit with the offline store on a real S3-API server (S3Proxy).

On an object store the sink's commit is "one object per (partition, date, offset range), uploaded whole,
then the Kafka offsets" (``sinks.writer``). The sink is killed at each point of that commit in turn —
during a file's upload, between the files of one flush, after all files and before the offset commit — and
once more at a random moment while events stream in; then a sink runs to the end. The dataset must hold
each event exactly once and give the oracle's features.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from sinks.layout import dataset_dir, list_parts

from .harness import (
    REPO_ROOT,
    Producer,
    Sink,
    _env,
    compare_offline,
    create_topic,
    dataset_offsets,
    random_events,
    unique_names,
    wait_for,
)

pytestmark = pytest.mark.e2e

EVENTS = 6_000
USERS = 120


def test_sink_kill_9_mid_commit_on_object_store(kafka_bootstrap, s3_store, tmp_path, fault_table):
    started = time.monotonic()
    prefix, _app_id, group = unique_names("s3kill")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 4)
    rng = random.Random(7)
    events = random_events([f"s{i:03d}" for i in range(USERS)], EVENTS, rng)
    producer = Producer(kafka_bootstrap, topic)
    try:
        for e in events[: EVENTS // 2]:
            producer.send(e)
        producer.flush()
        root = dataset_dir(s3_store, "transactions")
        for mode, flush in (("mid-upload", 2), ("between-files", 2), ("before-commit", 3), ("mid-upload", 1)):
            before = len(list_parts(root))
            child = subprocess.run(
                [sys.executable, "-m", "tests.e2e.sink_crash", mode, str(flush), kafka_bootstrap, topic, group,
                 s3_store],
                cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert child.returncode == -9, f"{mode}: exited {child.returncode}\n{child.stdout}{child.stderr[-3000:]}"
            assert len(list_parts(root)) > before or mode == "mid-upload"
            # No partial object: every listed file reads whole.
            assert len(dataset_offsets(s3_store)) >= 0

        # The second half streams in while a CLI sink runs; kill -9 it at a random moment, mid-flush or not.
        sink = Sink(kafka_bootstrap, topic, group, s3_store, tmp_path)
        sink.launch()
        for e in events[EVENTS // 2 :]:
            producer.send(e)
        time.sleep(rng.uniform(1.0, 3.0))
        sink.kill9()
        producer.flush()
        sink.launch()
        wait_for(lambda: len(dataset_offsets(s3_store)) >= EVENTS, f"{EVENTS} events on the object store",
                 timeout=120, interval=1.0, detail=sink.log_tail)  # fmt: skip
        sink.stop()
        valid = producer.valid()
        assert len(valid) == EVENTS
        outcome = compare_offline(s3_store, valid, [int(time.time() * 1000)])
        fault_table.add("sink kill -9 mid-commit on S3 (x5)", len(valid), outcome, time.monotonic() - started)
        assert (outcome.lost, outcome.duplicated, outcome.mismatched) == (0, 0, 0), outcome.examples
    finally:
        producer.close()
