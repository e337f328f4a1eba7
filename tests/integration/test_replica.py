"""A read replica (``featurestream replica``) as a real process beside a real worker and broker.

The replica starts before the worker has created its changelog topic; it answers 503 until it has caught up,
then the same features as the brute-force oracle at each answer's own time ``at``, and follows new events.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from stream.auth import TOKEN_ENV
from tests.integration.test_worker import (
    REPO_ROOT,
    TIMEOUT_S,
    TX,
    Events,
    Worker,
    assert_oracle,
    free_port,
    http,
    make_events,
)

pytestmark = pytest.mark.integration


class Replica:
    """A ``featurestream replica`` subprocess for one app id."""

    def __init__(self, bootstrap: str, app_id: str, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), full_env.get("PYTHONPATH", "")] if p)
        cmd = [sys.executable, "-m", "featurestream.cli", "replica", "--broker", bootstrap, "--app-id", app_id,
               "--web-port", str(self.port)]  # fmt: skip
        self.log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=self.log_file, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"replica exited with {self.proc.returncode}:\n{self.log()}"
            try:
                http("GET", f"{self.url}/health")
                return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"replica not listening after {TIMEOUT_S}s:\n{self.log()}")

    def wait_healthy(self) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"replica exited with {self.proc.returncode}:\n{self.log()}"
            try:
                status, body = http("GET", f"{self.url}/health")
            except OSError:  # not listening yet
                status, body = 0, None
            if status == 200:
                return body
            time.sleep(0.2)
        pytest.fail(f"replica not caught up after {TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log_file.close()
        return code


@pytest.fixture(scope="module")
def run(kafka_bootstrap, tmp_path_factory):
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"rep-{run_id}-", f"fs-rep-{run_id}"
    tmp = tmp_path_factory.mktemp(f"replica-{run_id}")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="featurestream-tests")
    topic = f"{prefix}{TX.source}"
    admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    replica = Replica(kafka_bootstrap, app_id, tmp / "replica.log")
    worker = Worker(kafka_bootstrap, tmp / "state", prefix, app_id, tmp)
    events = Events(kafka_bootstrap, topic)
    try:
        replica.wait_listening()
        before = {"health": http("GET", f"{replica.url}/health"), "get": http("GET", f"{replica.url}/features/transactions/u")}
        worker.start()
        yield {"replica": replica, "worker": worker, "events": events, "before": before, "tmp": tmp,
               "users": [f"user-{run_id}-{i}" for i in range(8)], "bootstrap": kafka_bootstrap, "app_id": app_id}  # fmt: skip
    finally:
        replica.stop()
        worker.stop()
        events.producer.close()
        admin.close()


def replica_caught_up(replica: Replica, events: Events, users: list[str]) -> dict:
    """Every user's answer once the replica's counts cover every produced event (or the last at the timeout)."""
    want = sum(1 for r in events.rows if r["value"] is not None)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        bodies = {}
        for user in users:
            status, body = http("GET", f"{replica.url}/features/transactions/{user}")
            assert status == 200, body
            bodies[user] = body
        if sum(b["features"]["amount_count_90d"] for b in bodies.values()) >= want or time.monotonic() > deadline:
            return bodies
        time.sleep(0.2)


def test_a_replica_answers_503_until_it_has_caught_up_with_a_changelog_that_did_not_exist(run):
    status, body = run["before"]["health"]
    assert status == 503 and body["status"] == "catching up"
    status, body = run["before"]["get"]
    assert status == 503 and "catching up" in body["error"]
    assert "waiting for changelog topic" in run["replica"].log()
    assert run["replica"].wait_healthy()["behind_records"] == 0


def test_replica_answers_match_the_oracle_and_follow_new_events(run):
    replica, worker, events, users = run["replica"], run["worker"], run["events"], run["users"]
    replica.wait_healthy()
    for seed in (11, 12):  # a first batch, then more events once the replica serves
        events.send(make_events(users, 300, seed=seed))
        bodies = replica_caught_up(replica, events, users)
        for user in users:
            assert bodies[user]["entity"] == user
            assert_oracle(events, bodies[user], user)
    worker.wait_consumed(len(events.rows))
    for user in users[:3]:  # and what the worker itself answers
        status, mine = http("GET", f"{replica.url}/features/transactions/{user}?features=amount_count_90d,amount_sum_90d")
        assert status == 200 and mine["features"] == worker.features(user, "?features=amount_count_90d,amount_sum_90d")["features"]


def test_replica_reads_vectors_and_refuses_bad_requests_like_a_worker(run):
    replica, events, users = run["replica"], run["events"], run["users"]
    replica.wait_healthy()
    events.send(make_events(users[:2], 50, seed=21))
    replica_caught_up(replica, events, users)
    payload = {"entities": [{"user_id": users[0], "amount": 10.0}, {"user_id": "nobody", "amount": 1.0}]}
    status, body = http("POST", f"{replica.url}/vectors/fraud", json.dumps(payload).encode())
    assert status == 200, body
    first, second = body["results"]
    want = events.expected(users[0], body["at"])
    assert first["features"]["amount_count_1h"] == want["amount_count_1h"]
    assert math.isclose(first["features"]["amount_vs_avg_90d"], 10.0 / want["amount_avg_90d"], rel_tol=1e-9)
    assert second["features"]["amount_count_1h"] == 0 and second["features"]["amount_avg_90d"] is None
    assert http("POST", f"{replica.url}/vectors/nope", json.dumps(payload).encode())[0] == 404
    assert http("POST", f"{replica.url}/vectors/fraud", b"{oops")[0] == 400
    assert http("POST", f"{replica.url}/vectors/fraud", b" " * ((1 << 20) + 1))[0] == 413
    status, body = http("GET", f"{replica.url}/features/no_such_set/u1")
    assert status == 404 and "no_such_set" in body["error"]
    status, body = http("GET", f"{replica.url}/features/transactions/u1?features=amount_count_7h")
    assert status == 400 and "amount_count_7h" in body["error"]
    assert http("GET", f"{replica.url}/features/transactions/{'x' * 1025}")[0] == 400
    status, text = http("GET", f"{replica.url}/metrics")
    assert status == 200 and "featurestream_replica_ready 1.0" in text
    assert f'featurestream_replica_entities{{feature_set="transactions"}} {float(len(users))}' in text


def test_a_restarted_replica_with_a_token_rebuilds_the_same_state_and_guards_reads(run, monkeypatch):
    events, users = run["events"], run["users"]
    monkeypatch.setenv(TOKEN_ENV, "s3cret")  # the replica's token, and the one http() sends
    replica = Replica(run["bootstrap"], run["app_id"], run["tmp"] / "replica-token.log")
    try:
        replica.wait_healthy()  # /health is open without the token
        assert http("GET", f"{replica.url}/features/transactions/{users[0]}", token="")[0] == 401
        bodies = replica_caught_up(replica, events, users)
        for user in users:
            assert_oracle(events, bodies[user], user)
    finally:
        assert replica.stop() == 0


def test_a_replica_without_a_reachable_broker_waits_says_so_and_stops_cleanly(tmp_path):
    replica = Replica(f"127.0.0.1:{free_port()}", "fs-no-broker", tmp_path / "replica.log")  # nothing listens there
    try:
        replica.wait_listening()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = http("GET", f"{replica.url}/health")
            if body.get("status") == "degraded":
                break
            time.sleep(0.2)
        assert status == 503 and body["status"] == "degraded" and body["ready"] is False, body
        status, body = http("GET", f"{replica.url}/features/transactions/u1")
        assert status == 503 and "catching up" in body["error"]
        assert "waiting for Kafka" in replica.log() and "Traceback" not in replica.log()
    finally:
        assert replica.stop() == 0, replica.log()
