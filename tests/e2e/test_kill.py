"""kill -9 of the worker (mid-batch) and of the sink, repeatedly, while events stream in; then a worker on an
empty state directory rebuilds its table from the changelog. Ends with every user's online features and the
offline dataset compared exactly with the oracle over the whole stream."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from .harness import (
    LONG,
    REPO_ROOT,
    Feeder,
    Producer,
    Sink,
    Worker,
    compare_offline,
    compare_online,
    create_topic,
    random_events,
    unique_names,
    wait_for,
    wait_stored,
)

pytestmark = pytest.mark.e2e

KILLS = 6 if LONG else 2
EVENTS = 60_000 if LONG else 8_000
USERS = 400 if LONG else 150
RATE = 1_500 if LONG else 600  # events per second: the stream runs through every kill


def test_worker_and_sink_kill_9_repeatedly_then_empty_state_dir(kafka_bootstrap, tmp_path, fault_table):
    started = time.monotonic()
    prefix, app_id, group = unique_names("kill")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 4)
    rng = random.Random(42)
    users = [f"k{i:04d}" for i in range(USERS)]
    events = random_events(users, EVENTS, rng)
    worker = Worker(kafka_bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    sink = Sink(kafka_bootstrap, topic, group, tmp_path / "data", tmp_path)
    producer = Producer(kafka_bootstrap, topic)
    feeder = Feeder(producer, events, RATE)
    worker.start()
    sink.launch()
    try:
        feeder.start()
        worker_kills = sink_kills = 0
        replayed = 0  # events a restarted worker found already applied: proof the kills cut batches short
        while worker_kills < KILLS or sink_kills < KILLS:
            # Mid-batch: the worker is applying the live stream right now (unless the feed already ended: a
            # restart that took longer than the rest of the feed finds nothing new to apply).
            applied = worker.metric("featurestream_events_applied_total")
            wait_for(lambda a=applied: worker.metric("featurestream_events_applied_total") > a or feeder.done.is_set(),
                     "the worker applying events", detail=worker.log_tail)  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.6))
            if worker_kills < KILLS:
                if worker_kills:
                    replayed += max(0.0, worker.metric("featurestream_events_duplicate_total"))
                worker.kill9()
                worker_kills += 1
                worker.launch()
            if sink_kills < KILLS:
                time.sleep(rng.uniform(0.5, 2.0))  # sometimes mid-write, sometimes between flushes
                sink.kill9()
                sink_kills += 1
                sink.launch()
            worker.wait_healthy()
        feeder.finish()
        valid = producer.valid()
        assert len(valid) == EVENTS

        online = compare_online(worker, valid)
        replayed += max(0.0, worker.metric("featurestream_events_duplicate_total"))
        assert replayed > 0, "no restarted worker replayed anything: the kills never interrupted uncommitted work"
        fault_table.add(f"worker kill -9 mid-batch x{KILLS}", len(valid), online, time.monotonic() - started)
        assert (online.lost, online.duplicated, online.mismatched) == (0, 0, 0), online.examples

        started = time.monotonic()
        wait_stored(tmp_path / "data", len(valid), detail=sink.log_tail)
        sink.stop()
        offline = compare_offline(tmp_path / "data", valid, [int(time.time() * 1000)])
        fault_table.add(f"sink kill -9 x{KILLS} (dataset exactly once)", len(valid), offline,
                        time.monotonic() - started)  # fmt: skip
        assert (offline.lost, offline.duplicated, offline.mismatched) == (0, 0, 0), offline.examples
        # And featurestream verify, the operator's check, agrees after all the kills.
        done = subprocess.run(
            [sys.executable, "-m", "featurestream.cli", "verify", "--broker", kafka_bootstrap, "--data-dir",
             str(tmp_path / "data"), "--url", worker.url, "--app-id", app_id, "--topic-prefix", prefix,
             "--sink-group", group, "--max-entities", "50", "--wait-caught-up", "90"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        # A worker on an empty state dir (same group) recovers its table from the changelog.
        started = time.monotonic()
        worker.kill9()
        fresh = Worker(kafka_bootstrap, tmp_path / "empty-state", prefix, app_id, tmp_path, "fresh")
        fresh.start()
        try:
            rebuilt = compare_online(fresh, valid)
            applied = fresh.metric("featurestream_events_applied_total")
        finally:
            fresh.stop()
        fault_table.add("worker restarted on an empty state dir", len(valid), rebuilt, time.monotonic() - started)
        assert (rebuilt.lost, rebuilt.duplicated, rebuilt.mismatched) == (0, 0, 0), rebuilt.examples
        assert applied == 0, "state must come from the changelog, not from replaying the source"
    finally:
        producer.close()
        worker.stop()
        sink.stop()
