"""Faults of the cluster around the worker: the broker stopped and restarted while events are produced and
consumed (a dedicated broker, not the session's), workers scaled 1 -> 3 -> 1 while ingesting, and the owner of
partitions killed so another worker (a standby replica) takes over. Each ends with an exact comparison of every
user's online features (and, where a sink runs, the dataset) with the oracle over the whole stream."""

from __future__ import annotations

import random
import time

import pytest

from .changelog_audit import audit_app, summary
from .harness import (
    LONG,
    Broker,
    Feeder,
    Producer,
    Sink,
    Worker,
    compare_offline,
    compare_online,
    create_topic,
    random_events,
    stored_within,
    unique_names,
    wait_for,
    wait_stored,
)

pytestmark = pytest.mark.e2e


def applying(worker: Worker) -> None:
    applied = worker.metric("featurestream_events_applied_total")
    wait_for(lambda: worker.metric("featurestream_events_applied_total") > applied,
             f"worker {worker.name} applying events", detail=worker.log_tail)  # fmt: skip


def test_broker_stop_and_restart_while_producing_and_consuming(tmp_path, fault_table):
    started = time.monotonic()
    cycles, n, rate = (3, 30_000, 1_000) if LONG else (1, 6_000, 500)
    broker = Broker(tmp_path / "kafka")
    broker.start()
    prefix, app_id, group = unique_names("broker")
    topic = f"{prefix}transactions"
    worker = Worker(broker.bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    sink = Sink(broker.bootstrap, topic, group, tmp_path / "data", tmp_path)
    producer = None
    try:
        create_topic(broker.bootstrap, topic, 4)
        rng = random.Random(7)
        events = random_events([f"b{i:03d}" for i in range(120)], n, rng)
        producer = Producer(broker.bootstrap, topic)
        feeder = Feeder(producer, events, rate)
        worker.start()
        sink.launch()
        feeder.start()
        # A sink that cannot reach the broker at start-up exits; start it before the fault. On a fresh broker
        # a new sink has also been seen to consume nothing for minutes (reported): relaunch it once, visibly.
        note = ""
        if not stored_within(tmp_path / "data", 1, 60):
            sink.kill9()
            sink.launch()
            note = ", sink relaunched: stuck at start"
        sink.wait_writing()
        for _ in range(cycles):
            applying(worker)
            broker.stop()
            # Down long enough for clients to notice (requests fail, reconnects back off).
            time.sleep(rng.uniform(3.0, 6.0))
            broker.start()
        feeder.finish()
        valid = producer.valid()
        assert worker.alive(), f"the worker died while the broker was down\n{worker.log_tail()}"
        online = compare_online(worker, valid)
        wait_stored(tmp_path / "data", len(valid), detail=sink.log_tail)
        offline = compare_offline(tmp_path / "data", valid)
        both = online
        both.add(offline)
        fault_table.add(f"broker stop/restart x{cycles} (online + dataset{note})", len(valid), both,
                        time.monotonic() - started)  # fmt: skip
        assert (online.lost, online.duplicated, online.mismatched) == (0, 0, 0), online.examples
        assert (offline.lost, offline.duplicated, offline.mismatched) == (0, 0, 0), offline.examples
    finally:
        if producer is not None:
            producer.close()
        worker.stop()
        sink.stop()
        broker.stop(wipe=True)


def test_scale_1_to_3_to_1_and_standby_take_over(kafka_bootstrap, tmp_path, fault_table):
    """Strict: any event lost or counted twice fails. A tenth of the events is keyed by another entity, so
    every phase also moves events through the ``.by-entity`` forwarding path while partitions move."""
    n, rate = (24_000, 1_200) if LONG else (6_000, 600)
    prefix, app_id, _ = unique_names("scale")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 6)  # two partitions per worker at three workers
    rng = random.Random(11)
    users = [f"s{i:03d}" for i in range(150)]
    a, b, c = (Worker(kafka_bootstrap, tmp_path / x, prefix, app_id, tmp_path, x) for x in "abc")
    producer = Producer(kafka_bootstrap, topic)
    try:
        # Phase 1: scale 1 -> 3 while ingesting.
        started = time.monotonic()
        a.start()
        feeder = Feeder(producer, random_events(users, n // 3, rng), rate, misplaced=0.1, seed=1)
        feeder.start()
        applying(a)
        b.launch()
        c.launch()
        b.wait_healthy()
        c.wait_healthy()
        feeder.finish()
        grown = compare_online(a, producer.valid())
        # Every worker answers every key the same (reads are routed to the owner).
        for w in (b, c):
            other = compare_online(w, producer.valid(), wait=False)
            grown.add(other)
        fault_table.add("workers scaled 1 -> 3 while ingesting", len(producer.valid()), grown,
                        time.monotonic() - started)  # fmt: skip
        assert (grown.lost, grown.duplicated, grown.mismatched) == (0, 0, 0), grown.examples

        # Phase 2: kill -9 an owner while ingesting; the others (standby replicas) take over.
        started = time.monotonic()
        feeder = Feeder(producer, random_events(users, n // 3, rng), rate, misplaced=0.1, seed=2)
        feeder.start()
        # The owner: whichever of the new workers is applying the live stream right now (Faust's sticky
        # assignor may leave one of them with standby partitions only).
        base = {w.name: w.metric("featurestream_events_applied_total") for w in (b, c)}
        owner = wait_for(
            lambda: next((w for w in (b, c) if w.metric("featurestream_events_applied_total") > base[w.name]), None),
            "b or c applying events", detail=lambda: b.log_tail() + c.log_tail(),
        )
        owner.kill9()
        feeder.finish()
        survivor = c if owner is b else b
        taken = compare_online(a, producer.valid())
        taken.add(compare_online(survivor, producer.valid(), wait=False))
        fault_table.add("standby take-over: owner killed -9", len(producer.valid()), taken,
                        time.monotonic() - started)  # fmt: skip
        assert (taken.lost, taken.duplicated, taken.mismatched) == (0, 0, 0), taken.examples

        # Phase 3: back to one worker while ingesting.
        started = time.monotonic()
        feeder = Feeder(producer, random_events(users, n - 2 * (n // 3), rng), rate, misplaced=0.1, seed=3)
        feeder.start()
        applying(a)
        assert survivor.stop() == 0
        feeder.finish()
        shrunk = compare_online(a, producer.valid())
        fault_table.add("workers scaled 3 -> 1 while ingesting (whole stream)", len(producer.valid()), shrunk,
                        time.monotonic() - started)  # fmt: skip
        # Every state record follows from its key's previous one: a record computed from an older state (a lost
        # update) fails here even when later records happen to hide it from the comparison.
        audits = audit_app(kafka_bootstrap, app_id)
        stale = sum(len(r["stale_base"]) + r["unreadable"] for r in audits)
        assert (shrunk.lost, shrunk.duplicated, shrunk.mismatched, stale) == (0, 0, 0, 0), (
            shrunk.examples + summary(audits)
        )
    finally:
        producer.close()
        for w in (a, b, c):
            w.stop()
