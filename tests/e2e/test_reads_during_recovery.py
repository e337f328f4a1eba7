"""Reads while partitions move back to a worker that must recover them: never a stale answer.

Two workers without standby replicas share a topic; b takes half the partitions and applies most of the events.
When b stops, a gets those partitions back and recovers what b wrote from the changelog. Faust makes a partition
active before its recovery ends, so a read of it in between would answer from a's old state. Every answer a
gives meanwhile is checked against the oracle: all events were applied before b stopped, so any answer but 503
(retry) must equal it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from .harness import (
    Producer,
    Worker,
    by_user,
    create_topic,
    expected_count,
    http_json,
    random_events,
    unique_names,
    wait_for,
)

pytestmark = pytest.mark.e2e

USERS = 300
FIRST, SECOND = 20_000, 100_000
POLL_S = 10.0


def _count(worker: Worker, user: str) -> tuple[int, dict | str]:
    return http_json("GET", f"{worker.url}/features/transactions/{user}?features=amount_count_90d", timeout=5)


def test_reads_while_partitions_are_recovered_are_never_stale(kafka_bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURESTREAM_STANDBY_REPLICAS", "0")  # a must recover what b wrote: no warm copy
    prefix, app_id, _group = unique_names("recovering")
    topic = f"{prefix}transactions"
    create_topic(kafka_bootstrap, topic, 4)
    rng = random.Random(5)
    users = [f"r{i:04d}" for i in range(USERS)]
    a = Worker(kafka_bootstrap, tmp_path / "a", prefix, app_id, tmp_path, "a")
    b = Worker(kafka_bootstrap, tmp_path / "b", prefix, app_id, tmp_path, "b")
    producer = Producer(kafka_bootstrap, topic)
    stop = threading.Event()
    try:
        a.start()
        for e in random_events(users, FIRST, rng):
            producer.send(e)
        producer.flush()
        wait_for(lambda: a.metric("featurestream_events_consumed_total") >= FIRST, f"a consumed {FIRST}",
                 detail=a.log_tail)  # fmt: skip
        b.start()
        for e in random_events(users, SECOND, rng):
            producer.send(e)
        producer.flush()
        groups = by_user(producer.valid())

        def current(worker: Worker, user: str) -> bool:
            status, body = _count(worker, user)
            return status == 200 and body["features"]["amount_count_90d"] == expected_count(groups[user], user, body["at"])

        wait_for(lambda: all(current(b, u) for u in users), "every event applied", detail=b.log_tail)

        answers: Counter = Counter()
        stale: list = []

        def poll(seed: int) -> None:
            pick = random.Random(seed)
            while not stop.is_set():
                user = users[pick.randrange(USERS)]
                try:
                    status, body = _count(a, user)
                except OSError:
                    answers["no connection"] += 1
                    continue
                answers[status] += 1
                if status == 200:
                    want = expected_count(groups[user], user, body["at"])
                    if body["features"]["amount_count_90d"] != want:
                        stale.append((user, body["features"]["amount_count_90d"], want))

        pollers = [threading.Thread(target=poll, args=(i,)) for i in range(6)]
        for t in pollers:
            t.start()
        time.sleep(1.0)
        b.stop()
        time.sleep(POLL_S)
        stop.set()
        for t in pollers:
            t.join()
        assert answers[503] > 0, f"a never answered 503: did it recover anything? {dict(answers)}"
        assert stale == [], f"{len(stale)} stale answers of {answers[200]} (user, got, want): {stale[:10]}"
        assert set(answers) <= {200, 503}, dict(answers)
    finally:
        stop.set()
        producer.close()
        a.stop()
        b.stop()

