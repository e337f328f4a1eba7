"""What an operator sees when the broker goes away: a few log lines, not a flood, and a /health that says so.

On a dedicated fresh broker: a sink started first logs none of the Kafka client's retriable coordinator
errors (a fresh broker answers NotCoordinator until its offsets topic exists); the worker logs that it is
ready and where it listens; with the broker stopped, the worker logs a bounded number of lines (the Kafka
clients retry about 60 times a second) and /health answers 503 "degraded"; once the broker is back, /health
is 200 again and the worker says so.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .harness import (
    Broker,
    Producer,
    Sink,
    Worker,
    create_topic,
    http_json,
    random_events,
    unique_names,
    wait_for,
)

pytestmark = pytest.mark.e2e

OUTAGE_S = 10.0
STOP_WITHIN_S = 10.0  # docker stop's default grace period
LOG_LINE = re.compile(r"^\[[^\]]+\] \[\d+\] \[(?P<level>[A-Z]+)\] ", re.M)


def warnings_and_errors(text: str) -> int:
    return sum(m.group("level") in ("WARNING", "ERROR", "CRITICAL") for m in LOG_LINE.finditer(text))


def health(worker: Worker) -> tuple[int, dict]:
    try:
        status, body = http_json("GET", f"{worker.url}/health", timeout=5)
    except OSError:
        return 0, {}
    return status, body if isinstance(body, dict) else json.loads(body)


def test_broker_outage_is_a_few_lines_and_an_unhealthy_health(tmp_path):
    import random

    broker = Broker(tmp_path / "kafka")
    broker.start()
    prefix, app_id, group = unique_names("logs")
    topic = f"{prefix}transactions"
    sink = Sink(broker.bootstrap, topic, group, tmp_path / "data", tmp_path)
    worker = Worker(broker.bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    producer = None
    try:
        create_topic(broker.bootstrap, topic, 4)
        producer = Producer(broker.bootstrap, topic)
        for event in random_events([f"l{i:02d}" for i in range(20)], 200, random.Random(3)):
            producer.send(event)
        producer.flush()
        sink.launch()  # the first group member on this fresh broker
        sink.wait_writing()
        assert "NotCoordinator" not in sink.log_path.read_text(), sink.log_tail()

        worker.start()
        log = worker.log_path.read_text()
        assert re.search(r"worker \S+ starting: app id .*HTTP on 127\.0\.0\.1:\d+", log), log
        wait_for(lambda: re.search(r"worker \S+ ready after [\d.]+ s: serving http://", worker.log_path.read_text()),
                 "the worker's ready line", detail=worker.log_tail)  # fmt: skip
        assert health(worker) == (200, {"worker": health(worker)[1]["worker"], "status": "ok"})

        before = worker.log_path.read_text()
        sink_before = sink.log_path.read_text()
        broker.stop()
        stopped = time.monotonic()
        wait_for(lambda: health(worker)[0] == 503, "/health 503 with the broker down", timeout=30, detail=worker.log_tail)
        body = health(worker)[1]
        assert body["status"] == "degraded" and "broker unreachable" in body["reason"], body
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        during = worker.log_path.read_text()[len(before):]
        sink_during = sink.log_path.read_text()[len(sink_before):]
        assert worker.alive() and sink.alive()
        # Without the filter: ~60 ERROR lines a second from aiokafka alone.
        assert warnings_and_errors(during) <= 25, during[-4000:]
        assert "broker unreachable: no bootstrap server" in during
        assert len(sink_during.splitlines()) <= 25, sink_during[-4000:]

        broker.start()
        wait_for(lambda: health(worker)[0] == 200, "/health 200 with the broker back", detail=worker.log_tail)
        assert "broker reachable again" in worker.log_path.read_text()
    finally:
        if producer is not None:
            producer.close()
        worker.stop()
        sink.stop()
        broker.stop(wipe=True)


def test_a_worker_whose_broker_is_gone_stops_at_once_on_sigterm(tmp_path):
    """``docker stop`` gives 10 s before SIGKILL: a worker must not spend them waiting for a broker that is gone
    (aiokafka's fetcher close raised out of the consumer's stop, and the worker waited 60 s for its thread)."""
    broker = Broker(tmp_path / "kafka")
    broker.start()
    prefix, app_id, _group = unique_names("gone")
    worker = Worker(broker.bootstrap, tmp_path / "state", prefix, app_id, tmp_path, "worker")
    try:
        create_topic(broker.bootstrap, f"{prefix}transactions", 4)
        worker.start()
        wait_for(lambda: health(worker)[0] == 200, "the worker ready", detail=worker.log_tail)
        broker.stop()
        wait_for(lambda: health(worker)[0] == 503, "/health 503 with the broker down", timeout=30, detail=worker.log_tail)
        asked = time.monotonic()
        code = worker.stop(timeout=STOP_WITHIN_S)
        took = time.monotonic() - asked
        log = worker.log_path.read_text()
        assert took < STOP_WITHIN_S and code == 0, (took, code, log[-4000:])
        assert "Error while stopping child" not in log, log[-4000:]
    finally:
        worker.stop()
        broker.stop(wipe=True)
